//! `observer run`: wires loader -> reader -> flow -> enrich -> sinks, publishes metrics, and shuts down cleanly.
//!
//! Capture runs on one dedicated thread (ring-buffer drains, flow engine, enrichment) so the
//! kernel side is never waiting on I/O; sinks and the metrics server run on a small tokio runtime. On SIGINT/SIGTERM or
//! `--for`, the capture thread drains the ring buffer a last time, hands out every request still held, and detaches
//! all programs; then the sinks flush and the process exits 0.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use clap::Args;
use observer_common::COUNTER_NAMES;
use tracing::{info, warn};

use crate::{
    cgroups::FsCgroupResolver,
    clock,
    config::{CaptureArgs, SinkArgs},
    enrich, flow, loader,
    metrics::{Metrics, Sample},
    origin, reader, registry, sink,
};

/// Most records handled per drain before the engine gets a tick (keeps latency bounded under bursts).
const DRAIN_LIMIT: usize = 65_536;
/// The longest wait between drains when nothing flows (see [`reader::Pace`]): bounds how late an event after a quiet
/// spell is seen; the kernel's fill-level wake-up bounds how full the ring gets meanwhile.
const IDLE_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    #[command(flatten)]
    pub registry: registry::RegistryArgs,
    #[command(flatten)]
    pub sink: SinkArgs,
    #[command(flatten)]
    pub ui: crate::ui::UiArgs,
    #[command(flatten)]
    pub kube: crate::kube::KubeArgs,
    #[command(flatten)]
    pub insights: crate::insights::live::LiveArgs,
}

/// Why `observer run` stopped with an error. Each names the step that failed; the cause follows it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("loading the registry: {0}")]
    Registry(registry::RegistryError),
    #[error("opening the sinks: {0}")]
    Sinks(sink::SinkError),
    #[error("binding the metrics server to {addr}: {err}")]
    Metrics {
        addr: std::net::SocketAddr,
        err: std::io::Error,
    },
    #[error("starting pod identity: {0}")]
    Kube(crate::kube::KubeError),
    #[error("finding the cgroup v2 hierarchy: {0}")]
    Cgroup(crate::cgroups::CgroupError),
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    #[error("starting the capture thread: {0}")]
    CaptureThread(std::io::Error),
    #[error("the capture thread panicked")]
    CapturePanicked,
    #[error("sinks still referenced at shutdown")]
    SinksInUse,
    #[error("flushing the sinks: {0}")]
    Flush(sink::SinkError),
    #[error("starting the web UI: {0}")]
    Ui(crate::ui::UiError),
    #[error("starting insights: {0}")]
    Insights(crate::insights::live::LiveError),
}

pub fn run(args: RunArgs) -> Result<(), AgentError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("observer-io")
        .build()
        .map_err(AgentError::Runtime)?;
    rt.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> Result<(), AgentError> {
    let metrics = Arc::new(Metrics::default());
    // Input that needs no kernel is checked first: an invalid registry attaches nothing.
    let live = args.registry.open().map_err(AgentError::Registry)?;
    let opts = loader::LoadOptions {
        cgroup: args.capture.cgroup.clone(),
        ifaces: args.capture.iface.clone(),
        ports: args.capture.ports.0.clone(),
        capture_bytes: args.capture.capture_bytes,
    };
    let resolver = FsCgroupResolver::from_system().map_err(AgentError::Cgroup)?;
    // Programs attach before the sinks open their connections, so sock_ops sees the agent connect and its own
    // exchanges (ClickHouse inserts) are recognised by pid and not reported. A sink that fails to open detaches
    // everything again (dropping `loaded`).
    let loaded = loader::load(&opts)?;
    let _watcher = live.spawn_watcher(registry::POLL_INTERVAL);
    let pods = crate::kube::start(&args.kube, metrics.clone())
        .await
        .map_err(AgentError::Kube)?;
    let enricher = enrich::Enricher::new(live.clone()).with_pods(pods.clone());
    let sink_cfg = args.sink.sink_config().map_err(AgentError::Sinks)?;
    let sinks = Arc::new(sink::build(&sink_cfg).await.map_err(AgentError::Sinks)?);
    let follower = tokio::spawn(follow_registry(live.clone(), sinks.clone()));
    if let Some(addr) = args.capture.metrics {
        let server = crate::metrics::serve(addr, metrics.clone())
            .await
            .map_err(|err| AgentError::Metrics { addr, err })?;
        tokio::spawn(server);
        info!("metrics on http://{addr}/metrics, readiness on http://{addr}/readyz");
    }
    let ui_client = sink_cfg.clickhouse.as_ref().map(|c| c.client());
    let ui = crate::ui::start(&args.ui, ui_client, live.clone())
        .await
        .map_err(AgentError::Ui)?;
    let (insights, insights_task) =
        crate::insights::live::start(&args.insights, live.clone(), metrics.clone())
            .map_err(AgentError::Insights)?
            .unzip();
    crate::kube::ready_when_synced(pods.as_ref(), &metrics);
    info!(programs = loaded.attached.len(), "capturing");

    let stop = Arc::new(AtomicBool::new(false));
    let flow_cfg = flow::FlowConfig {
        mono_to_unix_offset_ns: clock::mono_to_unix_offset_ns(),
        capture_bytes: args.capture.capture_bytes,
        max_connections: args.capture.max_connections,
        max_pending_per_connection: args.capture.max_pending,
        idle_timeout_ns: args.capture.idle_timeout.as_nanos() as u64,
        report_started: true,
    };
    let poll = args.capture.poll_interval.max(Duration::from_millis(1));
    let drain_only = args.capture.drain_only;
    if drain_only {
        warn!("--drain-only: data records are dropped unread; no exchange will be reported");
    }
    let capture = {
        let stop = stop.clone();
        let metrics = metrics.clone();
        let sinks = sinks.clone();
        std::thread::Builder::new()
            .name("observer-capture".into())
            .spawn(move || {
                capture_loop(
                    loaded,
                    flow::Engine::new(flow_cfg, Box::new(resolver)),
                    enricher,
                    sinks,
                    metrics,
                    stop,
                    Reading {
                        poll,
                        drain_only,
                        ui,
                        insights,
                        origin: origin::Tracker::new(origin::OriginConfig::default()),
                    },
                )
            })
            .map_err(AgentError::CaptureThread)?
    };

    wait_for_stop(args.capture.run_for).await;
    info!("stopping: draining, detaching, flushing");
    stop.store(true, Ordering::SeqCst);
    let joined = tokio::task::spawn_blocking(move || capture.join()).await;
    metrics.set_ready(false);
    if !matches!(joined, Ok(Ok(()))) {
        return Err(AgentError::CapturePanicked);
    }
    // The capture thread dropped its insights feed: the engine judges what is queued and saves its baselines.
    if let Some(task) = insights_task {
        let _ = task.await;
    }
    // The capture thread and the registry follower held the other references.
    follower.abort();
    let _ = follower.await;
    let sinks = Arc::try_unwrap(sinks).map_err(|_| AgentError::SinksInUse)?;
    let stats = sinks.shutdown().await.map_err(AgentError::Flush)?;
    info!(
        rows_sent = stats.rows_sent,
        dropped = stats.dropped_total(),
        "stopped"
    );
    Ok(())
}

/// Writes the registry's state to the sinks that keep it (ClickHouse registry tables) at start and on every reload,
/// with `deleted` rows for ids that disappeared.
async fn follow_registry(live: Arc<registry::LiveRegistry>, sinks: Arc<sink::SinkHandle>) {
    let mut rx = live.subscribe();
    let mut prev = sink::clickhouse::registry_rows::RegistryRows::default();
    loop {
        let snap = rx.borrow_and_update().clone();
        let version = snap.loaded_at.0.max(0) as u64;
        let rows =
            sink::clickhouse::registry_rows::from_registry(&snap.registry, version, snap.loaded_at);
        let out = sink::clickhouse::registry_rows::with_deletions(
            &prev,
            rows.clone(),
            version,
            snap.loaded_at,
        );
        if !out.is_empty() {
            sinks.write_registry(out);
        }
        prev = rows;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn wait_for_stop(run_for: Option<Duration>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    let timer = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
        _ = term.recv() => info!("SIGTERM"),
        _ = timer => info!("--for elapsed"),
    }
}

/// How the capture loop reads the ring buffer.
struct Reading {
    /// Longest wait between drains while records flow (`--poll-interval`).
    poll: Duration,
    /// Drop data records unread (`--drain-only`, benchmarking).
    drain_only: bool,
    /// The web UI's recent aggregates, when it has no ClickHouse to read.
    ui: Option<Arc<crate::ui::memory::MemoryStore>>,
    /// The insights engine's queue (`--insights`).
    insights: Option<crate::insights::live::Feed>,
    /// Decides each event's origin across hops; events leave the loop through it.
    origin: origin::Tracker,
}

fn capture_loop(
    mut loaded: loader::Loaded,
    mut engine: flow::Engine,
    enricher: enrich::Enricher,
    sinks: Arc<sink::SinkHandle>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    Reading {
        poll,
        drain_only,
        ui,
        insights,
        mut origin,
    }: Reading,
) {
    let mut out = Vec::new();
    let mut started = Vec::new();
    let mut events = Vec::new();
    let mut last_tick = Instant::now();
    let mut counts = Counts::default();
    // The agent's own exchanges (ClickHouse inserts, /metrics scrapes) are not reported: each insert would be an
    // event that causes the next insert.
    let own_pid = std::process::id();
    let mut pace = reader::Pace::new(poll, IDLE_POLL);
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let d = loaded.events.drain(DRAIN_LIMIT, |rec| match rec {
            reader::Record::Data(..) if drain_only => {}
            reader::Record::Data(h, p) => engine.on_data(&h, p),
            reader::Record::Conn(c) => engine.on_conn(&c),
        });
        counts.records += d.records;
        counts.ring_bytes += d.bytes;
        counts.bad_records += d.bad;
        if d.oldest_ts_ns != 0 {
            counts.lag_ns = clock::monotonic_ns().saturating_sub(d.oldest_ts_ns);
        }
        if stopping {
            engine.finish();
        }
        let tick = last_tick.elapsed() >= Duration::from_secs(1);
        if tick {
            engine.tick(clock::monotonic_ns());
        }
        engine.drain(&mut out);
        // Requests in flight first: the exchanges finished in this drain may have been made for them.
        let now = crate::event::Timestamp::now();
        engine.drain_started(&mut started);
        for s in started.drain(..) {
            origin.started(&s, now);
        }
        out.retain(|ex| {
            let own = ex.event.client_pid == own_pid || ex.event.server_pid == own_pid;
            counts.own_exchanges += u64::from(own);
            if own {
                origin.forget(&ex.event);
            }
            !own
        });
        // Enriched where they lie, then each event is moved once, into the origin tracker (which may hold it until
        // its parent is known) and from there into the batch: exchanges are large.
        for ex in &mut out {
            enricher.enrich(ex);
        }
        for ex in out.drain(..) {
            origin.complete(ex, now);
        }
        if tick {
            origin.tick(now);
        }
        if stopping {
            origin.finish();
        }
        origin.drain(&mut events);
        let mut batch = sinks.batch();
        batch.append(&mut events);
        if let Some(ui) = &ui {
            ui.ingest(&batch);
        }
        if let Some(feed) = &insights {
            feed.offer(&batch);
        }
        // One hand-over per drain: the sink tasks wake once, not once per event.
        sinks.send_batch(batch);
        if tick || stopping {
            last_tick = Instant::now();
            publish(&metrics, &loaded, &engine, &enricher, &sinks, &counts);
            publish_origin(&metrics, &origin.stats());
        }
        if stopping {
            break;
        }
        if d.records < DRAIN_LIMIT as u64 {
            let wait = pace.after(d.records);
            if loaded.events.wait(wait) {
                counts.early_wakeups += 1;
            }
        }
    }
    let kernel = loader::read_counters(&loaded.counters);
    drop(loaded);
    info!(?kernel, "programs detached");
}

/// The capture loop's own counters, for [`publish`].
#[derive(Debug, Default)]
struct Counts {
    records: u64,
    ring_bytes: u64,
    bad_records: u64,
    own_exchanges: u64,
    lag_ns: u64,
    early_wakeups: u64,
}

fn publish(
    metrics: &Metrics,
    loaded: &loader::Loaded,
    engine: &flow::Engine,
    enricher: &enrich::Enricher,
    sinks: &sink::SinkHandle,
    counts: &Counts,
) {
    let kernel = loader::read_counters(&loaded.counters);
    let mut k = Vec::with_capacity(kernel.len() + 3);
    for (name, v) in COUNTER_NAMES.iter().zip(kernel) {
        k.push(Sample::counter(
            format!("kernel_{name}_total"),
            "Kernel-side counter (summed over CPUs)",
            v,
        ));
    }
    k.push(Sample::counter(
        "ringbuf_records_total",
        "Ring-buffer records read",
        counts.records,
    ));
    k.push(Sample::counter(
        "ringbuf_bytes_total",
        "Ring-buffer bytes read and given back to the kernel (records with their headers and padding)",
        counts.ring_bytes,
    ));
    k.push(Sample::counter(
        "ringbuf_bad_records_total",
        "Ring-buffer records that could not be decoded",
        counts.bad_records,
    ));
    k.push(Sample::counter(
        "ringbuf_early_wakeups_total",
        "Waits ended by waiting records rather than the timeout (records already waiting, or the kernel's wake-up once 256 KiB wait)",
        counts.early_wakeups,
    ));
    k.push(Sample::gauge(
        "ringbuf_lag_seconds",
        "Age of the oldest record in the last drain (how far the reader is behind the kernel)",
        counts.lag_ns as f64 / 1e9,
    ));
    metrics.publish("kernel", k);

    let s = engine.stats();
    let c = |name: &str, help: &'static str, v: u64| Sample::counter(name.to_string(), help, v);
    metrics.publish(
        "flow",
        vec![
            c("exchanges_total", "HTTP exchanges reported", s.exchanges),
            c(
                "own_exchanges_total",
                "The agent's own exchanges (sink inserts, metrics scrapes), not sent to the sinks",
                counts.own_exchanges,
            ),
            c(
                "flow_malformed_total",
                "Heads or records that could not be parsed",
                s.malformed,
            ),
            c(
                "flow_duplicates_total",
                "Segments seen by both local ends, merged",
                s.duplicates,
            ),
            c(
                "flow_retransmits_total",
                "Retransmitted segments dropped",
                s.retransmits,
            ),
            c(
                "flow_out_of_order_total",
                "Records out of order or continuing an unseen start",
                s.out_of_order,
            ),
            c(
                "flow_gaps_total",
                "Captured bytes or messages known to be missing",
                s.gaps,
            ),
            c(
                "flow_misframed_total",
                "Message starts inside a delimited body, ignored",
                s.misframed,
            ),
            c(
                "flow_truncated_heads_total",
                "Heads longer than the capture",
                s.truncated_heads,
            ),
            c(
                "flow_unmatched_responses_total",
                "Responses without a request",
                s.unmatched_responses,
            ),
            c(
                "flow_no_response_total",
                "Requests reported without a response",
                s.no_response,
            ),
            c(
                "flow_timed_out_total",
                "Exchanges reported by the idle timeout",
                s.timed_out,
            ),
            c(
                "flow_evicted_total",
                "Table evictions",
                s.evicted_connections,
            )
            .label("table", "connections"),
            c("flow_evicted_total", "Table evictions", s.evicted_pending)
                .label("table", "pending_requests"),
            c("flow_evicted_total", "Table evictions", s.evicted_sockets).label("table", "sockets"),
            Sample::gauge(
                "flow_table_size",
                "Entries in the engine's tables",
                s.connections as f64,
            )
            .label("table", "connections"),
            Sample::gauge(
                "flow_table_size",
                "Entries in the engine's tables",
                s.pending_requests as f64,
            )
            .label("table", "pending_requests"),
            Sample::gauge(
                "flow_table_size",
                "Entries in the engine's tables",
                s.sockets as f64,
            )
            .label("table", "sockets"),
        ]
        .into_iter()
        .chain(
            crate::http::Anomalies::ALL
                .iter()
                .zip(s.framing_anomalies)
                .map(|((_, reason), n)| {
                    c(
                        "flow_framing_anomalies_total",
                        "Messages whose framing another reader may take differently (smuggling), per reason",
                        n,
                    )
                    .label("reason", *reason)
                }),
        )
        .collect(),
    );
    let r = enricher.live().stats();
    metrics.publish(
        "registry",
        vec![
            Sample::gauge(
                "registry_generation",
                "Registry snapshot in use (0 = loaded at start)",
                r.generation as f64,
            ),
            Sample::counter(
                "registry_reloads_total",
                "Registry reloads applied",
                r.reloads,
            ),
            Sample::counter(
                "registry_reload_failures_total",
                "Registry edits rejected (last good kept)",
                r.failures,
            ),
        ],
    );
    metrics.publish_text("sink", sinks.metrics().to_prometheus());
}

fn publish_origin(metrics: &Metrics, s: &origin::OriginStats) {
    let decided = "Exchanges whose origin was decided, per way (origin_by)";
    let evicted = "Origin tracker table evictions";
    let size = "Entries in the origin tracker's tables";
    metrics.publish(
        "origin",
        crate::event::OriginBy::ALL
            .iter()
            .zip(s.decided)
            .map(|(by, n)| Sample::counter("origin_decided_total", decided, n).label("by", by.as_str()))
            .chain([
                Sample::counter(
                    "origin_undecided_total",
                    "Exchanges released with origin_by none because their parent was not known in time or room",
                    s.undecided,
                ),
                Sample::counter("origin_evicted_total", evicted, s.evicted_requests).label("reason", "full"),
                Sample::counter("origin_evicted_total", evicted, s.expired_requests).label("reason", "expired"),
                Sample::gauge("origin_table_size", size, s.requests as f64).label("table", "requests"),
                Sample::gauge("origin_table_size", size, s.held as f64).label("table", "held"),
            ])
            .collect(),
    );
}
