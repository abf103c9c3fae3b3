//! Where events go: NDJSON files, a readable stdout view, and ClickHouse (batched, spooled, deduplicated).
//!
//! The run loop builds a [`SinkHandle`] from [`SinkArgs`] with [`build`], hands it each drain's [`Event`]s with
//! [`SinkHandle::send_batch`] (never blocks: each sink has a queue bounded in events, what does not fit is counted
//! as a drop; see [`queue`]), and at exit
//! calls [`SinkHandle::shutdown`], which flushes every sink (ClickHouse batches that cannot be inserted go to the
//! spool, replayed by the next start). [`SinkHandle::metrics`] returns counters for export.
// The run loop (owned elsewhere) is the main user of this API; until it is wired, parts are used only by tests.
#![allow(dead_code)]
pub mod clickhouse;
pub mod ndjson;
pub mod queue;

use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::event::{Event, KeyState, Side};
use clickhouse::registry_rows::RegistryRows;
pub use clickhouse::schema::{Retention, SchemaCommand};
pub use clickhouse::ClickHouseConfig;
use clickhouse::{schema, spool};
use queue::{QueueRx, QueueTx};

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

/// Parses `1GiB`, `512MiB`, `64KiB`, `1G`, `1000000`, `10MB`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 1GiB, 512MiB, 1000000"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "invalid size unit in {s:?}: use B, KiB, MiB, GiB, TiB, KB, MB or GB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Parses `1s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 1s, 500ms, 2m"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
    })
}

/// Sink options of `observer run`.
#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Where events go: stdout, clickhouse, ndjson:PATH. Repeat or separate with commas for several.
    #[arg(long = "sink", value_delimiter = ',', default_value = "stdout", value_parser = |s: &str| s.parse::<SinkSpec>().map_err(|e| e.to_string()))]
    pub sinks: Vec<SinkSpec>,
    /// Events queued per sink before new ones are dropped (counted) instead of slowing capture.
    #[arg(long, default_value_t = 65_536)]
    pub sink_queue: usize,
    /// ClickHouse HTTP(S) URL, e.g. http://127.0.0.1:8123.
    #[arg(long, env = "CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse database holding observer's tables.
    #[arg(long, default_value = "observer")]
    pub clickhouse_database: String,
    /// ClickHouse user.
    #[arg(long, env = "CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,
    /// File holding the ClickHouse password.
    #[arg(long)]
    pub clickhouse_password_file: Option<PathBuf>,
    /// Apply the schema (idempotent migrations) at start.
    #[arg(long)]
    pub clickhouse_apply_schema: bool,
    /// Raw event retention used when applying the schema.
    #[arg(long, default_value = "30d")]
    pub retention: Retention,
    /// Insert a batch at this many rows...
    #[arg(long, default_value_t = 100_000)]
    pub batch_rows: usize,
    /// ...or this many bytes...
    #[arg(long, default_value = "32MiB", value_parser = parse_bytes)]
    pub batch_max_bytes: u64,
    /// ...or this long after its first row.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub batch_interval: Duration,
    /// Timeout of one ClickHouse insert.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub clickhouse_timeout: Duration,
    /// Directory for batches ClickHouse could not take yet (replayed in order, also after a restart).
    #[arg(long, default_value = "/var/lib/observer/spool")]
    pub spool_dir: PathBuf,
    /// Spool size bound; past it new batches are dropped and counted.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub spool_max_bytes: u64,
    /// This agent's id in insert deduplication tokens (default: host name).
    #[arg(long, env = "OBSERVER_AGENT_ID")]
    pub agent_id: Option<String>,
}

impl SinkArgs {
    /// The ClickHouse sink's configuration (also when `--sink clickhouse` is not selected).
    pub fn clickhouse_config(&self) -> Result<ClickHouseConfig, SinkError> {
        let url = self
            .clickhouse_url
            .as_deref()
            .ok_or(SinkError::MissingClickHouseUrl)?;
        let mut c = ClickHouseConfig::new(url, self.spool_dir.clone());
        c.database = self.clickhouse_database.clone();
        c.user = self.clickhouse_user.clone();
        if let Some(p) = &self.clickhouse_password_file {
            c.password = Some(schema::read_password(p)?);
        }
        if let Some(a) = &self.agent_id {
            c.agent_id = a.clone();
        }
        c.batch_rows = self.batch_rows.max(1);
        c.batch_max_bytes = usize::try_from(self.batch_max_bytes).unwrap_or(usize::MAX);
        c.batch_interval = self.batch_interval;
        c.insert_timeout = self.clickhouse_timeout;
        c.spool_max_bytes = self.spool_max_bytes;
        Ok(c)
    }
}

/// Latency histogram with fixed buckets (seconds, Prometheus style).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; HISTOGRAM_BOUNDS_MS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// Upper bounds of the insert latency buckets, in milliseconds.
pub const HISTOGRAM_BOUNDS_MS: [u64; 14] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        for (i, b) in HISTOGRAM_BOUNDS_MS.iter().enumerate() {
            if us <= b * 1000 {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            count: self.count.load(Relaxed),
            sum_us: self.sum_us.load(Relaxed),
            cumulative: HISTOGRAM_BOUNDS_MS
                .iter()
                .zip(&self.buckets)
                .map(|(b, c)| (*b, c.load(Relaxed)))
                .collect(),
        }
    }
}

/// Histogram values: `cumulative` holds (upper bound ms, observations <= bound).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum_us: u64,
    pub cumulative: Vec<(u64, u64)>,
}

/// Live counters shared by the sinks.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub events_accepted: AtomicU64,
    pub rows_sent: AtomicU64,
    pub batches_sent: AtomicU64,
    pub insert_errors: AtomicU64,
    pub insert_latency: Histogram,
    pub spool_bytes: AtomicU64,
    pub spool_batches: AtomicU64,
    pub spooled_batches: AtomicU64,
    pub spooled_rows: AtomicU64,
    pub replayed_batches: AtomicU64,
    pub replayed_rows: AtomicU64,
    pub quarantined_files: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_spool_full: AtomicU64,
    pub dropped_spool_error: AtomicU64,
    pub dropped_write_error: AtomicU64,
    pub ndjson_lines: AtomicU64,
    pub stdout_lines: AtomicU64,
    pub registry_writes: AtomicU64,
    pub registry_errors: AtomicU64,
}

/// A copy of [`SinkMetrics`] at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// Events handed to [`SinkHandle::send`] and queued (per sink).
    pub events_accepted: u64,
    /// Rows acknowledged by ClickHouse (including replayed ones).
    pub rows_sent: u64,
    pub batches_sent: u64,
    pub insert_errors: u64,
    pub insert_latency: HistogramSnapshot,
    /// Current spool size.
    pub spool_bytes: u64,
    pub spool_batches: u64,
    /// Batches / rows written to the spool since start.
    pub spooled_batches: u64,
    pub spooled_rows: u64,
    /// Batches / rows inserted from the spool since start.
    pub replayed_batches: u64,
    pub replayed_rows: u64,
    pub quarantined_files: u64,
    pub dropped_queue_full: u64,
    pub dropped_spool_full: u64,
    pub dropped_spool_error: u64,
    pub dropped_write_error: u64,
    pub ndjson_lines: u64,
    pub stdout_lines: u64,
    pub registry_writes: u64,
    pub registry_errors: u64,
}

impl MetricsSnapshot {
    pub fn dropped_total(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_spool_full
            + self.dropped_spool_error
            + self.dropped_write_error
    }

    /// Prometheus text exposition.
    pub fn to_prometheus(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let mut c = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(o, "# HELP observer_sink_{name} {help}\n# TYPE observer_sink_{name} {kind}\nobserver_sink_{name} {v}");
        };
        c(
            "events_accepted_total",
            "Events queued to sinks.",
            "counter",
            self.events_accepted,
        );
        c(
            "rows_sent_total",
            "Rows acknowledged by ClickHouse.",
            "counter",
            self.rows_sent,
        );
        c(
            "batches_sent_total",
            "Batches acknowledged by ClickHouse.",
            "counter",
            self.batches_sent,
        );
        c(
            "insert_errors_total",
            "Failed ClickHouse inserts.",
            "counter",
            self.insert_errors,
        );
        c(
            "spool_bytes",
            "Bytes in the spool.",
            "gauge",
            self.spool_bytes,
        );
        c(
            "spool_batches",
            "Batches in the spool.",
            "gauge",
            self.spool_batches,
        );
        c(
            "spooled_rows_total",
            "Rows written to the spool.",
            "counter",
            self.spooled_rows,
        );
        c(
            "replayed_batches_total",
            "Spooled batches inserted.",
            "counter",
            self.replayed_batches,
        );
        c(
            "replayed_rows_total",
            "Spooled rows inserted.",
            "counter",
            self.replayed_rows,
        );
        c(
            "quarantined_files_total",
            "Corrupted spool files quarantined.",
            "counter",
            self.quarantined_files,
        );
        c(
            "ndjson_lines_total",
            "Lines written by NDJSON sinks.",
            "counter",
            self.ndjson_lines,
        );
        c(
            "registry_writes_total",
            "Registry states written to ClickHouse.",
            "counter",
            self.registry_writes,
        );
        let _ = writeln!(o, "# HELP observer_sink_dropped_total Events dropped, by reason.\n# TYPE observer_sink_dropped_total counter");
        for (reason, v) in [
            ("queue_full", self.dropped_queue_full),
            ("spool_full", self.dropped_spool_full),
            ("spool_error", self.dropped_spool_error),
            ("write_error", self.dropped_write_error),
        ] {
            let _ = writeln!(o, "observer_sink_dropped_total{{reason=\"{reason}\"}} {v}");
        }
        let h = &self.insert_latency;
        let _ = writeln!(o, "# HELP observer_sink_insert_seconds ClickHouse insert latency.\n# TYPE observer_sink_insert_seconds histogram");
        for (le_ms, n) in &h.cumulative {
            let _ = writeln!(
                o,
                "observer_sink_insert_seconds_bucket{{le=\"{}\"}} {n}",
                *le_ms as f64 / 1000.0
            );
        }
        let _ = writeln!(
            o,
            "observer_sink_insert_seconds_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            o,
            "observer_sink_insert_seconds_sum {}",
            h.sum_us as f64 / 1e6
        );
        let _ = writeln!(o, "observer_sink_insert_seconds_count {}", h.count);
        o
    }
}

impl SinkMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            events_accepted: self.events_accepted.load(Relaxed),
            rows_sent: self.rows_sent.load(Relaxed),
            batches_sent: self.batches_sent.load(Relaxed),
            insert_errors: self.insert_errors.load(Relaxed),
            insert_latency: self.insert_latency.snapshot(),
            spool_bytes: self.spool_bytes.load(Relaxed),
            spool_batches: self.spool_batches.load(Relaxed),
            spooled_batches: self.spooled_batches.load(Relaxed),
            spooled_rows: self.spooled_rows.load(Relaxed),
            replayed_batches: self.replayed_batches.load(Relaxed),
            replayed_rows: self.replayed_rows.load(Relaxed),
            quarantined_files: self.quarantined_files.load(Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Relaxed),
            dropped_spool_full: self.dropped_spool_full.load(Relaxed),
            dropped_spool_error: self.dropped_spool_error.load(Relaxed),
            dropped_write_error: self.dropped_write_error.load(Relaxed),
            ndjson_lines: self.ndjson_lines.load(Relaxed),
            stdout_lines: self.stdout_lines.load(Relaxed),
            registry_writes: self.registry_writes.load(Relaxed),
            registry_errors: self.registry_errors.load(Relaxed),
        }
    }
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

/// Starts the sinks named in `args`. Fails when a sink cannot start (unwritable NDJSON path, unusable spool
/// directory, missing ClickHouse URL, schema apply failure); an unreachable ClickHouse is not an error (spooled).
pub async fn build(args: &SinkArgs) -> Result<SinkHandle, SinkError> {
    let metrics = Arc::new(SinkMetrics::default());
    let mut outputs = Vec::new();
    let mut registry = None;
    let queue = args.sink_queue.max(1);
    let spares = Arc::new(queue::Spares::default());
    for spec in &args.sinks {
        let (tx, rx) = queue::queue(queue, spares.clone());
        let (name, task) = match spec {
            SinkSpec::Stdout => (
                "stdout".to_string(),
                tokio::spawn(run_stdout(rx, tokio::io::stdout(), metrics.clone())),
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
                    tokio::task::spawn_blocking(move || run_ndjson(rx, file, path, m)),
                )
            }
            SinkSpec::ClickHouse => {
                let cfg = args.clickhouse_config()?;
                if args.clickhouse_apply_schema {
                    let scfg = schema::SchemaConfig::new(&cfg.database, None, args.retention)?;
                    let report = schema::apply(&cfg.client(), &cfg.url, &scfg, None).await?;
                    tracing::info!("{report}");
                }
                if registry.is_none() {
                    let (wtx, wrx) = watch::channel(None);
                    let t = tokio::spawn(clickhouse::registry_task(
                        cfg.client(),
                        wrx,
                        metrics.clone(),
                        cfg.backoff_min,
                        cfg.backoff_max,
                    ));
                    registry = Some((wtx, t));
                }
                let fut = clickhouse::start(cfg, metrics.clone(), rx).await?;
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
            self.metrics.events_accepted.fetch_add(sent, Relaxed);
            match refused {
                None => {}
                Some(queue::Refused::Full) => {
                    let before = self
                        .metrics
                        .dropped_queue_full
                        .fetch_add(want - sent, Relaxed);
                    // Warn at each power of two crossed, so a long overload logs a handful of lines.
                    if (before + want - sent).ilog2() != before.checked_ilog2().unwrap_or(u32::MAX)
                    {
                        tracing::warn!(sink = %o.name, dropped = before + want - sent, "sink queue full: dropping events");
                    }
                }
                Some(queue::Refused::Closed) => {
                    self.metrics
                        .dropped_write_error
                        .fetch_add(want - sent, Relaxed);
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

/// The NDJSON file sink, on a thread of its own: each batch is encoded and written with one `write(2)`, so lines
/// reach the file as soon as their drain was processed and nothing waits in a buffer for a flush. Plain blocking
/// writes, not tokio's file type: that one copies every write into its own buffer and hands it to yet another
/// thread, a second hand-over per batch.
fn run_ndjson(
    mut rx: QueueRx,
    mut file: std::fs::File,
    path: PathBuf,
    metrics: Arc<SinkMetrics>,
) -> Result<(), SinkError> {
    use std::io::Write;
    let werr = |source| SinkError::NdjsonWrite {
        path: path.clone(),
        source,
    };
    let mut line = Vec::with_capacity(256 * 1024);
    while let Some(batch) = rx.blocking_recv() {
        line.clear();
        for ev in &batch {
            ndjson::write_event(ev, &mut line);
            line.push(b'\n');
        }
        if let Err(e) = file.write_all(&line) {
            metrics
                .dropped_write_error
                .fetch_add(batch.len() as u64, Relaxed);
            return Err(werr(e));
        }
        metrics.ndjson_lines.fetch_add(batch.len() as u64, Relaxed);
        rx.recycle(batch);
    }
    file.sync_data().map_err(werr)?;
    Ok(())
}

async fn run_stdout<W: AsyncWrite + Unpin>(
    mut rx: QueueRx,
    out: W,
    metrics: Arc<SinkMetrics>,
) -> Result<(), SinkError> {
    let mut w = BufWriter::new(out);
    let mut text = String::new();
    while let Some(batch) = rx.recv().await {
        text.clear();
        for ev in &batch {
            text.push_str(&format_line(ev));
            text.push('\n');
        }
        let written = w.write_all(text.as_bytes()).await.is_ok();
        let counter = if written {
            &metrics.stdout_lines
        } else {
            &metrics.dropped_write_error
        };
        counter.fetch_add(batch.len() as u64, Relaxed);
        rx.recycle(batch);
        if written && rx.is_empty() {
            let _ = w.flush().await;
        }
    }
    let _ = w.flush().await;
    Ok(())
}

fn human_bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n}B"),
        10_000..=9_999_999 => format!("{:.1}KB", n as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1}MB", n as f64 / 1e6),
        _ => format!("{:.1}GB", n as f64 / 1e9),
    }
}

fn human_duration(us: u64) -> String {
    match us {
        0..=999 => format!("{us}us"),
        1_000..=999_999 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

fn proc_label(comm: &str, pid: u32) -> String {
    match (comm.is_empty(), pid) {
        (true, 0) => "?".to_string(),
        (true, p) => format!("({p})"),
        (false, 0) => comm.to_string(),
        (false, p) => format!("{comm}({p})"),
    }
}

/// One human-readable line per exchange:
/// `12:00:01.123456 GET example.com/v1/x -> 200 1.2ms 345B curl(1234) -> nginx(99) api=... app=... key=...`.
pub fn format_line(e: &Event) -> String {
    let ts = e.ts.to_rfc3339();
    let time = ts.get(11..26).unwrap_or(&ts);
    let status = if e.status == 0 {
        "---".to_string()
    } else {
        e.status.to_string()
    };
    let client = if e.client_pid == 0 && e.client_comm.is_empty() {
        format!("{}:{}", e.src_ip, e.src_port)
    } else {
        proc_label(&e.client_comm, e.client_pid)
    };
    let server = if e.server_pid == 0 && e.server_comm.is_empty() {
        format!("{}:{}", e.dst_ip, e.dst_port)
    } else {
        proc_label(&e.server_comm, e.server_pid)
    };
    let target = if e.host.is_empty() && e.path.is_empty() {
        "-".to_string()
    } else {
        format!("{}{}", e.host, e.path)
    };
    let mut line = format!(
        "{time} {method} {target} -> {status} {dur} {bytes} {client} -> {server}",
        method = if e.method.is_empty() { "?" } else { &e.method },
        dur = human_duration(e.duration_us),
        bytes = human_bytes(e.resp_bytes),
    );
    if e.side != Side::Client {
        line.push_str(&format!(" side={}", e.side.as_str()));
    }
    for (k, v) in [("api", &e.api_id), ("route", &e.route), ("app", &e.app_id)] {
        if !v.is_empty() {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    if e.key_state != KeyState::None {
        let suffix = if e.key_suffix.is_empty() {
            "?"
        } else {
            &e.key_suffix
        };
        line.push_str(&format!(" key=…{suffix}:{}", e.key_state.as_str()));
    }
    if e.truncated {
        line.push_str(" truncated");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Timestamp;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sink: SinkArgs,
    }

    #[test]
    fn sink_specs_parse_as_list_and_repeated() {
        let cli = Cli::try_parse_from([
            "x",
            "--sink",
            "stdout,ndjson:/tmp/a.json",
            "--sink",
            "clickhouse",
            "--clickhouse-url",
            "http://h:8123",
        ])
        .expect("parses");
        assert_eq!(
            cli.sink.sinks,
            vec![
                SinkSpec::Stdout,
                SinkSpec::Ndjson("/tmp/a.json".into()),
                SinkSpec::ClickHouse
            ]
        );
        let err = Cli::try_parse_from(["x", "--sink", "kafka"])
            .err()
            .expect("kafka is rejected")
            .to_string();
        assert!(
            err.contains("expected stdout, clickhouse or ndjson:PATH"),
            "{err}"
        );
    }

    #[test]
    fn defaults_follow_clickhouse_guidance() {
        let cli = Cli::try_parse_from(["x", "--clickhouse-url", "http://h:8123"]).expect("parses");
        let c = cli.sink.clickhouse_config().expect("config");
        assert_eq!(c.batch_rows, 100_000);
        assert_eq!(c.batch_interval, Duration::from_secs(1));
        assert_eq!(c.spool_max_bytes, 1 << 30);
        assert_eq!(c.database, "observer");
        assert_eq!(cli.sink.sinks, vec![SinkSpec::Stdout]);
    }

    #[test]
    fn missing_password_file_names_the_file() {
        let cli = Cli::try_parse_from([
            "x",
            "--clickhouse-url",
            "http://h",
            "--clickhouse-password-file",
            "/nonexistent/pw",
        ])
        .expect("parses");
        let err = cli.sink.clickhouse_config().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/pw"), "{err}");
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert_eq!(parse_bytes("123"), Ok(123));
        assert!(parse_bytes("1XB").is_err());
        assert!(parse_bytes("GiB").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
    }

    fn sample() -> Event {
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

    #[test]
    fn stdout_line_is_readable() {
        assert_eq!(
            format_line(&sample()),
            "12:00:01.123456 GET example.com/v1/x -> 200 1.2ms 345B curl(1234) -> nginx(99) api=payments app=shop key=…a1b2:valid"
        );
        let remote = Event {
            src_ip: "10.0.0.1".parse().expect("ip"),
            src_port: 5555,
            status: 0,
            side: Side::Server,
            server_comm: "app".into(),
            ..Event::default()
        };
        assert_eq!(
            format_line(&remote),
            "00:00:00.000000 ? - -> --- 0us 0B 10.0.0.1:5555 -> app side=server"
        );
    }

    #[tokio::test]
    async fn ndjson_sink_writes_one_object_per_line_and_flushes_on_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.ndjson");
        let args = Cli::try_parse_from(["x", "--sink", &format!("ndjson:{}", path.display())])
            .expect("parses")
            .sink;
        let h = build(&args).await.expect("build");
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
        let args = Cli::try_parse_from(["x", "--sink", &format!("ndjson:{}", path.display())])
            .expect("parses")
            .sink;
        let h = build(&args).await.expect("build");
        h.send(sample());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 1, "line visible before shutdown");
        h.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn ndjson_unwritable_path_is_a_clear_error() {
        let args = Cli::try_parse_from(["x", "--sink", "ndjson:/nonexistent-dir/x.ndjson"])
            .expect("parses")
            .sink;
        let err = build(&args).await.err().expect("must fail").to_string();
        assert!(
            err.contains("/nonexistent-dir/x.ndjson") && err.contains("NDJSON"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn clickhouse_sink_requires_url() {
        let args = Cli::try_parse_from(["x", "--sink", "clickhouse"])
            .expect("parses")
            .sink;
        if args.clickhouse_url.is_some() {
            return; // CLICKHOUSE_URL set in the environment
        }
        let err = build(&args).await.err().expect("must fail").to_string();
        assert!(err.contains("--clickhouse-url"), "{err}");
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
        assert!(m
            .to_prometheus()
            .contains("observer_sink_dropped_total{reason=\"queue_full\"} 3"));
        // An empty batch is not queued; its vector is kept for the next one.
        h.send_batch(Vec::with_capacity(10));
        assert_eq!(h.metrics().events_accepted, 2);
        assert!(h.batch().capacity() >= 10);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], (1, 1));
        assert_eq!(s.cumulative[4], (25, 2));
        assert_eq!(s.cumulative.last().copied(), Some((30_000, 2)));
    }
}
