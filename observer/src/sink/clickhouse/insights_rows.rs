//! Findings as rows of the `insights` table (one row per finding version, columns [`INSIGHTS_COLUMNS`]), and the
//! writer that inserts them: findings are offered to a bounded queue without waiting (a full queue drops them,
//! counted), batched as `RowBinaryWithNamesAndTypes` and inserted by the event sink's [`shipper`](super::shipper)
//! with its deduplication tokens, spool (a subdirectory `insights` of the spool directory) and backoff.
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::config::ClickHouseConfig;
use super::migrations::INSIGHTS_COLUMNS;
use super::rowbinary::{header_for, put_str, RowBinary};
use super::shipper::{shipper, Ctx};
use super::spool::Spool;
use crate::insights::finding::{Finding, Kind, Status};
use crate::sink::{SinkError, SinkMetrics};

/// The `insights` table.
pub const INSIGHTS_TABLE: &str = "insights";
/// Finding batches waiting for the writer before new ones are dropped.
pub const QUEUE_BATCHES: usize = 1024;
/// A batch is inserted at this many rows, or `batch_interval` after its first row.
const BATCH_ROWS: u64 = 5_000;
/// The findings spool is small (findings are few; the fleet runner spools to a 64 MiB /tmp in the Helm chart).
const SPOOL_MAX_BYTES: u64 = 32 << 20;

/// Who or what a finding is about, in words: "app checkout-v2 on payments-api", "key mobile-prod on orders-api",
/// "workload curl /batch on rates-api", "route /v1/x/{id} on rates-api", "api rates-api".
pub fn subject(f: &Finding) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !f.app_id.is_empty() {
        parts.push(format!("app {}", f.app_id));
    } else if !f.workload.trim().is_empty() {
        parts.push(format!("workload {}", f.workload.trim()));
    }
    if !f.key_id.is_empty() {
        parts.push(format!("key {}", f.key_id));
    } else if !f.key_fingerprint.is_empty() {
        let short: String = f.key_fingerprint.chars().take(12).collect();
        parts.push(format!("key {short}"));
    }
    if !f.route.is_empty() {
        parts.push(format!("route {}", f.route));
    }
    match (parts.is_empty(), f.api_id.is_empty()) {
        (true, true) => String::new(),
        (true, false) => format!("api {}", f.api_id),
        (false, true) => parts.join(", "),
        (false, false) => format!("{} on {}", parts.join(", "), f.api_id),
    }
}

/// What a finding of this kind says, for lists and alerts.
pub fn kind_title(k: Kind) -> &'static str {
    match k {
        Kind::NewAppOutpacesPredecessor => "New application outpaces its predecessor",
        Kind::UndeclaredPredecessor => "Possible successor without a declared predecessor",
        Kind::NovelPattern => "Novel traffic pattern",
        Kind::NewConsumer => "New consumer",
        Kind::RetryStorm => "Retry storm",
        Kind::ClientBug => "Client bug",
        Kind::Flood => "Flood",
        Kind::BackendFailure => "Backend failure",
        Kind::KeyOutsideGrant => "Key used outside its grant",
        Kind::UnknownKey => "Unknown API key",
        Kind::KeyShared => "Key shared",
        Kind::ShadowConsumer => "Shadow consumer",
        Kind::UnusedGrant => "Unused grant",
        Kind::UndocumentedRoute => "Undocumented route",
    }
}

/// One short line: the kind's title and the subject, "(closed)" for a closing version.
pub fn title(f: &Finding) -> String {
    let s = subject(f);
    let mut t = kind_title(f.kind).to_string();
    if !s.is_empty() {
        t.push_str(": ");
        t.push_str(&s);
    }
    if f.status == Status::Closed {
        t.push_str(" (closed)");
    }
    t
}

/// Appends one finding version as a RowBinary row of `insights`, in [`INSIGHTS_COLUMNS`] order.
pub fn encode_finding(b: &mut Vec<u8>, f: &Finding, source: &str) {
    f.detected_at.put(b);
    put_str(b, &f.id);
    f.version.put(b);
    put_str(b, f.status.as_str());
    put_str(b, f.kind.as_str());
    put_str(b, f.severity.as_str());
    put_str(b, &f.team);
    put_str(b, &f.api_id);
    put_str(b, &f.app_id);
    put_str(b, &f.key_id);
    put_str(b, &f.key_fingerprint);
    put_str(b, &f.workload);
    put_str(b, &f.route);
    put_str(b, &subject(f));
    put_str(b, &title(f));
    put_str(b, &f.explanation);
    put_str(
        b,
        &serde_json::to_string(&f.evidence).unwrap_or_else(|_| "{}".into()),
    );
    f.first_seen.put(b);
    f.last_seen.put(b);
    put_str(b, source);
}

/// `RowBinaryWithNamesAndTypes` header of `insights`.
pub fn insights_header() -> Vec<u8> {
    header_for(INSIGHTS_COLUMNS.iter().copied())
}

/// `ts, id, version, ...` for the INSERT statement.
pub fn insights_column_list() -> String {
    INSIGHTS_COLUMNS
        .iter()
        .map(|(c, _)| *c)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The queue's end: hands findings to the writer without waiting.
#[derive(Clone)]
pub struct FindingsWriter {
    tx: mpsc::Sender<Vec<Finding>>,
    stats: WriterStats,
}

/// The writer's counters; holding them does not keep the writer running.
#[derive(Clone)]
pub struct WriterStats {
    dropped: Arc<AtomicU64>,
    metrics: Arc<SinkMetrics>,
}

impl FindingsWriter {
    /// Starts the writer task (spool under `cfg.spool_dir/insights`); it ends, after inserting or spooling what
    /// is queued, once every clone of the writer is dropped.
    pub async fn start(
        cfg: ClickHouseConfig,
        source: String,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), SinkError> {
        let dir = cfg.spool_dir.join("insights");
        let spool = open_spool(&dir).await?;
        let metrics = Arc::new(SinkMetrics::default());
        let run_id = crate::event::Timestamp::now().0 as u64;
        let ctx = Arc::new(Ctx::new(cfg, spool, metrics.clone(), run_id));
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let task = tokio::spawn(async move {
            let (ship_tx, ship_rx) = mpsc::channel(2);
            tokio::join!(
                batcher(rx, ship_tx, ctx.clone(), source),
                shipper(ship_rx, ctx.clone())
            );
        });
        Ok((
            FindingsWriter {
                tx,
                stats: WriterStats {
                    dropped: Arc::new(AtomicU64::new(0)),
                    metrics,
                },
            },
            task,
        ))
    }

    /// Queues finding versions for insertion; counts them dropped when the queue is full. Never waits.
    pub fn offer(&self, findings: &[Finding]) {
        if findings.is_empty() {
            return;
        }
        if self.tx.try_send(findings.to_vec()).is_err() {
            self.stats.dropped.fetch_add(findings.len() as u64, Relaxed);
        }
    }

    pub fn stats(&self) -> WriterStats {
        self.stats.clone()
    }
}

impl WriterStats {
    /// Rows inserted so far.
    pub fn written(&self) -> u64 {
        self.metrics.rows_sent.get()
    }

    /// Rows lost: queue full, or spool full or failing.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
            + self.metrics.dropped_spool_full.get()
            + self.metrics.dropped_spool_error.get()
    }

    /// Batches waiting in the spool for ClickHouse to come back.
    pub fn spooled_batches(&self) -> u64 {
        self.metrics.spool_batches.get().max(0) as u64
    }
}

async fn open_spool(dir: &Path) -> Result<Spool, SinkError> {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || Spool::open(&d, SPOOL_MAX_BYTES))
        .await
        .map_err(|e| SinkError::Internal(format!("spool open task: {e}")))?
        .map_err(|source| SinkError::Spool {
            dir: dir.to_path_buf(),
            source,
        })
}

/// Encodes queued findings into a batch, sealed at [`BATCH_ROWS`] rows or `batch_interval` after its first row.
async fn batcher(
    mut rx: mpsc::Receiver<Vec<Finding>>,
    ship_tx: mpsc::Sender<super::spool::SpooledBatch>,
    ctx: Arc<Ctx>,
    source: String,
) {
    let header = insights_header();
    let columns = insights_column_list();
    let mut buf = header.clone();
    let mut rows = 0u64;
    let mut seq = 0u64;
    let mut opened: Option<Instant> = None;
    let interval = ctx.cfg.batch_interval.max(Duration::from_millis(10));
    loop {
        let deadline = opened.map(|t| t + interval);
        let seal_now = tokio::select! {
            got = rx.recv() => match got {
                Some(fs) => {
                    for f in &fs {
                        encode_finding(&mut buf, f, &source);
                    }
                    rows += fs.len() as u64;
                    opened.get_or_insert_with(Instant::now);
                    rows >= BATCH_ROWS
                }
                None => break,
            },
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => true,
        };
        if seal_now && rows > 0 {
            let payload = std::mem::replace(&mut buf, header.clone());
            let batch = ctx.seal(seq, INSIGHTS_TABLE, &columns, payload, rows);
            seq += 1;
            rows = 0;
            opened = None;
            if let Err(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) =
                ship_tx.try_send(batch)
            {
                ctx.spool_push(b).await;
            }
        }
    }
    if rows > 0 {
        let batch = ctx.seal(seq, INSIGHTS_TABLE, &columns, buf, rows);
        if let Err(mpsc::error::SendError(b)) = ship_tx.send(batch).await {
            ctx.spool_push(b).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Timestamp;
    use crate::insights::finding::Severity;

    fn finding() -> Finding {
        let mut evidence = serde_json::Map::new();
        evidence.insert("ratio".into(), 3.4.into());
        Finding {
            id: "00000000000000ab".into(),
            version: 2,
            status: Status::Update,
            kind: Kind::NewAppOutpacesPredecessor,
            severity: Severity::Warning,
            api_id: "payments-api".into(),
            app_id: "checkout-v2".into(),
            key_id: String::new(),
            key_fingerprint: String::new(),
            workload: String::new(),
            route: String::new(),
            team: "payments".into(),
            detected_at: Timestamp(3_000_000),
            first_seen: Timestamp(1_000_000),
            last_seen: Timestamp(3_000_000),
            explanation: "checkout-v2 makes 3.4x the calls".into(),
            evidence,
        }
    }

    #[test]
    fn subject_and_title_are_words() {
        let f = finding();
        assert_eq!(subject(&f), "app checkout-v2 on payments-api");
        assert_eq!(
            title(&f),
            "New application outpaces its predecessor: app checkout-v2 on payments-api"
        );
        let g = Finding {
            app_id: String::new(),
            workload: "curl /batch ".into(),
            key_fingerprint: "0123456789abcdef0123".into(),
            route: "/v1/rates".into(),
            kind: Kind::KeyShared,
            status: Status::Closed,
            ..finding()
        };
        assert_eq!(
            subject(&g),
            "workload curl /batch, key 0123456789ab, route /v1/rates on payments-api"
        );
        assert!(title(&g).ends_with("(closed)"));
        let api_only = Finding {
            app_id: String::new(),
            ..finding()
        };
        assert_eq!(subject(&api_only), "api payments-api");
        for k in Kind::ALL {
            assert!(!kind_title(k).is_empty());
        }
    }

    #[test]
    fn row_has_every_column_in_order() {
        let f = finding();
        let mut b = Vec::new();
        encode_finding(&mut b, &f, "fleet");
        // ts, then id as a length-prefixed string, then version.
        assert_eq!(&b[..8], &3_000_000i64.to_le_bytes());
        assert_eq!(b[8] as usize, f.id.len());
        assert_eq!(&b[9..9 + f.id.len()], f.id.as_bytes());
        assert_eq!(&b[25..29], &2u32.to_le_bytes());
        assert!(b.ends_with(b"\x05fleet"));
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains(r#"{"ratio":3.4}"#), "{text}");
        let h = insights_header();
        assert_eq!(h[0] as usize, INSIGHTS_COLUMNS.len());
        assert!(insights_column_list().starts_with("ts, id, version, status, kind"));
        assert!(insights_column_list().ends_with("last_seen, source"));
    }
}
