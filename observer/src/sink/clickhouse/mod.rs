//! ClickHouse sink: batches events as RowBinary and inserts them over HTTP with the official `clickhouse` crate.
//!
//! One file per job: [`config`] (settings), [`rowbinary`] (the row encoding, generated from the event table),
//! [`batcher`] and [`shipper`] (below), [`spool`] (batches on disk), [`schema`] (DDL, `observer schema`) with
//! [`migrations`] (every schema version: the one place to change the tables), [`registry_rows`] (the registry as
//! rows, and writing them), [`insights_rows`] (findings as rows, and their writer).
//!
//! Two cooperating futures run in one task:
//! - the *batcher* encodes events straight into a `RowBinaryWithNamesAndTypes` buffer and seals a batch at
//!   `batch_rows` rows, `batch_max_bytes` bytes or `batch_interval` after its first row (memory stays bounded by a
//!   few batches). A sealed batch gets an id (agent run id + sequence) and a deterministic
//!   `insert_deduplication_token`, and goes to the shipper; while the shipper is busy a due batch keeps filling up to
//!   its size bounds (a slow ClickHouse gets fewer, larger inserts), and a batch at its bound goes to the spool.
//! - the *shipper* inserts batches in order. A failed batch goes to the on-disk [`Spool`]; while the spool holds
//!   anything, new batches are spooled behind it and the spool is replayed oldest first with exponential backoff.
//!   Because every retry carries the batch's token, a batch whose first insert succeeded without us hearing back is
//!   stored once.
//!
//! The spool holds the exact request body (the names-and-types header included), so a batch written by an older
//! binary replays unchanged. Only a full (or failing) spool drops rows, and those are counted by reason: `spool_full` (its
//! configured bound), `spool_disk_full` (its file system full first), `spool_error`. Failed inserts are counted by
//! reason too (`observer_sink_insert_failures_total{reason="schema|timeout|unreachable|server"}`); the agent never
//! changes the schema while it runs, so a batch refused for a schema mismatch waits in the spool until an operator
//! restores the schema.
mod batcher;
pub mod config;
pub mod credentials;
pub mod insights_rows;
pub mod migrations;
pub mod registry_rows;
mod registry_schema;
pub mod rowbinary;
pub mod schema;
mod shipper;
pub mod spool;

use std::sync::Arc;

use tokio::sync::mpsc;

use super::queue::QueueRx;
use super::{SinkError, SinkMetrics};
use crate::event::Timestamp;
pub use config::{ClickHouseConfig, TABLE};
pub(super) use registry_rows::registry_task;
pub use registry_rows::write_registry;
use shipper::Ctx;
use spool::Spool;

/// Starts the sink; the returned future runs until `rx` is closed and everything is inserted or spooled.
pub(super) async fn start(
    cfg: ClickHouseConfig,
    metrics: Arc<SinkMetrics>,
    rx: QueueRx,
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
    let ctx = Arc::new(Ctx::new(cfg, spool, metrics, run_id));
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
            batcher::batcher(rx, ship_tx, ctx.clone()),
            shipper::shipper(ship_rx, ctx.clone())
        );
        Ok(())
    })
}
