//! `observer run`: wires loader -> reader -> flow -> enrich -> sinks, registers its metrics, and shuts down cleanly.
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
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};
use tracing::{info, warn};

use crate::{
    cgroups::FsCgroupResolver,
    clock,
    config::{CaptureArgs, SinkArgs},
    enrich, flow, loader,
    metrics::{Counter, FGauge, Gauge, Metrics},
    origin, reader, registry, sink,
};

/// Most records handled per drain before the engine gets a tick (keeps latency bounded under bursts). It also bounds
/// the drain's vectors (exchanges are about 1 KB each): at 65,536 a backlogged ring made batches of up to 32k
/// exchanges, the reused batch vectors grew to tens of MB each, and the allocator returned and re-faulted them as
/// zeroed huge pages. Measured with wrk against loopback nginx on a loaded box (load 14-16, two alternating rounds):
/// agent RSS 139-295 MiB at 65,536 vs 96-104 MiB at 4,096, agent CPU 10.4-12.5 vs 5.0-6.4 us per exchange, and
/// half of the agent's samples had been in the kernel's `clear_page_erms`.
const DRAIN_LIMIT: usize = 4_096;
/// Events gathered from successive drains before they are handed to the sinks (or `--poll-interval` after the last
/// hand-over, whichever comes first). Under load the kernel's fill-level wake-up makes a drain every few ms, a few
/// hundred events each; handed over per drain, every one woke the sink tasks' threads (two context switches, a
/// futex or eventfd write). Live A/B (loopback nginx, wrk -c50, about 65k exchanges/s, ClickHouse sink, 8 alternating
/// runs each): the sink threads' wake-ups fell from about 1,600 to 70 a second and the agent's CPU per event from
/// 1.93 to 1.64 us (paired -0.29 +- 0.04). A batch vector holds at most this plus one drain's events.
const HANDOVER_EVENTS: usize = 2_048;
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
    loader::disable_transparent_huge_pages();
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
    metrics.register_collector(loaded.counters.clone());
    metrics.register_collector(RegistryMetrics(live.clone()));
    let _watcher = live.spawn_watcher(registry::POLL_INTERVAL);
    let pods = crate::kube::start(&args.kube, metrics.clone())
        .await
        .map_err(AgentError::Kube)?;
    let enricher = enrich::Enricher::new(live.clone()).with_pods(pods.clone());
    let sink_cfg = args.sink.sink_config().map_err(AgentError::Sinks)?;
    let sinks = Arc::new(sink::build(&sink_cfg).await.map_err(AgentError::Sinks)?);
    sinks.metrics_handle().register(&metrics);
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
    let insights_out = if args.insights.insights {
        let node = args
            .sink
            .agent_id
            .clone()
            .unwrap_or_else(crate::sink::clickhouse::config::default_agent_id);
        let source = format!("agent:{node}");
        let out = crate::insights::out::Outputs::from_sinks(&sink_cfg, &source)
            .await
            .map_err(AgentError::Sinks)?;
        match &ui {
            Some(store) => out.with_memory(store.clone(), &source),
            None => out,
        }
    } else {
        Default::default()
    };
    let (insights, insights_task) =
        crate::insights::live::start(&args.insights, live.clone(), metrics.clone(), insights_out)
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
        report_started: args.capture.origin,
    };
    let poll = args.capture.poll_interval.max(Duration::from_millis(1));
    let drain_only = args.capture.drain_only;
    if drain_only {
        warn!("--drain-only: data records are dropped unread; no exchange will be reported");
    }
    let engine = flow::Engine::new(flow_cfg, Box::new(resolver));
    engine.counters().register(&metrics);
    let counts = CaptureMetrics::new(&metrics);
    let origin_metrics = origin::OriginMetrics::register(&metrics);
    let capture = {
        let stop = stop.clone();
        let sinks = sinks.clone();
        std::thread::Builder::new()
            .name("observer-capture".into())
            .spawn(move || {
                capture_loop(
                    loaded,
                    engine,
                    enricher,
                    sinks,
                    counts,
                    stop,
                    Reading {
                        poll,
                        drain_only,
                        ui,
                        insights,
                        origin: args
                            .capture
                            .origin
                            .then(|| origin::Tracker::new(origin::OriginConfig::default())),
                        origin_metrics,
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
    /// Decides each event's origin across hops (`--origin`); events leave the loop through it.
    origin: Option<origin::Tracker>,
    /// `observer_origin_*`, brought up to the tracker's counts once a second.
    origin_metrics: origin::OriginMetrics,
}

fn capture_loop(
    mut loaded: loader::Loaded,
    mut engine: flow::Engine,
    enricher: enrich::Enricher,
    sinks: Arc<sink::SinkHandle>,
    counts: CaptureMetrics,
    stop: Arc<AtomicBool>,
    Reading {
        poll,
        drain_only,
        ui,
        insights,
        mut origin,
        origin_metrics,
    }: Reading,
) {
    let mut out = crate::event::Exchanges::default();
    let mut started = Vec::new();
    let mut last_tick = Instant::now();
    // The agent's own exchanges (ClickHouse inserts, /metrics scrapes) are not reported: each insert would be an
    // event that causes the next insert.
    let own_pid = std::process::id();
    let mut pace = reader::Pace::new(poll, IDLE_POLL);
    let mut batch = sinks.batch();
    let mut handed_over = Instant::now();
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        let d = loaded.events.drain(DRAIN_LIMIT, |rec| match rec {
            reader::Record::Data(..) if drain_only => {}
            reader::Record::Data(h, p) => engine.on_data(&h, p),
            reader::Record::Conn(c) => engine.on_conn(&c),
        });
        counts.records.inc_by(d.records);
        counts.ring_bytes.inc_by(d.bytes);
        counts.bad_records.inc_by(d.bad);
        if d.oldest_ts_ns != 0 {
            let lag_ns = clock::monotonic_ns().saturating_sub(d.oldest_ts_ns);
            counts.lag.set(lag_ns as f64 / 1e9);
        }
        if stopping {
            engine.finish();
        }
        let tick = last_tick.elapsed() >= Duration::from_secs(1);
        if tick {
            engine.tick(clock::monotonic_ns());
            counts.pinned.set(crate::shared_str::pinned_bytes() as i64);
        }
        engine.drain(&mut out);
        // Requests in flight first: the exchanges finished in this drain may have been made for them.
        let now = crate::event::Timestamp::now();
        if let Some(origin) = origin.as_mut() {
            engine.drain_started(&mut started);
            for s in started.drain(..) {
                origin.started(&s, now);
            }
        }
        let before = out.len();
        out.retain(|ev| {
            let own = ev.client_pid == own_pid || ev.server_pid == own_pid;
            if let (true, Some(origin)) = (own, origin.as_mut()) {
                origin.forget(ev);
            }
            !own
        });
        counts.own_exchanges.inc_by((before - out.len()) as u64);
        // Enriched where they lie; then the events become the batch as they lie (or go through the origin tracker,
        // which may hold each until its parent is known, with `--origin`): events are large.
        for (ev, req) in out.iter_mut() {
            enricher.enrich(ev, req);
        }
        match origin.as_mut() {
            Some(origin) => {
                for ex in out.drain() {
                    origin.complete(ex, now);
                }
                if tick {
                    origin.tick(now);
                    origin_metrics.update(&origin.stats());
                }
                if stopping {
                    origin.finish();
                }
                origin.drain(&mut batch);
            }
            None => out.move_events_into(&mut batch),
        }
        // One hand-over per [`HANDOVER_EVENTS`] or poll interval: the sink tasks wake once, not once per event or
        // per drain.
        if batch.len() >= HANDOVER_EVENTS || handed_over.elapsed() >= poll || stopping {
            if !batch.is_empty() {
                if let Some(ui) = &ui {
                    ui.ingest(&batch);
                }
                if let Some(feed) = &insights {
                    feed.offer(&batch);
                }
                sinks.send_batch(std::mem::replace(&mut batch, sinks.batch()));
            }
            handed_over = Instant::now();
        }
        if tick {
            last_tick = Instant::now();
        }
        if stopping {
            break;
        }
        if d.records < DRAIN_LIMIT as u64 {
            let wait = pace.after(d.records);
            if loaded.events.wait(wait) {
                counts.early_wakeups.inc();
            }
        }
    }
    let kernel = loaded.counters.read();
    drop(loaded);
    info!(?kernel, "programs detached");
}

/// The capture loop's own series, bumped once per drain.
struct CaptureMetrics {
    records: Counter,
    ring_bytes: Counter,
    bad_records: Counter,
    own_exchanges: Counter,
    early_wakeups: Counter,
    lag: FGauge,
    pinned: Gauge,
}

impl CaptureMetrics {
    fn new(m: &Metrics) -> Self {
        let counter = |name: &str, help: &str| {
            let c = Counter::default();
            m.register(name, help, c.clone());
            c
        };
        let lag = FGauge::default();
        m.register(
            "ringbuf_lag_seconds",
            "Age of the oldest record in the last drain (how far the reader is behind the kernel)",
            lag.clone(),
        );
        let pinned = Gauge::default();
        m.register(
            "pinned_string_bytes",
            &format!(
                "Bytes of strings pinned for the process's life (events copy them without a reference count), at most {}",
                crate::shared_str::PIN_BUDGET
            ),
            pinned.clone(),
        );
        CaptureMetrics {
            records: counter("ringbuf_records", "Ring-buffer records read"),
            ring_bytes: counter(
                "ringbuf_bytes",
                "Ring-buffer bytes read and given back to the kernel (records with their headers and padding)",
            ),
            bad_records: counter(
                "ringbuf_bad_records",
                "Ring-buffer records that could not be decoded",
            ),
            own_exchanges: counter(
                "own_exchanges",
                "The agent's own exchanges (sink inserts, metrics scrapes), not sent to the sinks",
            ),
            early_wakeups: counter(
                "ringbuf_early_wakeups",
                "Waits ended by waiting records rather than the timeout (records already waiting, or the kernel's wake-up once 512 KiB waits)",
            ),
            lag,
            pinned,
        }
    }
}

/// `observer_registry_*`: the live registry's generation and reload counts, read at each scrape.
struct RegistryMetrics(Arc<registry::LiveRegistry>);

impl std::fmt::Debug for RegistryMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegistryMetrics")
    }
}

impl Collector for RegistryMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = self.0.stats();
        let generation = ConstGauge::new(r.generation as i64);
        generation.encode(encoder.encode_descriptor(
            "registry_generation",
            "Registry snapshot in use (0 = loaded at start).",
            None,
            generation.metric_type(),
        )?)?;
        for (name, help, v) in [
            ("registry_reloads", "Registry reloads applied.", r.reloads),
            (
                "registry_reload_failures",
                "Registry edits rejected (last good kept).",
                r.failures,
            ),
        ] {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}
