//! What the reliability suites record and compare: /metrics samples as maps and their growth, and one JSON line per
//! checked case for `cargo xtask reliability` (RELIABILITY.md).
#![forbid(unsafe_code)]
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

/// Prometheus text as a map from series (name and labels) to value; comments skipped.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The series that grew from `before` to `after`, with how much.
pub fn metrics_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// One checked case of the reliability suite, as `cargo xtask reliability` reads it back.
#[derive(Debug, Default)]
pub struct CaseReport {
    /// Short name (a table row of RELIABILITY.md).
    pub case: String,
    /// What was checked, one sentence.
    pub checked: String,
    /// Exchanges (or events) sent.
    pub sent: u64,
    /// Events stored by the sink under test (NDJSON or ClickHouse).
    pub stored: u64,
    /// Counted drops or reasons, by series.
    pub counted: BTreeMap<String, f64>,
}

impl CaseReport {
    /// Appends this case, as passed, to the JSON-lines file `cargo xtask reliability` collects
    /// (`$OBSERVER_RELIABILITY_OUT`, default `target/reliability/cases.jsonl`). Call it after the case's assertions.
    pub fn passed(&self, test: &str) {
        let path = std::env::var_os("OBSERVER_RELIABILITY_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/reliability/cases.jsonl")
            });
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        }
        let line = serde_json::json!({
            "test": test,
            "case": self.case,
            "checked": self.checked,
            "sent": self.sent,
            "stored": self.stored,
            "counted": self.counted,
            "result": "pass",
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        writeln!(f, "{line}").unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}
