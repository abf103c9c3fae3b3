//! ClickHouse sink: batches events as RowBinary and inserts them over HTTP with the official `clickhouse` crate.
//!
//! Two cooperating futures run in one task:
//! - the *batcher* encodes events straight into a `RowBinaryWithNamesAndTypes` buffer and seals a batch at
//!   `batch_rows` rows, `batch_max_bytes` bytes or `batch_interval` after its first row (memory stays bounded by a
//!   few batches). A sealed batch gets an id (agent run id + sequence) and a deterministic
//!   `insert_deduplication_token`, and goes to the shipper; if the shipper is behind, straight to the spool.
//! - the *shipper* inserts batches in order. A failed batch goes to the on-disk [`Spool`]; while the spool holds
//!   anything, new batches are spooled behind it and the spool is replayed oldest first with exponential backoff.
//!   Because every retry carries the batch's token, a batch whose first insert succeeded without us hearing back is
//!   stored once.
//!
//! The spool holds the exact request body (the names-and-types header included), so a batch written by an older
//! binary replays unchanged. Only a full (or failing) spool drops rows, and those are counted.
pub mod registry_rows;
pub mod rowbinary;
pub mod schema;
pub mod spool;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use super::{SinkError, SinkMetrics};
use crate::event::{Event, Timestamp};
use registry_rows::RegistryRows;
use rowbinary::{column_list, encode_event, rbwnat_header};
use spool::{BatchId, Spool, SpoolError, SpooledBatch};

/// The table events go to (a Distributed table when the schema was applied with `--cluster`).
pub const TABLE: &str = "http_requests";

/// Everything the ClickHouse sink needs.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Identifies this agent in deduplication tokens (default: host name).
    pub agent_id: String,
    pub batch_rows: usize,
    pub batch_max_bytes: usize,
    pub batch_interval: Duration,
    pub insert_timeout: Duration,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long shutdown keeps replaying the spool before leaving the rest for the next start.
    pub shutdown_grace: Duration,
}

impl ClickHouseConfig {
    /// Defaults that follow ClickHouse's guidance (large batches, about one insert per second).
    pub fn new(url: &str, spool_dir: PathBuf) -> Self {
        ClickHouseConfig {
            url: url.to_string(),
            database: "observer".into(),
            user: None,
            password: None,
            agent_id: default_agent_id(),
            batch_rows: 100_000,
            batch_max_bytes: 32 << 20,
            batch_interval: Duration::from_secs(1),
            insert_timeout: Duration::from_secs(30),
            spool_dir,
            spool_max_bytes: 1 << 30,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// A client for this server and database (LZ4 compression on, validation on for typed inserts).
    pub fn client(&self) -> clickhouse::Client {
        let mut c = clickhouse::Client::default()
            .with_url(&self.url)
            .with_database(&self.database);
        if let Some(u) = &self.user {
            c = c.with_user(u);
        }
        if let Some(p) = &self.password {
            c = c.with_password(p);
        }
        c
    }
}

/// The host name, or `observer` when it cannot be read.
pub fn default_agent_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "observer".to_string()
}

// ---------------------------------------------------------------------------------------------------------------
// Batching

/// A batch being filled.
struct OpenBatch {
    header: Arc<Vec<u8>>,
    buf: Vec<u8>,
    rows: u64,
    opened: Option<Instant>,
}

impl OpenBatch {
    fn new(header: Arc<Vec<u8>>) -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(&header);
        OpenBatch {
            header,
            buf,
            rows: 0,
            opened: None,
        }
    }

    fn push(&mut self, e: &Event) {
        if self.rows == 0 {
            self.opened = Some(Instant::now());
        }
        encode_event(&mut self.buf, e);
        self.rows += 1;
    }

    fn take(&mut self) -> (Vec<u8>, u64) {
        let mut next = Vec::with_capacity(self.buf.capacity().min(4 << 20));
        next.extend_from_slice(&self.header);
        let rows = self.rows;
        self.rows = 0;
        self.opened = None;
        (std::mem::replace(&mut self.buf, next), rows)
    }
}

/// Exponential backoff with a cap.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Shared state of the batcher and the shipper.
struct Ctx {
    cfg: ClickHouseConfig,
    client: clickhouse::Client,
    spool: Arc<Mutex<Spool>>,
    metrics: Arc<SinkMetrics>,
    run_id: u64,
}

impl Ctx {
    fn update_spool_gauges(&self, s: &Spool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics.spool_bytes.store(s.bytes(), Relaxed);
        self.metrics.spool_batches.store(s.len() as u64, Relaxed);
        self.metrics
            .quarantined_files
            .store(s.quarantined(), Relaxed);
    }

    fn spool_len(&self) -> usize {
        self.spool.lock().map(|s| s.len()).unwrap_or(0)
    }

    async fn with_spool<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let ctx = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = ctx.spool.lock().unwrap_or_else(|p| p.into_inner());
            let r = f(&mut s);
            ctx.update_spool_gauges(&s);
            r
        })
        .await
        .unwrap_or_else(|e| {
            Err(SpoolError::Io {
                path: self.cfg.spool_dir.clone(),
                source: std::io::Error::other(format!("spool task failed: {e}")),
            })
        })
    }

    /// Stores a batch on disk; counts the rows as dropped when that fails.
    async fn spool_push(self: &Arc<Self>, batch: SpooledBatch) {
        use std::sync::atomic::Ordering::Relaxed;
        let rows = batch.rows;
        let id = batch.id;
        match self.with_spool(move |s| s.push(&batch)).await {
            Ok(_) => {
                self.metrics.spooled_batches.fetch_add(1, Relaxed);
                self.metrics.spooled_rows.fetch_add(rows, Relaxed);
                tracing::debug!(?id, rows, "batch spooled");
            }
            Err(e @ SpoolError::Full { .. }) => {
                self.metrics.dropped_spool_full.fetch_add(rows, Relaxed);
                tracing::warn!(error = %e, rows, "ClickHouse unavailable and spool full: dropping a batch");
            }
            Err(e) => {
                self.metrics.dropped_spool_error.fetch_add(rows, Relaxed);
                tracing::error!(error = %e, rows, "cannot write batch to the spool: dropping it");
            }
        }
    }

    /// One INSERT of a batch, with its deduplication token.
    async fn insert(&self, b: &SpooledBatch) -> Result<(), clickhouse::error::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = StdInstant::now();
        let sql = format!(
            "INSERT INTO {}.{} ({}) FORMAT RowBinaryWithNamesAndTypes",
            self.cfg.database, b.table, b.columns
        );
        let t = Some(self.cfg.insert_timeout);
        let mut ins = self
            .client
            .insert_formatted_with(sql)
            .with_setting("insert_deduplicate", "1")
            .with_setting("insert_deduplication_token", b.token.clone())
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1")
            .with_timeouts(t, t);
        let res = async {
            const CHUNK: usize = 1 << 20;
            let mut off = 0;
            while off < b.payload.len() {
                let end = (off + CHUNK).min(b.payload.len());
                ins.send(b.payload.slice(off..end)).await?;
                off = end;
            }
            ins.end().await
        };
        let res = match tokio::time::timeout(self.cfg.insert_timeout * 2, res).await {
            Ok(r) => r,
            Err(_) => Err(clickhouse::error::Error::TimedOut),
        };
        match &res {
            Ok(()) => {
                self.metrics.rows_sent.fetch_add(b.rows, Relaxed);
                self.metrics.batches_sent.fetch_add(1, Relaxed);
                self.metrics.insert_latency.observe(started.elapsed());
            }
            Err(_) => {
                self.metrics.insert_errors.fetch_add(1, Relaxed);
            }
        }
        res
    }

    /// Inserts the oldest spooled batch and deletes it. `Ok(false)` when the spool was empty.
    async fn replay_oldest(self: &Arc<Self>) -> Result<bool, clickhouse::error::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let batch = match self.with_spool(|s| s.read_oldest()).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(false),
            Err(e) => {
                // An unreadable spool directory: nothing we can replay now; retry later.
                tracing::error!(error = %e, "cannot read the spool");
                return Err(clickhouse::error::Error::Custom(e.to_string()));
            }
        };
        self.insert(&batch).await?;
        self.metrics.replayed_batches.fetch_add(1, Relaxed);
        self.metrics.replayed_rows.fetch_add(batch.rows, Relaxed);
        let id = batch.id;
        if let Err(e) = self.with_spool(move |s| s.remove(id)).await {
            // It was inserted; replaying it again is harmless thanks to the token.
            tracing::error!(error = %e, ?id, "cannot delete a replayed spool file");
        }
        tracing::debug!(?id, rows = batch.rows, "spooled batch replayed");
        Ok(true)
    }
}

/// Starts the sink; the returned future runs until `rx` is closed and everything is inserted or spooled.
pub(super) async fn start(
    cfg: ClickHouseConfig,
    metrics: Arc<SinkMetrics>,
    rx: super::QueueRx,
) -> Result<impl std::future::Future<Output = Result<(), SinkError>> + Send + 'static, SinkError> {
    let dir = cfg.spool_dir.clone();
    let max = cfg.spool_max_bytes;
    let spool = tokio::task::spawn_blocking(move || Spool::open(&dir, max))
        .await
        .map_err(|e| SinkError::Internal(format!("spool open task: {e}")))?
        .map_err(|source| SinkError::Spool {
            dir: cfg.spool_dir.clone(),
            source,
        })?;
    let run_id = Timestamp::now().0 as u64;
    let ctx = Arc::new(Ctx {
        client: cfg.client(),
        cfg,
        spool: Arc::new(Mutex::new(spool)),
        metrics,
        run_id,
    });
    {
        let s = ctx.spool.lock().unwrap_or_else(|p| p.into_inner());
        ctx.update_spool_gauges(&s);
    }
    tracing::info!(
        url = %ctx.cfg.url,
        database = %ctx.cfg.database,
        agent_id = %ctx.cfg.agent_id,
        run_id = format!("{run_id:016x}"),
        spool = %ctx.cfg.spool_dir.display(),
        "ClickHouse sink started"
    );
    let (ship_tx, ship_rx) = mpsc::channel(2);
    Ok(async move {
        tokio::join!(
            batcher(rx, ship_tx, ctx.clone()),
            shipper(ship_rx, ctx.clone())
        );
        Ok(())
    })
}

async fn batcher(mut rx: super::QueueRx, ship_tx: mpsc::Sender<SpooledBatch>, ctx: Arc<Ctx>) {
    let header = Arc::new(rbwnat_header());
    let columns = column_list();
    let mut open = OpenBatch::new(header);
    let mut seq: u64 = 0;
    let seal = |open: &mut OpenBatch, seq: &mut u64| {
        let (payload, rows) = open.take();
        let id = BatchId {
            run_id: ctx.run_id,
            seq: *seq,
        };
        *seq += 1;
        SpooledBatch {
            id,
            rows,
            created_us: Timestamp::now().0,
            token: format!("{}:{:016x}:{}", ctx.cfg.agent_id, id.run_id, id.seq),
            table: TABLE.to_string(),
            columns: columns.clone(),
            payload: Bytes::from(payload),
        }
    };
    loop {
        let deadline = open.opened.map(|t| t + ctx.cfg.batch_interval);
        let full = tokio::select! {
            evs = rx.recv() => match evs {
                Some(evs) => {
                    // A capture batch goes into one insert batch whole: an insert batch may exceed
                    // `batch_rows` by at most one capture drain.
                    evs.iter().for_each(|ev| open.push(ev));
                    rx.recycle(evs);
                    // Take whatever else is queued without going through select! again.
                    while open.rows < ctx.cfg.batch_rows as u64 && open.buf.len() < ctx.cfg.batch_max_bytes {
                        match rx.try_recv() {
                            Some(evs) => {
                                evs.iter().for_each(|ev| open.push(ev));
                                rx.recycle(evs);
                            }
                            None => break,
                        }
                    }
                    open.rows >= ctx.cfg.batch_rows as u64 || open.buf.len() >= ctx.cfg.batch_max_bytes
                }
                None => break,
            },
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => true,
        };
        if full && open.rows > 0 {
            let batch = seal(&mut open, &mut seq);
            match ship_tx.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) => {
                    // The shipper is busy (slow or failing ClickHouse): keep capture moving, park it on disk.
                    ctx.spool_push(b).await;
                }
            }
        }
    }
    if open.rows > 0 {
        let batch = seal(&mut open, &mut seq);
        if let Err(mpsc::error::SendError(b)) = ship_tx.send(batch).await {
            ctx.spool_push(b).await;
        }
    }
}

async fn shipper(mut rx: mpsc::Receiver<SpooledBatch>, ctx: Arc<Ctx>) {
    let mut backoff = Backoff::new(ctx.cfg.backoff_min, ctx.cfg.backoff_max);
    let mut next_try = Instant::now();
    let mut closing: Option<Instant> = None;
    loop {
        if ctx.spool_len() > 0 {
            // Keep production order: what queued up behind the backlog goes to disk behind it.
            while let Ok(b) = rx.try_recv() {
                ctx.spool_push(b).await;
            }
            if let Some(deadline) = closing {
                if Instant::now() >= deadline || Instant::now() < next_try {
                    break;
                }
            } else if Instant::now() < next_try {
                tokio::select! {
                    _ = sleep_until(next_try) => {}
                    b = rx.recv() => match b {
                        Some(b) => ctx.spool_push(b).await,
                        None => closing = Some(Instant::now() + ctx.cfg.shutdown_grace),
                    },
                }
                continue;
            }
            match ctx.replay_oldest().await {
                Ok(_) => backoff.reset(),
                Err(e) => {
                    let wait = backoff.fail();
                    next_try = Instant::now() + wait;
                    tracing::warn!(error = %e, retry_in = ?wait, spooled = ctx.spool_len(), "replaying spooled batch failed");
                }
            }
            continue;
        }
        if closing.is_some() {
            break;
        }
        match rx.recv().await {
            None => closing = Some(Instant::now() + ctx.cfg.shutdown_grace),
            Some(b) => match ctx.insert(&b).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    let wait = backoff.fail();
                    next_try = Instant::now() + wait;
                    tracing::warn!(error = %e, rows = b.rows, retry_in = ?wait, "ClickHouse insert failed; spooling the batch");
                    ctx.spool_push(b).await;
                }
            },
        }
    }
    let left = ctx.spool_len();
    if left > 0 {
        tracing::warn!(batches = left, dir = %ctx.cfg.spool_dir.display(), "shutting down with spooled batches; the next start replays them");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Registry

/// Inserts registry rows (the client must point at observer's database).
pub async fn write_registry(
    client: &clickhouse::Client,
    rows: &RegistryRows,
) -> Result<(), clickhouse::error::Error> {
    async fn put<T>(
        client: &clickhouse::Client,
        table: &str,
        rows: &[T],
    ) -> Result<(), clickhouse::error::Error>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let mut ins = client.insert::<T>(table).await?;
        for r in rows {
            ins.write(r).await?;
        }
        ins.end().await
    }
    put(client, "apis", &rows.apis).await?;
    put(client, "applications", &rows.applications).await?;
    put(client, "key_grants", &rows.key_grants).await?;
    put(client, "teams", &rows.teams).await?;
    Ok(())
}

/// Writes the newest registry state, retrying with backoff until it lands or a newer one replaces it.
pub(super) async fn registry_task(
    client: clickhouse::Client,
    mut rx: watch::Receiver<Option<Arc<RegistryRows>>>,
    metrics: Arc<SinkMetrics>,
    backoff_min: Duration,
    backoff_max: Duration,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut backoff = Backoff::new(backoff_min, backoff_max);
    while rx.changed().await.is_ok() {
        let Some(rows) = rx.borrow_and_update().clone() else {
            continue;
        };
        loop {
            match write_registry(&client, &rows).await {
                Ok(()) => {
                    metrics.registry_writes.fetch_add(1, Relaxed);
                    backoff.reset();
                    tracing::info!(rows = rows.len(), "registry written to ClickHouse");
                    break;
                }
                Err(e) => {
                    metrics.registry_errors.fetch_add(1, Relaxed);
                    let wait = backoff.fail();
                    tracing::warn!(error = %e, retry_in = ?wait, "writing the registry to ClickHouse failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        r = rx.changed() => if r.is_err() { return } else { break },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<_> = (0..4).map(|_| b.fail().as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.fail().as_millis(), 100);
    }
}
