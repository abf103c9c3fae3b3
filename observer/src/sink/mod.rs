//! Where events go: NDJSON files, a readable stdout view, and ClickHouse (batched, spooled, deduplicated).
//!
//! This module is the plumbing every sink shares: the agent builds a [`SinkHandle`] from a [`SinkConfig`] with
//! [`build`], hands it [`Event`]s a few thousand at a time with [`SinkHandle::send_batch`] (never blocks: each sink
//! has a queue bounded in events, what does not fit is counted as a drop; see [`queue`]), and at exit calls
//! [`SinkHandle::shutdown`], which flushes every sink (ClickHouse batches that cannot be inserted go to the spool,
//! replayed by the next start). Each sink is a task reading its queue, in its own file: [`stdout`], [`ndjson`],
//! [`clickhouse`]. [`SinkHandle::metrics`] returns the counters of [`metrics`].
pub mod clickhouse;
pub mod metrics;
pub mod ndjson;
pub mod queue;
pub mod stdout;

use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::event::Event;
use clickhouse::registry_rows::RegistryRows;
pub use clickhouse::schema::{Retention, SchemaCommand};
pub use clickhouse::ClickHouseConfig;
use clickhouse::{schema, spool};
pub use metrics::{MetricsSnapshot, SinkMetrics};
use queue::QueueTx;

/// Errors building or stopping sinks.
#[derive(Debug, Error)]
pub enum SinkError {
    #[error("invalid --sink {0:?}: expected stdout, clickhouse or ndjson:PATH")]
    BadSpec(String),
    #[error("--sink clickhouse needs --clickhouse-url (or CLICKHOUSE_URL)")]
    MissingClickHouseUrl,
    #[error("NDJSON sink: cannot open {path} for appending: {source}")]
    NdjsonOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("NDJSON sink: writing {path} failed: {source}")]
    NdjsonWrite {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("ClickHouse sink: spool directory {dir}: {source}")]
    Spool {
        dir: PathBuf,
        #[source]
        source: spool::SpoolError,
    },
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    #[error("sink {name} task failed: {message}")]
    Task { name: String, message: String },
    #[error("sink internal error: {0}")]
    Internal(String),
}

/// One `--sink` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    Stdout,
    Ndjson(PathBuf),
    ClickHouse,
}

impl FromStr for SinkSpec {
    type Err = SinkError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "stdout" => Ok(SinkSpec::Stdout),
            "clickhouse" => Ok(SinkSpec::ClickHouse),
            other => match other.strip_prefix("ndjson:") {
                Some(p) if !p.is_empty() => Ok(SinkSpec::Ndjson(PathBuf::from(p))),
                _ => Err(SinkError::BadSpec(s.to_string())),
            },
        }
    }
}

/// What [`build`] starts: plain values, built by the agent from the command line (`config::SinkArgs`).
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub sinks: Vec<SinkSpec>,
    /// Events queued per sink before new ones are dropped (counted) instead of slowing capture.
    pub queue: usize,
    /// The ClickHouse sink's settings; required when `sinks` names ClickHouse.
    pub clickhouse: Option<ClickHouseConfig>,
    /// Apply the schema (idempotent migrations) with this raw-event retention before the ClickHouse sink starts.
    pub apply_schema: Option<Retention>,
}

struct Output {
    name: String,
    tx: QueueTx,
    task: JoinHandle<Result<(), SinkError>>,
}

/// The running sinks.
pub struct SinkHandle {
    outputs: Vec<Output>,
    metrics: Arc<SinkMetrics>,
    spares: Arc<queue::Spares>,
    registry: Option<(RegistrySender, JoinHandle<()>)>,
}

type RegistrySender = watch::Sender<Option<Arc<RegistryRows>>>;

/// Starts the sinks named in `cfg`. Fails when a sink cannot start (unwritable NDJSON path, unusable spool
/// directory, missing ClickHouse settings, schema apply failure); an unreachable ClickHouse is not an error (spooled).
pub async fn build(cfg: &SinkConfig) -> Result<SinkHandle, SinkError> {
    let metrics = Arc::new(SinkMetrics::default());
    let mut outputs = Vec::new();
    let mut registry = None;
    let queue = cfg.queue.max(1);
    let spares = Arc::new(queue::Spares::default());
    for spec in &cfg.sinks {
        let (tx, rx) = queue::queue(queue, spares.clone());
        let (name, task) = match spec {
            SinkSpec::Stdout => (
                "stdout".to_string(),
                tokio::spawn(stdout::run_stdout(rx, tokio::io::stdout(), metrics.clone())),
            ),
            SinkSpec::Ndjson(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| SinkError::NdjsonOpen {
                        path: path.clone(),
                        source,
                    })?;
                let (path, m) = (path.clone(), metrics.clone());
                (
                    format!("ndjson:{}", path.display()),
                    tokio::task::spawn_blocking(move || ndjson::run_ndjson(rx, file, path, m)),
                )
            }
            SinkSpec::ClickHouse => {
                let ch = cfg
                    .clickhouse
                    .clone()
                    .ok_or(SinkError::MissingClickHouseUrl)?;
                if let Some(retention) = cfg.apply_schema {
                    let scfg = schema::SchemaConfig::new(&ch.database, None, retention)?;
                    let report = schema::apply(&ch.client(), &ch.url, &scfg, None).await?;
                    tracing::info!("{report}");
                }
                if registry.is_none() {
                    let (wtx, wrx) = watch::channel(None);
                    let t = tokio::spawn(clickhouse::registry_task(
                        ch.client(),
                        wrx,
                        metrics.clone(),
                        ch.backoff_min,
                        ch.backoff_max,
                    ));
                    registry = Some((wtx, t));
                }
                let fut = clickhouse::start(ch, metrics.clone(), rx).await?;
                ("clickhouse".to_string(), tokio::spawn(fut))
            }
        };
        outputs.push(Output { name, tx, task });
    }
    Ok(SinkHandle {
        outputs,
        metrics,
        spares,
        registry,
    })
}

/// Starts a ClickHouse sink from a full configuration (tests, embedding).
pub async fn build_clickhouse(
    cfg: ClickHouseConfig,
    queue: usize,
) -> Result<SinkHandle, SinkError> {
    let metrics = Arc::new(SinkMetrics::default());
    let spares = Arc::new(queue::Spares::default());
    let (tx, rx) = queue::queue(queue, spares.clone());
    let (wtx, wrx) = watch::channel(None);
    let reg = tokio::spawn(clickhouse::registry_task(
        cfg.client(),
        wrx,
        metrics.clone(),
        cfg.backoff_min,
        cfg.backoff_max,
    ));
    let fut = clickhouse::start(cfg, metrics.clone(), rx).await?;
    Ok(SinkHandle {
        outputs: vec![Output {
            name: "clickhouse".into(),
            tx,
            task: tokio::spawn(fut),
        }],
        metrics,
        spares,
        registry: Some((wtx, reg)),
    })
}

impl SinkHandle {
    /// Queues an event for every sink without blocking; a full queue drops it for that sink (counted).
    pub fn send(&self, event: Event) {
        self.send_batch(vec![event]);
    }

    /// An empty vector for the next batch, reusing one a sink gave back when there is one.
    pub fn batch(&self) -> Vec<Event> {
        self.spares.take()
    }

    /// Hands `events` to every sink, in order. Events a sink's queue has no room for are counted as dropped.
    pub fn send_batch(&self, events: Vec<Event>) {
        if events.is_empty() {
            // Most drains of a quiet node produce nothing: keep the vector for the next batch.
            self.spares.give(events);
            return;
        }
        let n = self.outputs.len();
        let want = events.len() as u64;
        let mut events = Some(events);
        for (i, o) in self.outputs.iter().enumerate() {
            let batch = if i + 1 == n {
                events.take().expect("events moved once")
            } else {
                events.clone().expect("events present")
            };
            let (sent, refused) = o.tx.send(batch);
            let sent = sent as u64;
            self.metrics.events_accepted.inc_by(sent);
            match refused {
                None => {}
                Some(queue::Refused::Full) => {
                    let before = self.metrics.dropped_queue_full.inc_by(want - sent);
                    // Warn at each power of two crossed, so a long overload logs a handful of lines.
                    if (before + want - sent).ilog2() != before.checked_ilog2().unwrap_or(u32::MAX)
                    {
                        tracing::warn!(sink = %o.name, dropped = before + want - sent, "sink queue full: dropping events");
                    }
                }
                Some(queue::Refused::Closed) => {
                    self.metrics.dropped_write_error.inc_by(want - sent);
                }
            }
        }
    }

    /// Records the registry state to write to ClickHouse (if a ClickHouse sink runs). Only the newest state is
    /// kept; it is retried in the background until written.
    pub fn write_registry(&self, rows: RegistryRows) {
        if let Some((tx, _)) = &self.registry {
            tx.send_replace(Some(Arc::new(rows)));
        }
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// The live counters, for an exporter that outlives this handle.
    pub fn metrics_handle(&self) -> Arc<SinkMetrics> {
        self.metrics.clone()
    }

    /// Flushes and stops every sink. ClickHouse batches that cannot be inserted within the grace period stay in
    /// the spool for the next start. Returns the first sink error.
    pub async fn shutdown(self) -> Result<MetricsSnapshot, SinkError> {
        let mut first_err = None;
        let mut tasks = Vec::new();
        for o in self.outputs {
            drop(o.tx);
            tasks.push((o.name, o.task));
        }
        for (name, task) in tasks {
            let r = match task.await {
                Ok(r) => r,
                Err(e) => Err(SinkError::Task {
                    name: name.clone(),
                    message: e.to_string(),
                }),
            };
            if let Err(e) = r {
                tracing::error!(sink = %name, error = %e, "sink failed");
                first_err.get_or_insert(e);
            }
        }
        if let Some((tx, task)) = self.registry {
            drop(tx);
            task.abort();
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(self.metrics.snapshot()),
        }
    }

    /// Stops every sink at once without flushing, as a crash would (what was spooled stays; queued and batched
    /// events are lost). For tests of crash recovery.
    pub fn abort(self) {
        for o in &self.outputs {
            o.task.abort();
        }
        if let Some((_, t)) = &self.registry {
            t.abort();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::event::{KeyState, Timestamp};
    use std::time::Duration;

    fn ndjson_config(path: &std::path::Path) -> SinkConfig {
        SinkConfig {
            sinks: vec![SinkSpec::Ndjson(path.to_path_buf())],
            queue: 1024,
            clickhouse: None,
            apply_schema: None,
        }
    }

    #[tokio::test]
    async fn clickhouse_sink_without_settings_is_a_clear_error() {
        let cfg = SinkConfig {
            sinks: vec![SinkSpec::ClickHouse],
            ..ndjson_config(std::path::Path::new("/unused"))
        };
        let err = build(&cfg).await.err().expect("must fail").to_string();
        assert!(err.contains("--clickhouse-url"), "{err}");
    }

    /// An exchange with the fields the sinks' tests look at.
    pub(crate) fn sample() -> Event {
        Event {
            ts: Timestamp::parse_rfc3339("2026-01-02T12:00:01.123456Z").expect("time"),
            duration_us: 1_234,
            method: "GET".into(),
            host: "example.com".into(),
            path: "/v1/x".into(),
            status: 200,
            resp_bytes: 345,
            client_comm: "curl".into(),
            client_pid: 1234,
            server_comm: "nginx".into(),
            server_pid: 99,
            api_id: "payments".into(),
            app_id: "shop".into(),
            key_suffix: "a1b2".into(),
            key_state: KeyState::Valid,
            ..Event::default()
        }
    }

    #[tokio::test]
    async fn ndjson_sink_writes_one_object_per_line_and_flushes_on_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.ndjson");
        let h = build(&ndjson_config(&path)).await.expect("build");
        for i in 0..3 {
            h.send(Event {
                conn_id: i,
                ..sample()
            });
        }
        let m = h.shutdown().await.expect("shutdown");
        assert_eq!(m.ndjson_lines, 3);
        let text = std::fs::read_to_string(&path).expect("read output");
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let back: Event = serde_json::from_str(lines[2]).expect("line is an Event");
        assert_eq!(
            back,
            Event {
                conn_id: 2,
                ..sample()
            }
        );
    }

    #[tokio::test]
    async fn ndjson_sink_flushes_within_a_second() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("e.ndjson");
        let h = build(&ndjson_config(&path)).await.expect("build");
        h.send(sample());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 1, "line visible before shutdown");
        h.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn ndjson_unwritable_path_is_a_clear_error() {
        let cfg = ndjson_config(std::path::Path::new("/nonexistent-dir/x.ndjson"));
        let err = build(&cfg).await.err().expect("must fail").to_string();
        assert!(
            err.contains("/nonexistent-dir/x.ndjson") && err.contains("NDJSON"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn full_queue_counts_drops_instead_of_blocking() {
        let spares = Arc::new(queue::Spares::default());
        let (tx, _rx) = queue::queue(2, spares.clone());
        let h = SinkHandle {
            outputs: vec![Output {
                name: "test".into(),
                tx,
                task: tokio::spawn(async { Ok(()) }),
            }],
            metrics: Arc::new(SinkMetrics::default()),
            spares,
            registry: None,
        };
        for _ in 0..5 {
            h.send(sample());
        }
        let m = h.metrics();
        assert_eq!((m.events_accepted, m.dropped_queue_full), (2, 3));
        // An empty batch is not queued; its vector is kept for the next one.
        h.send_batch(Vec::with_capacity(10));
        assert_eq!(h.metrics().events_accepted, 2);
        assert!(h.batch().capacity() >= 10);
    }
}
