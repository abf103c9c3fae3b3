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

/// One finding of the insights engine, as stored; fields beyond these are passed through.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Insight {
    pub ts: f64,
    pub kind: String,
    pub team: String,
    pub subject: String,
    pub title: String,
    pub explanation: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Insights {
    pub range: Range,
    pub source: &'static str,
    pub kinds: Vec<String>,
    pub teams: Vec<String>,
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
