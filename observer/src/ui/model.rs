//! The JSON the UI's endpoints return (`/api/...`), one struct per page; the README documents these fields.
//! Times are Unix seconds (fractions for exchange times), rates are requests per second, latencies milliseconds.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The time range a page covers, `[from, to)` in buckets of `step` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Range {
    pub from: i64,
    pub to: i64,
    pub step: i64,
}

/// Time series on common bucket starts `t`; each line has one value per bucket.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Series {
    pub t: Vec<i64>,
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Line {
    pub label: String,
    /// What the line is about, for grouping and links: e.g. `line_of_business`, `api_id`, `app_id`.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub tags: Map<String, Value>,
    pub values: Vec<f64>,
}

/// Requests, errors and latency of one group of exchanges.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiStat {
    pub api_id: String,
    pub api_name: String,
    #[serde(flatten)]
    pub stats: Stats,
}

/// An application or a shadow workload seen for the first time in the range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewConsumer {
    /// Application id, empty for a shadow workload.
    pub app_id: String,
    pub name: String,
    pub team: String,
    pub first_seen: f64,
    pub requests: u64,
    pub apis: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub range: Range,
    pub source: &'static str,
    pub totals: Stats,
    /// Requests per second per line of business, API and application (stack them).
    pub consumption: Series,
    pub apis: Vec<ApiStat>,
    pub new_apps: Vec<NewConsumer>,
    pub new_consumers: Vec<NewConsumer>,
    pub insights: Vec<Insight>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteStat {
    pub route: String,
    pub method: String,
    #[serde(flatten)]
    pub stats: Stats,
}

/// One consumer of an API: an application with a key state, or a shadow workload.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStat {
    pub app_id: String,
    pub app_name: String,
    pub attributed_by: String,
    pub key_suffix: String,
    pub key_state: String,
    pub workloads: Vec<String>,
    pub requests: u64,
    pub errors: u64,
    pub last_seen: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiPage {
    pub range: Range,
    pub source: &'static str,
    pub api_id: String,
    pub api_name: String,
    pub owner: String,
    pub totals: Stats,
    /// Requests per second per application.
    pub rate: Series,
    pub routes: Vec<RouteStat>,
    pub consumers: Vec<ConsumerStat>,
    pub insights: Vec<Insight>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppCall {
    pub api_id: String,
    pub api_name: String,
    pub route: String,
    pub method: String,
    #[serde(flatten)]
    pub stats: Stats,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusCount {
    pub status: u16,
    pub requests: u64,
}

/// A key's grant for an API (the newest entry), its state at the end of the range and its use in the range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrantUse {
    pub key_id: String,
    pub key_suffix: String,
    pub key_fingerprint: String,
    pub app_id: String,
    pub app_name: String,
    pub team: String,
    pub api_id: String,
    pub api_name: String,
    pub granted_by: String,
    pub valid_from: Option<f64>,
    pub valid_until: Option<f64>,
    pub revoked_at: Option<f64>,
    pub revoked_by: String,
    pub note: String,
    /// `active`, `revoked`, `expired` or `not_yet_valid` at the end of the range.
    pub state: &'static str,
    pub calls: u64,
    pub first_used: Option<f64>,
    pub last_used: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppPage {
    pub range: Range,
    pub source: &'static str,
    pub app_id: String,
    pub app_name: String,
    pub team: String,
    pub line_of_business: String,
    pub predecessor_id: String,
    pub predecessor_name: String,
    pub totals: Stats,
    /// Requests per second of the application, its baseline (its mean rate over the window of equal length
    /// before the range, a flat line) and its predecessor's rate.
    pub compare: Series,
    pub baseline_rps: f64,
    pub calls: Vec<AppCall>,
    pub errors: Vec<StatusCount>,
    pub keys: Vec<GrantUse>,
    pub insights: Vec<Insight>,
}

/// Calls with a key outside its grant (revoked, expired, not yet valid, not granted for the API).
#[derive(Debug, Clone, Serialize)]
pub struct OutsideUse {
    pub key_suffix: String,
    pub app_name: String,
    pub api_name: String,
    pub key_state: String,
    pub workloads: Vec<String>,
    pub calls: u64,
    pub last_seen: f64,
    pub granted_by: String,
    pub revoked_by: String,
}

/// A key presented by more than one workload.
#[derive(Debug, Clone, Serialize)]
pub struct SharedKey {
    pub key_suffix: String,
    pub app_name: String,
    pub workloads: Vec<String>,
    pub calls: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShadowConsumer {
    pub client_comm: String,
    pub client_cgroup: String,
    pub src_ip: String,
    pub apis: Vec<String>,
    pub calls: u64,
    pub with_key: u64,
    pub first_seen: f64,
    pub last_seen: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Access {
    pub range: Range,
    pub source: &'static str,
    pub grants: Vec<GrantUse>,
    pub unused: Vec<GrantUse>,
    pub outside: Vec<OutsideUse>,
    pub shared: Vec<SharedKey>,
    pub shadow: Vec<ShadowConsumer>,
}

/// One finding of the insights engine: the newest version (as of the end of the range) of the finding `id`, as the
/// `insights` table stores it (see `sink::clickhouse::migrations::INSIGHTS_COLUMNS`), with names from the registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Insight {
    /// When this version was produced (Unix seconds).
    pub ts: f64,
    pub id: String,
    pub version: u32,
    /// `open`, `update` or `closed`.
    pub status: String,
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    pub team: String,
    pub api_id: String,
    pub app_id: String,
    pub key_id: String,
    pub key_fingerprint: String,
    pub workload: String,
    pub route: String,
    /// Who or what the finding is about, in words.
    pub subject: String,
    pub title: String,
    pub explanation: String,
    /// The figures behind it (stored as a JSON object in a string column; either form is read).
    #[serde(deserialize_with = "evidence")]
    pub evidence: Map<String, Value>,
    /// When the condition was first and last observed (Unix seconds).
    pub first_seen: f64,
    pub last_seen: f64,
    /// Who raised it: `agent:<node>` or `fleet`.
    pub source: String,
    /// Names of `api_id` and `app_id` from the registry, filled by the pages.
    pub api_name: String,
    pub app_name: String,
}

impl Insight {
    pub fn is_open(&self) -> bool {
        self.status != "closed"
    }

    /// Whether the condition held at some time in `[from, to)`: observed since `from`, or still open.
    pub fn active_in(&self, from: f64, to: f64) -> bool {
        self.first_seen < to && (self.is_open() || self.last_seen >= from)
    }
}

/// Evidence as a JSON object, or a string holding one (the table's form); anything else is kept under `value`.
fn evidence<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Map<String, Value>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Object(m) => m,
        Value::String(s) if s.trim().is_empty() => Map::new(),
        Value::String(s) => match serde_json::from_str(&s) {
            Ok(Value::Object(m)) => m,
            _ => Map::from_iter([("value".to_string(), Value::String(s))]),
        },
        Value::Null => Map::new(),
        other => Map::from_iter([("value".to_string(), other)]),
    })
}

/// How long before a range the newest version of a still-open finding may be and still count as open in it.
pub const OPEN_LOOKBACK_S: i64 = 7 * 86_400;

/// Of `versions` (of any findings, any order), the newest version produced before `to` of each finding, kept if
/// it was active in `[from, to)`; newest first.
pub fn latest(versions: impl IntoIterator<Item = Insight>, from: i64, to: i64) -> Vec<Insight> {
    let mut newest: std::collections::HashMap<String, Insight> = std::collections::HashMap::new();
    for v in versions {
        if v.ts >= to as f64 || v.ts < (from - OPEN_LOOKBACK_S) as f64 {
            continue;
        }
        match newest.get(&v.id) {
            Some(have) if have.version >= v.version => {}
            _ => {
                newest.insert(v.id.clone(), v);
            }
        }
    }
    let mut out: Vec<Insight> = newest
        .into_values()
        .filter(|i| i.active_in(from as f64, to as f64))
        .collect();
    sort_newest_first(&mut out);
    out
}

/// Newest version first, then by id (a stable order for equal times).
pub fn sort_newest_first(items: &mut [Insight]) {
    items.sort_by(|a, b| b.ts.total_cmp(&a.ts).then_with(|| a.id.cmp(&b.id)));
}

#[derive(Debug, Clone, Serialize)]
pub struct Insights {
    pub range: Range,
    pub source: &'static str,
    pub kinds: Vec<String>,
    pub teams: Vec<String>,
    /// Findings active per bucket (observed in it, or open across it), one line per kind.
    pub timeline: Series,
    pub items: Vec<Insight>,
}

/// One exchange of the live tail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TailRow {
    pub ts: f64,
    pub method: String,
    pub host: String,
    pub path: String,
    pub route: String,
    pub status: u16,
    pub duration_ms: f64,
    pub api_id: String,
    pub api_name: String,
    pub app_id: String,
    pub app_name: String,
    pub app_team: String,
    pub line_of_business: String,
    pub key_suffix: String,
    pub key_state: String,
    pub attributed_by: String,
    pub client_comm: String,
    pub src_ip: String,
    pub side: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tail {
    pub source: &'static str,
    pub rows: Vec<TailRow>,
}

/// Names for the pickers: the registry's applications, APIs and teams.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub source: &'static str,
    pub apps: Vec<(String, String)>,
    pub apis: Vec<(String, String)>,
    pub teams: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(id: &str, version: u32, status: &str, ts: f64, first: f64, last: f64) -> Insight {
        Insight {
            id: id.into(),
            version,
            status: status.into(),
            ts,
            first_seen: first,
            last_seen: last,
            ..Insight::default()
        }
    }

    #[test]
    fn the_newest_version_before_the_end_counts_if_active_in_the_range() {
        let versions = vec![
            version("a", 1, "open", 100.0, 100.0, 100.0),
            version("a", 2, "closed", 500.0, 100.0, 400.0),
            version("b", 1, "open", 50.0, 50.0, 50.0),
            version("c", 1, "open", 10.0, 10.0, 10.0),
            version("c", 2, "closed", 20.0, 10.0, 15.0),
        ];
        // At 300, a's newest version is still the open one; b is open; c closed before the range.
        let at = latest(versions.clone(), 200, 300);
        let got: Vec<(&str, u32)> = at.iter().map(|i| (i.id.as_str(), i.version)).collect();
        assert_eq!(got, vec![("a", 1), ("b", 1)]);
        // Later, a's closing version (observed until 400) is still in a range from 350.
        let got: Vec<String> = latest(versions.clone(), 350, 600)
            .iter()
            .map(|i| format!("{}{}", i.id, i.version))
            .collect();
        assert_eq!(got, vec!["a2", "b1"]);
        assert!(latest(versions, 450, 600).iter().all(|i| i.id == "b"));
    }

    #[test]
    fn evidence_is_read_from_a_json_string_or_an_object() {
        let from_table: Insight =
            serde_json::from_str(r#"{"id":"x","evidence":"{\"ratio\":3.2,\"apps\":[\"a\"]}"}"#)
                .unwrap();
        assert_eq!(from_table.evidence["ratio"], 3.2);
        let from_memory: Insight = serde_json::from_str(r#"{"evidence":{"ratio":3.2}}"#).unwrap();
        assert_eq!(from_memory.evidence["ratio"], 3.2);
        let odd: Insight = serde_json::from_str(r#"{"evidence":"not json"}"#).unwrap();
        assert_eq!(odd.evidence["value"], "not json");
        let empty: Insight = serde_json::from_str(r#"{"evidence":""}"#).unwrap();
        assert!(empty.evidence.is_empty());
    }
}
