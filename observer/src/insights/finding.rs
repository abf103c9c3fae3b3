//! What insights tell people: the finding model (kind, severity, subject, figures) and the tracker that turns a
//! condition observed again and again into one finding with versions (opened, updated, closed).
use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::Timestamp;

/// Every kind of finding the detectors raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    NewAppOutpacesPredecessor,
    UndeclaredPredecessor,
    NovelPattern,
    NewConsumer,
    RetryStorm,
    ClientBug,
    Flood,
    BackendFailure,
    KeyOutsideGrant,
    UnknownKey,
    KeyShared,
    ShadowConsumer,
    UnusedGrant,
    UndocumentedRoute,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::NewAppOutpacesPredecessor,
        Kind::UndeclaredPredecessor,
        Kind::NovelPattern,
        Kind::NewConsumer,
        Kind::RetryStorm,
        Kind::ClientBug,
        Kind::Flood,
        Kind::BackendFailure,
        Kind::KeyOutsideGrant,
        Kind::UnknownKey,
        Kind::KeyShared,
        Kind::ShadowConsumer,
        Kind::UnusedGrant,
        Kind::UndocumentedRoute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NewAppOutpacesPredecessor => "new_app_outpaces_predecessor",
            Kind::UndeclaredPredecessor => "undeclared_predecessor",
            Kind::NovelPattern => "novel_pattern",
            Kind::NewConsumer => "new_consumer",
            Kind::RetryStorm => "retry_storm",
            Kind::ClientBug => "client_bug",
            Kind::Flood => "flood",
            Kind::BackendFailure => "backend_failure",
            Kind::KeyOutsideGrant => "key_outside_grant",
            Kind::UnknownKey => "unknown_key",
            Kind::KeyShared => "key_shared",
            Kind::ShadowConsumer => "shadow_consumer",
            Kind::UnusedGrant => "unused_grant",
            Kind::UndocumentedRoute => "undocumented_route",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Raised from one event (governance); the others judge minutes of traffic.
    pub fn per_event(self) -> bool {
        matches!(
            self,
            Kind::KeyOutsideGrant
                | Kind::UnknownKey
                | Kind::KeyShared
                | Kind::ShadowConsumer
                | Kind::UndocumentedRoute
                | Kind::NewConsumer
                | Kind::UndeclaredPredecessor
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Where a finding is in its life: each version of a finding carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// First version: the condition was just detected.
    Open,
    /// The condition persists; figures (or the severity) changed.
    Update,
    /// The condition ended.
    Closed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Update => "update",
            Status::Closed => "closed",
        }
    }
}

/// One version of a finding. `id` is stable over the versions of one finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub id: String,
    pub version: u32,
    pub status: Status,
    pub kind: Kind,
    pub severity: Severity,
    pub api_id: String,
    /// "" when no application is the subject.
    pub app_id: String,
    pub key_id: String,
    pub key_fingerprint: String,
    /// Client process and cgroup (`comm cgroup`) or source address, when a workload is the subject.
    pub workload: String,
    /// Route template, when a route is the subject (undocumented_route).
    pub route: String,
    /// Team to notify, from the registry.
    pub team: String,
    /// Stream time at which this version was produced.
    pub detected_at: Timestamp,
    /// When the condition was first and last observed.
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// One sentence with the numbers behind it.
    pub explanation: String,
    /// The figures: rates, baseline, ratio, error ratios, shares, distinct sources.
    pub evidence: Map<String, Value>,
}

/// What a detector reports while its condition holds; the tracker adds identity, versions and times.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub kind: Kind,
    pub severity: Severity,
    pub api_id: String,
    pub app_id: String,
    pub key_id: String,
    pub key_fingerprint: String,
    pub workload: String,
    pub route: String,
    pub team: String,
    pub explanation: String,
    pub evidence: Map<String, Value>,
    /// When the condition began, if the detector knows better than "now" (e.g. the first anomalous minute).
    pub since: Option<Timestamp>,
}

impl Observation {
    pub fn new(kind: Kind, severity: Severity, api_id: &str) -> Self {
        Observation {
            kind,
            severity,
            api_id: api_id.to_string(),
            app_id: String::new(),
            key_id: String::new(),
            key_fingerprint: String::new(),
            workload: String::new(),
            route: String::new(),
            team: String::new(),
            explanation: String::new(),
            evidence: Map::new(),
            since: None,
        }
    }

    /// Adds one figure to the evidence.
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.evidence.insert(name.to_string(), value.into());
        self
    }

    /// The identity of the condition: one open finding per kind and subject.
    fn subject(&self) -> String {
        subject(
            &self.api_id,
            &self.app_id,
            &self.key_fingerprint,
            &self.workload,
            &self.route,
        )
    }
}

struct Open {
    finding: Finding,
    last_emitted: Timestamp,
}

/// Open findings by (kind, subject). A detector calls `observe` each time its condition holds; `sweep` closes the
/// findings whose condition was not observed for their kind's close-after time.
#[derive(Default)]
pub struct Tracker {
    open: HashMap<(Kind, String), Open>,
    out: Vec<Finding>,
}

/// Rounds figures so explanations and evidence stay readable.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Tracker {
    /// Records that `obs` holds at `now`. Emits an `open` version the first time, an `update` when the severity
    /// rises or `update_every` has passed since the last version, nothing otherwise.
    pub fn observe(&mut self, now: Timestamp, obs: Observation, update_every_us: i64) {
        let key = (obs.kind, obs.subject());
        match self.open.get_mut(&key) {
            Some(o) => {
                let escalated = obs.severity > o.finding.severity;
                let f = &mut o.finding;
                f.last_seen = now;
                f.severity = f.severity.max(obs.severity);
                f.explanation = obs.explanation;
                f.evidence = obs.evidence;
                if escalated || now.0 - o.last_emitted.0 >= update_every_us {
                    f.version += 1;
                    f.status = Status::Update;
                    f.detected_at = now;
                    o.last_emitted = now;
                    self.out.push(f.clone());
                }
            }
            None => {
                let first_seen = obs.since.map_or(now, |s| s.min(now));
                let id = finding_id(obs.kind, &key.1, first_seen);
                let f = Finding {
                    id,
                    version: 1,
                    status: Status::Open,
                    kind: obs.kind,
                    severity: obs.severity,
                    api_id: obs.api_id,
                    app_id: obs.app_id,
                    key_id: obs.key_id,
                    key_fingerprint: obs.key_fingerprint,
                    workload: obs.workload,
                    route: obs.route,
                    team: obs.team,
                    detected_at: now,
                    first_seen,
                    last_seen: now,
                    explanation: obs.explanation,
                    evidence: obs.evidence,
                };
                self.out.push(f.clone());
                self.open.insert(
                    key,
                    Open {
                        finding: f,
                        last_emitted: now,
                    },
                );
            }
        }
    }

    /// Whether a finding of `kind` on this subject is open (detectors use it to avoid raising a kind twice).
    pub fn is_open(&self, kind: Kind, api_id: &str) -> bool {
        self.open
            .iter()
            .any(|((k, _), o)| *k == kind && o.finding.api_id == api_id)
    }

    /// Closes every open finding whose condition was last seen longer ago than `close_after(kind)`.
    pub fn sweep(&mut self, now: Timestamp, close_after_us: impl Fn(Kind) -> i64) {
        let out = &mut self.out;
        self.open.retain(|(kind, _), o| {
            if now.0 - o.finding.last_seen.0 <= close_after_us(*kind) {
                return true;
            }
            let f = &mut o.finding;
            f.version += 1;
            f.status = Status::Closed;
            f.detected_at = now;
            out.push(f.clone());
            false
        });
    }

    /// Versions produced since the last call, in order.
    pub fn drain(&mut self, into: &mut Vec<Finding>) {
        into.append(&mut self.out);
    }

    /// Findings open now.
    pub fn open_findings(&self) -> impl Iterator<Item = &Finding> {
        self.open.values().map(|o| &o.finding)
    }

    pub(crate) fn restore(&mut self, findings: Vec<Finding>) {
        for f in findings {
            let subject = subject(
                &f.api_id,
                &f.app_id,
                &f.key_fingerprint,
                &f.workload,
                &f.route,
            );
            let last_emitted = f.detected_at;
            self.open.insert(
                (f.kind, subject),
                Open {
                    finding: f,
                    last_emitted,
                },
            );
        }
    }
}

/// The identity of a condition's subject: one open finding per kind and subject.
fn subject(api: &str, app: &str, key_fp: &str, workload: &str, route: &str) -> String {
    format!("{api}|{app}|{key_fp}|{workload}|{route}")
}

/// A stable id for one finding: FNV-1a of kind, subject and first-seen time, in hex.
fn finding_id(kind: Kind, subject: &str, first_seen: Timestamp) -> String {
    let h = super::input::fnv64([
        kind.as_str().as_bytes(),
        subject.as_bytes(),
        &first_seen.0.to_le_bytes(),
    ]);
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    fn obs(sev: Severity) -> Observation {
        Observation::new(Kind::Flood, sev, "rates-api").with("rate", 10)
    }

    #[test]
    fn a_persisting_condition_updates_one_finding_and_an_ended_one_closes_it() {
        let mut t = Tracker::default();
        let mut out = Vec::new();
        t.observe(Timestamp(0), obs(Severity::Warning), 15 * MIN);
        t.observe(Timestamp(MIN), obs(Severity::Warning), 15 * MIN);
        t.drain(&mut out);
        assert_eq!(out.len(), 1, "a repeat within update_every emits nothing");
        assert_eq!(out[0].status, Status::Open);
        t.observe(Timestamp(2 * MIN), obs(Severity::Critical), 15 * MIN);
        t.sweep(Timestamp(3 * MIN), |_| 3 * MIN);
        t.sweep(Timestamp(6 * MIN), |_| 3 * MIN);
        t.drain(&mut out);
        let statuses: Vec<_> = out.iter().map(|f| (f.status, f.version)).collect();
        assert_eq!(
            statuses,
            vec![(Status::Open, 1), (Status::Update, 2), (Status::Closed, 3)]
        );
        assert!(out.iter().all(|f| f.id == out[0].id));
        assert_eq!(out[2].last_seen, Timestamp(2 * MIN));
        assert_eq!(out[2].severity, Severity::Critical);
        assert_eq!(t.open_findings().count(), 0);
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
        }
    }
}
