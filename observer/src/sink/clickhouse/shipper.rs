//! The shipper: inserts sealed batches in order, each with its deduplication token. A failed batch goes to the
//! on-disk [`Spool`]; while the spool holds anything, new batches are spooled behind it and the spool is replayed
//! oldest first with exponential backoff. Because every retry carries the batch's token, a batch whose first
//! insert succeeded without us hearing back is stored once.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::config::ClickHouseConfig;
use super::spool::{BatchId, Spool, SpoolError, SpooledBatch};
use crate::courtesy::Courtesy;
use crate::sink::SinkMetrics;

/// Exponential backoff with a cap.
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub(super) fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub(super) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Why an insert failed, for `observer_sink_insert_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InsertFailure {
    Schema,
    Timeout,
    Unreachable,
    Server,
}

/// ClickHouse error codes (and their names, as the server prints them) that say the table or its columns are not
/// what the insert expects.
const SCHEMA_ERRORS: [(u32, &str); 8] = [
    (8, "THERE_IS_NO_COLUMN"),
    (16, "NO_SUCH_COLUMN_IN_TABLE"),
    (47, "UNKNOWN_IDENTIFIER"),
    (53, "TYPE_MISMATCH"),
    (60, "UNKNOWN_TABLE"),
    (70, "CANNOT_CONVERT_TYPE"),
    (81, "UNKNOWN_DATABASE"),
    (10, "NOT_FOUND_COLUMN_IN_BLOCK"),
];

impl InsertFailure {
    pub(super) fn of(e: &clickhouse::error::Error) -> Self {
        use clickhouse::error::Error;
        match e {
            Error::TimedOut => InsertFailure::Timeout,
            Error::Network(_) => InsertFailure::Unreachable,
            Error::BadResponse(msg) if Self::is_schema(msg) => InsertFailure::Schema,
            _ => InsertFailure::Server,
        }
    }

    /// ClickHouse's message starts `Code: N. DB::Exception: ... (NAME)`.
    fn is_schema(msg: &str) -> bool {
        let code = msg
            .split("Code: ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse::<u32>().ok());
        SCHEMA_ERRORS
            .iter()
            .any(|(c, name)| code == Some(*c) || msg.contains(&format!("({name})")))
    }
}

/// Shared state of the batcher and the shipper.
pub(super) struct Ctx {
    pub(super) cfg: ClickHouseConfig,
    pub(super) client: clickhouse::Client,
    pub(super) spool: Arc<Mutex<Spool>>,
    pub(super) metrics: Arc<SinkMetrics>,
    pub(super) run_id: u64,
    /// Payload buffers of inserted batches, for the batcher to fill again (see [`Ctx::recycle`]).
    pub(super) buffers: Mutex<Vec<Vec<u8>>>,
}

/// Payload buffers kept for reuse: the one being filled is the batcher's, one may be in flight.
const KEEP_BUFFERS: usize = 2;

impl Ctx {
    pub(super) fn new(
        cfg: ClickHouseConfig,
        spool: Spool,
        metrics: Arc<SinkMetrics>,
        run_id: u64,
    ) -> Self {
        Ctx {
            client: cfg.client(),
            cfg,
            spool: Arc::new(Mutex::new(spool)),
            metrics,
            run_id,
            buffers: Mutex::new(Vec::new()),
        }
    }

    /// An empty payload buffer: an inserted batch's when one was given back, else a new one with room for a batch
    /// at its byte bound ([`Ctx::buffer_capacity`]).
    ///
    /// Reuse matters: a batch is megabytes, and a fresh one each second was freed, returned to the system by the
    /// allocator and faulted back in as zeroed pages. With the ClickHouse sink at about 30k events/s, a fifth of the
    /// agent's CPU samples were in the kernel zeroing those pages (`clear_page_erms`) before buffers were reused.
    ///
    /// Every buffer has the same room, so a kept one always fits the next batch. Sized like the batch before (an
    /// eighth more), a kept buffer was too small whenever a batch came out larger than the one before it: it was
    /// dropped and a new one faulted in, or the batch outgrew it while it was encoded, and the vector's doubling
    /// copied it and faulted in twice its size. Under steady load (loopback nginx at 65k exchanges/s) every byte
    /// encoded was a fresh page: 16-21k page faults in 5 s. The room is address space: a page costs memory once
    /// written, and then only as long as the buffer is kept.
    pub(super) fn buffer(&self) -> Vec<u8> {
        let kept = self.buffers.lock().ok().and_then(|mut b| b.pop());
        match kept {
            Some(mut b) => {
                b.clear();
                b
            }
            None => Vec::with_capacity(self.buffer_capacity()),
        }
    }

    /// A batch's byte bound, and an eighth more: a batch is sealed once it reaches the bound, so it may pass it by
    /// the events of one hand-over.
    fn buffer_capacity(&self) -> usize {
        self.cfg
            .batch_max_bytes
            .saturating_add(self.cfg.batch_max_bytes / 8)
    }

    /// Keeps an inserted batch's payload for [`Ctx::buffer`] when nothing else holds it.
    fn recycle(&self, payload: bytes::Bytes) {
        if !payload.is_unique() {
            return;
        }
        let v = Vec::from(payload);
        if let Ok(mut b) = self.buffers.lock() {
            if b.len() < KEEP_BUFFERS {
                b.push(v);
            }
        }
    }

    pub(super) fn update_spool_gauges(&self, s: &Spool) {
        self.metrics.spool_bytes.set(s.bytes() as i64);
        self.metrics.spool_batches.set(s.len() as i64);
        // The spool counts the files it quarantined since it opened: the counter follows it.
        let quarantined = &self.metrics.quarantined_files;
        quarantined.inc_by(s.quarantined().saturating_sub(quarantined.get()));
        let unfinished = &self.metrics.unfinished_files;
        unfinished.inc_by(s.unfinished().saturating_sub(unfinished.get()));
    }

    /// A sealed batch: number `seq` of this run, with its deterministic `insert_deduplication_token`.
    pub(super) fn seal(
        &self,
        seq: u64,
        table: &str,
        columns: &str,
        payload: Vec<u8>,
        rows: u64,
    ) -> SpooledBatch {
        let id = BatchId {
            run_id: self.run_id,
            seq,
        };
        SpooledBatch {
            id,
            rows,
            created_us: crate::event::Timestamp::now().0,
            token: format!("{}:{:016x}:{}", self.cfg.agent_id, id.run_id, id.seq),
            table: table.to_string(),
            columns: columns.to_string(),
            payload: bytes::Bytes::from(payload),
        }
    }

    pub(super) fn spool_len(&self) -> usize {
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
    pub(super) async fn spool_push(self: &Arc<Self>, batch: SpooledBatch) {
        let rows = batch.rows;
        let id = batch.id;
        match self.with_spool(move |s| s.push(&batch)).await {
            Ok(_) => {
                self.metrics.spooled_batches.inc();
                self.metrics.spooled_rows.inc_by(rows);
                tracing::debug!(?id, rows, "batch spooled");
            }
            Err(e @ SpoolError::Full { .. }) => {
                self.metrics.dropped_spool_full.inc_by(rows);
                tracing::warn!(error = %e, rows, "ClickHouse unavailable and spool full: dropping a batch");
            }
            Err(e @ SpoolError::DiskFull { .. }) => {
                self.metrics.dropped_spool_disk_full.inc_by(rows);
                tracing::error!(error = %e, rows, "ClickHouse unavailable and the spool's disk is full: dropping a batch");
            }
            Err(e) => {
                self.metrics.dropped_spool_error.inc_by(rows);
                tracing::error!(error = %e, rows, "cannot write batch to the spool: dropping it");
            }
        }
    }

    /// One INSERT of a batch, with its deduplication token.
    async fn insert(&self, b: &SpooledBatch) -> Result<(), clickhouse::error::Error> {
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
            // Each piece is LZ4-compressed in one go as it is sent. With 1 MiB pieces the sink's threads ran for up
            // to 2.1 ms at a time under load, with 128 KiB pieces and the core offered back between them
            // ([`Courtesy`]) for at most 0.43 ms (`perf sched`, loopback nginx under wrk).
            const CHUNK: usize = 128 << 10;
            let mut courtesy = Courtesy::new();
            for piece in courtesy.pieces(&b.payload[..], CHUNK) {
                ins.send(b.payload.slice_ref(piece)).await?;
            }
            ins.end().await
        };
        let res = match tokio::time::timeout(self.cfg.insert_timeout * 2, res).await {
            Ok(r) => r,
            Err(_) => Err(clickhouse::error::Error::TimedOut),
        };
        match &res {
            Ok(()) => {
                self.metrics.rows_sent.inc_by(b.rows);
                self.metrics.batches_sent.inc();
                self.metrics.observe_insert(started.elapsed());
            }
            Err(e) => {
                self.metrics.insert_errors.inc();
                let reason = InsertFailure::of(e);
                match reason {
                    InsertFailure::Schema => &self.metrics.insert_failed_schema,
                    InsertFailure::Timeout => &self.metrics.insert_failed_timeout,
                    InsertFailure::Unreachable => &self.metrics.insert_failed_unreachable,
                    InsertFailure::Server => &self.metrics.insert_failed_server,
                }
                .inc();
                if reason == InsertFailure::Schema {
                    tracing::error!(
                        table = %format!("{}.{}", self.cfg.database, b.table),
                        error = %e,
                        rows = b.rows,
                        "ClickHouse refused the batch: the table does not have the columns or types this agent writes \
                         (dropped or renamed column, missing table, changed type?). The batch stays in the spool and is \
                         retried; restore the schema (`observer schema print` shows it) and it lands once"
                    );
                }
            }
        }
        res
    }

    /// Inserts the oldest spooled batch and deletes it. `Ok(false)` when the spool was empty.
    async fn replay_oldest(self: &Arc<Self>) -> Result<bool, clickhouse::error::Error> {
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
        self.metrics.replayed_batches.inc();
        self.metrics.replayed_rows.inc_by(batch.rows);
        let id = batch.id;
        if let Err(e) = self.with_spool(move |s| s.remove(id)).await {
            // It was inserted; replaying it again is harmless thanks to the token.
            tracing::error!(error = %e, ?id, "cannot delete a replayed spool file");
        }
        tracing::debug!(?id, rows = batch.rows, "spooled batch replayed");
        Ok(true)
    }
}

pub(super) async fn shipper(mut rx: mpsc::Receiver<SpooledBatch>, ctx: Arc<Ctx>) {
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
                Ok(()) => {
                    backoff.reset();
                    ctx.recycle(b.payload);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_failures_are_told_apart() {
        use clickhouse::error::Error;
        let bad = |m: &str| InsertFailure::of(&Error::BadResponse(m.into()));
        assert_eq!(
            bad("Code: 16. DB::Exception: No such column user_agent in table observer.http_requests. (NO_SUCH_COLUMN_IN_TABLE) (version 26.9.2.1)"),
            InsertFailure::Schema
        );
        assert_eq!(
            bad("Code: 60. DB::Exception: Table observer.http_requests does not exist. (UNKNOWN_TABLE)"),
            InsertFailure::Schema
        );
        assert_eq!(
            bad("Code: 999. DB::Exception: injected by fault_proxy.py"),
            InsertFailure::Server
        );
        assert_eq!(bad("Code: 160. (TOO_SLOW)"), InsertFailure::Server);
        assert_eq!(InsertFailure::of(&Error::TimedOut), InsertFailure::Timeout);
    }

    #[test]
    fn backoff_doubles_to_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<_> = (0..4).map(|_| b.fail().as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.fail().as_millis(), 100);
    }
}
