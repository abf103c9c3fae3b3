//! The agent's own insights (`observer run --insights`): the capture thread offers each batch of events to a bounded
//! queue without ever waiting (a full queue drops the batch and counts it), and one task runs the engine on them,
//! logs, counts and stores every finding version ([`super::out`]: ClickHouse `insights`, `findings.ndjson`), follows
//! registry reloads and keeps the baselines in `--state-dir`.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::config::ConfigError;
use super::finding::{Finding, Kind, Status};
use super::out::Outputs;
use super::state::StateError;
use super::{Config, Engine, Input};
use crate::courtesy::Courtesy;
use crate::event::{Event, Timestamp};
use crate::metrics::{Counter, Family, Gauge, Labels, Metrics};
use crate::registry::LiveRegistry;

/// Batches (one per capture drain) waiting for the engine before new ones are dropped.
pub const QUEUE_BATCHES: usize = 256;
/// Events the engine takes between two chances to give the core back ([`Courtesy`]): about 0.3 ms of detectors.
/// A hand-over (up to 2,048 events) taken whole was a burst of about 2.5 ms.
const INGEST_EVENTS: usize = 256;
/// How often the baselines are saved while running (they are saved at exit too).
pub const SAVE_EVERY_US: i64 = 5 * 60 * 1_000_000;
/// How often stream time follows the clock while the agent is idle.
const TICK: Duration = Duration::from_secs(1);
/// Events reach the engine up to this late (drain interval, idle timeouts): the clock leads stream time by it.
const CLOCK_SLACK_US: i64 = 5_000_000;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct LiveArgs {
    /// Run the insights detectors on this agent's own events (findings are logged, counted in /metrics, and stored in
    /// ClickHouse's `insights` table and/or `findings.ndjson` next to the NDJSON sink's file when those sinks run).
    #[arg(long)]
    pub insights: bool,
    /// Thresholds (TOML; defaults: examples/insights.toml).
    #[arg(long, value_name = "FILE", requires = "insights")]
    pub insights_config: Option<PathBuf>,
    /// Directory the baselines are kept in between runs (restored at start, saved every 5 minutes and at exit).
    #[arg(long, value_name = "DIR", requires = "insights")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// The capture thread's end of the queue.
pub struct Feed {
    tx: mpsc::Sender<Vec<Event>>,
    dropped: Counter,
}

impl Feed {
    /// Hands the part of the events the detectors read ([`Input::part_of`]) to the engine, or counts them dropped if
    /// it is behind. Never waits.
    pub fn offer(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        match self.tx.try_reserve() {
            Ok(permit) => permit.send(events.iter().map(Input::part_of).collect()),
            Err(_) => {
                self.dropped.inc_by(events.len() as u64);
            }
        }
    }
}

/// The insights series on `/metrics`, bumped where findings and events are handled.
#[derive(Debug, Clone)]
pub struct InsightsMetrics {
    /// Events the engine judged.
    pub events: Counter,
    /// Events dropped by [`Feed::offer`] (queue full).
    pub dropped: Counter,
    findings: Family<Labels, Counter>,
    open: Family<Labels, Gauge>,
}

const STATUSES: [Status; 3] = [Status::Open, Status::Update, Status::Closed];

impl Default for InsightsMetrics {
    fn default() -> Self {
        let m = InsightsMetrics {
            events: Counter::default(),
            dropped: Counter::default(),
            findings: Family::default(),
            open: Family::default(),
        };
        // Every kind and status is shown from the start, at 0.
        for kind in Kind::ALL {
            for status in STATUSES {
                m.findings
                    .get_or_create_owned(&finding_labels(kind, status));
            }
            m.open.get_or_create_owned(&vec![("kind", kind.as_str())]);
        }
        m
    }
}

fn finding_labels(kind: Kind, status: Status) -> Labels {
    vec![("kind", kind.as_str()), ("status", status.as_str())]
}

impl InsightsMetrics {
    /// Finding versions produced so far, by kind and status.
    pub fn versions(&self, kind: Kind, status: Status) -> u64 {
        self.findings
            .get_or_create(&finding_labels(kind, status))
            .get()
    }

    pub fn register(&self, m: &Metrics) {
        m.register(
            "insights_events",
            "Events the insights engine judged",
            self.events.clone(),
        );
        m.register(
            "insights_events_dropped",
            "Events not judged because the insights engine was behind (queue full)",
            self.dropped.clone(),
        );
        m.register(
            "insights_findings",
            "Finding versions raised, per kind and status (open, update, closed)",
            self.findings.clone(),
        );
        m.register(
            "insights_open_findings",
            "Findings open now, per kind",
            self.open.clone(),
        );
    }
}

/// The engine with what the agent adds around it: finding logs and counts, periodic saves. Time is given, never read.
pub struct Runner {
    engine: Engine,
    state_dir: Option<PathBuf>,
    last_save: Option<Timestamp>,
    metrics: InsightsMetrics,
    out: Vec<Finding>,
}

impl Runner {
    /// An engine with the configured thresholds, continuing from the state saved in `state_dir` if there is one.
    pub fn new(
        cfg: Config,
        registry: crate::registry::Registry,
        state_dir: Option<PathBuf>,
    ) -> Result<Self, LiveError> {
        let mut engine = Engine::new(cfg, registry);
        if let Some(dir) = &state_dir {
            if engine.restore_from(dir)? {
                info!(dir = %dir.display(), "insights: baselines restored");
            } else {
                info!(dir = %dir.display(), "insights: no saved baselines, learning from scratch");
            }
        }
        let runner = Runner {
            engine,
            state_dir,
            last_save: None,
            metrics: InsightsMetrics::default(),
            out: Vec::new(),
        };
        runner.count_open();
        Ok(runner)
    }

    /// The series this runner bumps.
    pub fn metrics(&self) -> &InsightsMetrics {
        &self.metrics
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Feeds a batch; returns the finding versions it produced (logged and counted).
    pub fn ingest(&mut self, batch: &[Input<'_>]) -> Vec<Finding> {
        for i in batch {
            self.engine.ingest(i);
        }
        self.metrics.events.inc_by(batch.len() as u64);
        self.collect()
    }

    /// Stream time moves to `now` without events (an idle agent); returns the finding versions produced, and saves
    /// the baselines if the last save is older than [`SAVE_EVERY_US`].
    pub fn advance(&mut self, now: Timestamp) -> Vec<Finding> {
        self.engine.advance(now);
        let out = self.collect();
        let due = self.last_save.is_none_or(|t| now.0 - t.0 >= SAVE_EVERY_US);
        if due && self.state_dir.is_some() {
            if let Err(e) = self.save() {
                warn!(error = %e, "insights: saving baselines");
            }
            self.last_save = Some(now);
        }
        out
    }

    /// Saves the baselines and open findings to the state directory, if there is one.
    pub fn save(&mut self) -> Result<(), StateError> {
        match &self.state_dir {
            Some(dir) => self.engine.save(dir),
            None => Ok(()),
        }
    }

    fn collect(&mut self) -> Vec<Finding> {
        self.engine.drain(&mut self.out);
        for f in &self.out {
            self.metrics
                .findings
                .get_or_create(&finding_labels(f.kind, f.status))
                .inc();
            log(f);
        }
        if !self.out.is_empty() {
            self.count_open();
        }
        std::mem::take(&mut self.out)
    }

    /// Sets the open-findings gauges from the engine (findings open or close only with a new version).
    fn count_open(&self) {
        let mut open: HashMap<Kind, i64> = HashMap::new();
        for f in self.engine.open_findings() {
            *open.entry(f.kind).or_default() += 1;
        }
        for kind in Kind::ALL {
            self.metrics
                .open
                .get_or_create(&vec![("kind", kind.as_str())])
                .set(open.get(&kind).copied().unwrap_or(0));
        }
    }
}

fn log(f: &Finding) {
    let (kind, severity, status) = (f.kind.as_str(), f.severity.as_str(), f.status.as_str());
    let at = f.detected_at.to_rfc3339();
    info!(
        kind,
        severity,
        status,
        version = f.version,
        api = %f.api_id,
        app = %f.app_id,
        team = %f.team,
        detected_at = %at,
        "finding: {}",
        f.explanation
    );
}

/// Starts the engine task; returns the capture thread's feed and the task, which ends (saving the baselines) once
/// the feed is dropped.
pub fn start(
    args: &LiveArgs,
    live: Arc<LiveRegistry>,
    metrics: Arc<Metrics>,
    outputs: Outputs,
) -> Result<Option<(Feed, tokio::task::JoinHandle<()>)>, LiveError> {
    if !args.insights {
        return Ok(None);
    }
    let cfg = match &args.insights_config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let runner = Runner::new(
        cfg,
        live.snapshot().registry.clone(),
        args.state_dir.clone(),
    )?;
    runner.metrics().register(&metrics);
    outputs.register(&metrics);
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    let feed = Feed {
        tx,
        dropped: runner.metrics().dropped.clone(),
    };
    let (notifier, deliver) = super::notify::Notifier::new(
        super::notify::NotifyConfig::default(),
        &live.snapshot().registry,
    );
    notifier.stats().register(&metrics);
    tokio::spawn(deliver);
    let task = tokio::spawn(run(runner, rx, live, outputs, notifier));
    Ok(Some((feed, task)))
}

async fn run(
    mut runner: Runner,
    mut rx: mpsc::Receiver<Vec<Event>>,
    live: Arc<LiveRegistry>,
    mut outputs: Outputs,
    mut notifier: super::notify::Notifier,
) {
    let mut reg = live.subscribe();
    reg.borrow_and_update();
    let mut tick = tokio::time::interval(TICK);
    let mut courtesy = Courtesy::new();
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(b) => {
                    courtesy.begin();
                    let mut inputs = Vec::with_capacity(INGEST_EVENTS);
                    for piece in courtesy.pieces(&b, INGEST_EVENTS) {
                        inputs.clear();
                        inputs.extend(piece.iter().map(Input::from_event));
                        let found = runner.ingest(&inputs);
                        outputs.write(&found);
                        notifier.offer(&found);
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                let found = runner.advance(Timestamp(Timestamp::now().0 - CLOCK_SLACK_US));
                outputs.write(&found);
                notifier.offer(&found);
            }
            Ok(()) = reg.changed() => {
                let r = reg.borrow_and_update().registry.clone();
                notifier.set_registry(&r);
                runner.engine_mut().set_registry(r);
            }
        }
    }
    match runner.save() {
        Ok(()) => info!("insights: baselines saved"),
        Err(e) => warn!(error = %e, "insights: saving baselines at exit"),
    }
    outputs.shutdown().await;
}

#[cfg(test)]
mod tests;
