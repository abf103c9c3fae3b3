//! Scores the detectors on generated scenarios: per label whether a finding of its kind on its subject overlapped
//! it (range-based recall, Tatbul et al. 2018: existence and the share of the range covered) and how long after
//! onset it was raised; per finding whether it matched a label (precision), and every unmatched finding by where
//! it fell (the baseline days, a decoy, elsewhere).
use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Generated, Label};
use crate::event::Timestamp;
use crate::insights::finding::{Finding, Kind};
use crate::insights::{Config, Engine, Input};

/// A finding condensed over its versions.
#[derive(Debug, Clone)]
pub struct Raised {
    pub kind: Kind,
    pub api_id: String,
    pub app_id: String,
    pub detected_at: Timestamp,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub explanation: String,
}

/// Findings count for a label this long after its end (a condition's tail).
const GRACE_US: i64 = 10 * 60_000_000;

#[derive(Debug, Clone)]
pub struct LabelScore {
    pub scenario: &'static str,
    pub kind: Kind,
    pub detected: bool,
    /// Seconds from onset to the first matching finding.
    pub ttd_s: Option<f64>,
    /// Share of the label's range covered by matching findings.
    pub overlap: f64,
    /// Time-to-detect target (s): 60 for per-event kinds, 300 for the others.
    pub target_s: f64,
}

#[derive(Debug, Clone)]
pub struct SeedScore {
    pub seed: u64,
    pub events: u64,
    pub labels: Vec<LabelScore>,
    pub findings: usize,
    pub matched: usize,
    /// Unmatched findings: (where, kind, explanation).
    pub false_positives: Vec<(String, Raised)>,
    pub baseline_fp: usize,
    pub decoy_fp: usize,
}

fn matches(l: &Label, f: &Raised) -> bool {
    Some(f.kind) == l.kind
        && f.api_id == l.api_id
        && (l.app_id.is_empty() || f.app_id == l.app_id)
        && f.first_seen.0 <= l.end.0 + GRACE_US
        && f.last_seen.0 >= l.start.0
}

/// Generates seed `seed`'s scenarios, runs the engine with `cfg` over them and scores the findings.
pub fn run_seed(seed: u64, cfg: &Config) -> SeedScore {
    let mut g = Generated::new(seed);
    let mut engine = Engine::new(cfg.clone(), g.registry.clone());
    let mut versions = Vec::new();
    let mut events = 0u64;
    g.for_each_event(|e| {
        engine.ingest(&Input::from_event(e));
        events += 1;
    });
    engine.advance(g.end);
    engine.drain(&mut versions);
    score(&g, condense(&versions), events)
}

/// One `Raised` per finding id.
pub fn condense(versions: &[Finding]) -> Vec<Raised> {
    let mut by_id: BTreeMap<&str, Raised> = BTreeMap::new();
    for f in versions {
        by_id
            .entry(&f.id)
            .and_modify(|r| r.last_seen = r.last_seen.max(f.last_seen))
            .or_insert_with(|| Raised {
                kind: f.kind,
                api_id: f.api_id.clone(),
                app_id: f.app_id.clone(),
                detected_at: f.detected_at,
                first_seen: f.first_seen,
                last_seen: f.last_seen,
                explanation: f.explanation.clone(),
            });
    }
    let mut v: Vec<Raised> = by_id.into_values().collect();
    v.sort_by_key(|r| r.detected_at);
    v
}

fn score(g: &Generated, raised: Vec<Raised>, events: u64) -> SeedScore {
    let mut labels = Vec::new();
    for l in g.labels.iter().filter(|l| l.kind.is_some()) {
        let hits: Vec<&Raised> = raised.iter().filter(|f| matches(l, f)).collect();
        let len = (l.end.0 - l.start.0).max(1) as f64;
        let covered: i64 = hits
            .iter()
            .map(|f| (f.last_seen.0.min(l.end.0) - f.first_seen.0.max(l.start.0)).max(0))
            .sum();
        let kind = l.kind.expect("filtered");
        labels.push(LabelScore {
            scenario: l.scenario,
            kind,
            detected: !hits.is_empty(),
            ttd_s: hits
                .iter()
                .map(|f| (f.detected_at.0 - l.start.0).max(0) as f64 / 1e6)
                .reduce(f64::min),
            overlap: (covered as f64 / len).min(1.0),
            target_s: if kind.per_event() { 60.0 } else { 300.0 },
        });
    }
    let mut false_positives = Vec::new();
    let mut matched = 0;
    for f in &raised {
        if g.labels.iter().any(|l| matches(l, f)) {
            matched += 1;
            continue;
        }
        let place = if f.first_seen < g.baseline_end {
            "baseline days".to_string()
        } else if let Some(d) = g.labels.iter().find(|l| {
            l.kind.is_none() && f.first_seen.0 <= l.end.0 + GRACE_US && f.last_seen >= l.start
        }) {
            format!("decoy {}", d.scenario)
        } else {
            "scenario days".to_string()
        };
        false_positives.push((place, f.clone()));
    }
    SeedScore {
        seed: g.seed,
        events,
        baseline_fp: false_positives
            .iter()
            .filter(|(p, _)| p == "baseline days")
            .count(),
        decoy_fp: false_positives
            .iter()
            .filter(|(p, _)| p.starts_with("decoy"))
            .count(),
        labels,
        findings: raised.len(),
        matched,
        false_positives,
    }
}

/// A markdown report of several seeds: one row per seed, then one per scenario label over the seeds, then every
/// false positive.
pub fn report(title: &str, scores: &[SeedScore]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#### {title}\n");
    let _ = writeln!(
        s,
        "| seed | events | labels detected | recall (overlap) | findings | precision | FP baseline days | FP decoys | \
         FP other | within target |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for sc in scores {
        let det = sc.labels.iter().filter(|l| l.detected).count();
        let overlap =
            sc.labels.iter().map(|l| l.overlap).sum::<f64>() / sc.labels.len().max(1) as f64;
        let on_time = sc
            .labels
            .iter()
            .filter(|l| l.ttd_s.is_some_and(|t| t <= l.target_s))
            .count();
        let _ = writeln!(
            s,
            "| {} | {} | {det}/{} | {:.2} ({overlap:.2}) | {} | {:.2} | {} | {} | {} | {on_time}/{} |",
            sc.seed,
            sc.events,
            sc.labels.len(),
            det as f64 / sc.labels.len().max(1) as f64,
            sc.findings,
            sc.matched as f64 / sc.findings.max(1) as f64,
            sc.baseline_fp,
            sc.decoy_fp,
            sc.false_positives.len() - sc.baseline_fp - sc.decoy_fp,
            sc.labels.len(),
        );
    }
    let _ = writeln!(
        s,
        "\n| scenario | kind | detected | time to detect (s): median / max | target (s) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    let mut by: BTreeMap<(&str, &str), Vec<&LabelScore>> = BTreeMap::new();
    for sc in scores {
        for l in &sc.labels {
            by.entry((l.scenario, l.kind.as_str())).or_default().push(l);
        }
    }
    for ((scenario, kind), ls) in by {
        let mut t: Vec<f64> = ls.iter().filter_map(|l| l.ttd_s).collect();
        t.sort_by(f64::total_cmp);
        let med = t.get(t.len() / 2).map_or("-".into(), |x| format!("{x:.0}"));
        let max = t.last().map_or("-".into(), |x| format!("{x:.0}"));
        let _ = writeln!(
            s,
            "| {scenario} | {kind} | {}/{} | {med} / {max} | {:.0} |",
            ls.iter().filter(|l| l.detected).count(),
            ls.len(),
            ls[0].target_s
        );
    }
    let fps: Vec<_> = scores
        .iter()
        .flat_map(|sc| sc.false_positives.iter().map(move |f| (sc.seed, f)))
        .collect();
    if !fps.is_empty() {
        let _ = writeln!(s, "\nUnmatched findings:\n");
        for (seed, (place, f)) in fps {
            let _ = writeln!(
                s,
                "- seed {seed}, {place}, {} at {}: {}",
                f.kind,
                f.detected_at.to_rfc3339(),
                f.explanation
            );
        }
    }
    s
}
