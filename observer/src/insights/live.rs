//! The agent's own insights (`observer run --insights`): the capture thread offers each batch of events to a bounded
//! queue without ever waiting (a full queue drops the batch and counts it), and one task runs the engine on them,
//! logs and counts every finding version, follows registry reloads and keeps the baselines in `--state-dir`.
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::config::ConfigError;
use super::finding::{Finding, Kind, Status};
use super::state::StateError;
use super::{Config, Engine, Input};
use crate::event::{Event, Timestamp};
use crate::metrics::{Metrics, Sample};
use crate::registry::LiveRegistry;

/// Batches (one per capture drain) waiting for the engine before new ones are dropped.
pub const QUEUE_BATCHES: usize = 256;
/// How often the baselines are saved while running (they are saved at exit too).
pub const SAVE_EVERY_US: i64 = 5 * 60 * 1_000_000;
/// How often stream time follows the clock while the agent is idle.
const TICK: Duration = Duration::from_secs(1);
/// Events reach the engine up to this late (drain interval, idle timeouts): the clock leads stream time by it.
const CLOCK_SLACK_US: i64 = 5_000_000;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct LiveArgs {
    /// Run the insights detectors on this agent's own events (findings are logged and counted in /metrics).
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
    tx: mpsc::Sender<Vec<Input<'static>>>,
    dropped: Arc<AtomicU64>,
}

impl Feed {
    /// Hands a copy of the events to the engine, or counts them dropped if it is behind. Never waits.
    pub fn offer(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        match self.tx.try_reserve() {
            Ok(permit) => permit.send(events.iter().map(|e| owned(Input::from_event(e))).collect()),
            Err(_) => {
                self.dropped
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// An input that owns its strings, to cross threads.
fn owned(i: Input<'_>) -> Input<'static> {
    fn o(c: Cow<'_, str>) -> Cow<'static, str> {
        Cow::Owned(c.into_owned())
    }
    Input {
        ts: i.ts,
        method: o(i.method),
        host: o(i.host),
        path: o(i.path),
        query_keys: i.query_keys.into_iter().map(o).collect(),
        status: i.status,
        src_ip: o(i.src_ip),
        client_comm: o(i.client_comm),
        client_cgroup: o(i.client_cgroup),
        user_agent: o(i.user_agent),
        api_id: o(i.api_id),
        route: o(i.route),
        app_id: o(i.app_id),
        key_fingerprint: o(i.key_fingerprint),
        key_state: i.key_state,
        attributed_by: i.attributed_by,
        request_hash: i.request_hash,
    }
}

/// The engine with what the agent adds around it: finding logs and counts, periodic saves. Time is given, never read.
pub struct Runner {
    engine: Engine,
    state_dir: Option<PathBuf>,
    last_save: Option<Timestamp>,
    events: u64,
    versions: HashMap<(Kind, Status), u64>,
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
        Ok(Runner {
            engine,
            state_dir,
            last_save: None,
            events: 0,
            versions: HashMap::new(),
            out: Vec::new(),
        })
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// Feeds a batch; returns the finding versions it produced (logged and counted).
    pub fn ingest(&mut self, batch: &[Input<'_>]) -> Vec<Finding> {
        for i in batch {
            self.engine.ingest(i);
        }
        self.events += batch.len() as u64;
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
            *self.versions.entry((f.kind, f.status)).or_default() += 1;
            log(f);
        }
        std::mem::take(&mut self.out)
    }

    /// Finding versions produced so far, by kind and status.
    pub fn versions(&self, kind: Kind, status: Status) -> u64 {
        self.versions.get(&(kind, status)).copied().unwrap_or(0)
    }

    /// The `/metrics` samples: events judged and dropped, finding versions per kind and status, open findings.
    pub fn samples(&self, dropped: u64) -> Vec<Sample> {
        let mut s = vec![
            Sample::counter(
                "insights_events_total",
                "Events the insights engine judged",
                self.events,
            ),
            Sample::counter(
                "insights_events_dropped_total",
                "Events not judged because the insights engine was behind (queue full)",
                dropped,
            ),
        ];
        let mut open: HashMap<Kind, u64> = HashMap::new();
        for f in self.engine.open_findings() {
            *open.entry(f.kind).or_default() += 1;
        }
        for kind in Kind::ALL {
            for status in [Status::Open, Status::Update, Status::Closed] {
                s.push(
                    Sample::counter(
                        "insights_findings_total",
                        "Finding versions raised, per kind and status (open, update, closed)",
                        self.versions(kind, status),
                    )
                    .label("kind", kind.as_str())
                    .label("status", status_str(status)),
                );
            }
            s.push(
                Sample::gauge(
                    "insights_open_findings",
                    "Findings open now, per kind",
                    open.get(&kind).copied().unwrap_or(0) as f64,
                )
                .label("kind", kind.as_str()),
            );
        }
        s
    }
}

fn status_str(s: Status) -> &'static str {
    match s {
        Status::Open => "open",
        Status::Update => "update",
        Status::Closed => "closed",
    }
}

fn log(f: &Finding) {
    let (kind, severity, status) = (f.kind.as_str(), f.severity.as_str(), status_str(f.status));
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
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    let dropped = Arc::new(AtomicU64::new(0));
    let feed = Feed {
        tx,
        dropped: dropped.clone(),
    };
    let (notifier, deliver) = super::notify::Notifier::new(
        super::notify::NotifyConfig::default(),
        &live.snapshot().registry,
    );
    tokio::spawn(deliver);
    let task = tokio::spawn(run(runner, rx, live, metrics, dropped, notifier));
    Ok(Some((feed, task)))
}

async fn run(
    mut runner: Runner,
    mut rx: mpsc::Receiver<Vec<Input<'static>>>,
    live: Arc<LiveRegistry>,
    metrics: Arc<Metrics>,
    dropped: Arc<AtomicU64>,
    mut notifier: super::notify::Notifier,
) {
    let mut reg = live.subscribe();
    reg.borrow_and_update();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(b) => notifier.offer(&runner.ingest(&b)),
                None => break,
            },
            _ = tick.tick() => {
                notifier.offer(&runner.advance(Timestamp(Timestamp::now().0 - CLOCK_SLACK_US)));
                metrics.publish("insights", runner.samples(dropped.load(Ordering::Relaxed)));
                metrics.publish("insights_webhook", notifier.stats().samples());
            }
            Ok(()) = reg.changed() => {
                let r = reg.borrow_and_update().registry.clone();
                notifier.set_registry(&r);
                runner.engine_mut().set_registry(r);
            }
        }
    }
    metrics.publish("insights", runner.samples(dropped.load(Ordering::Relaxed)));
    match runner.save() {
        Ok(()) => info!("insights: baselines saved"),
        Err(e) => warn!(error = %e, "insights: saving baselines at exit"),
    }
}

#[cfg(test)]
mod tests;
