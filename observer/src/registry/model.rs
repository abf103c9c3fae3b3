//! The registry's data model: teams, APIs (with their matchers, auth and routes), applications (with workload
//! selectors) and keys (fingerprints and dated grants), plus the key-state rules at grant-window edges.
use std::path::PathBuf;

use crate::event::{KeyState, Timestamp};

use super::glob::Glob;
use super::route::RouteTemplate;

/// Default cap on distinct inferred routes per API.
pub const DEFAULT_MAX_INFERRED_ROUTES: usize = 200;
/// Headers searched for an API key when an API does not name its own.
pub const DEFAULT_KEY_HEADERS: &[&str] = &["X-Api-Key", "Api-Key"];

/// A validated registry, as loaded from a file. Every item keeps the line it was defined on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    pub teams: Vec<Team>,
    pub apis: Vec<Api>,
    pub applications: Vec<Application>,
    pub keys: Vec<Key>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Team {
    pub id: String,
    pub name: String,
    pub line_of_business: String,
    pub alert_contact: String,
    /// URL each new or escalated finding of the team is POSTed to ("" for none).
    pub alert_webhook: String,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Api {
    pub id: String,
    pub name: String,
    /// Owning team id.
    pub owner: String,
    /// Line of business of the API (defaults to the owner team's).
    pub line_of_business: String,
    /// Any of these recognises the API's traffic (several for a gateway service with several routes).
    pub matchers: Vec<ApiMatch>,
    /// Where the API's callers put their key, tried in order (the first location holding a credential wins).
    pub auth: Vec<Auth>,
    /// Route templates: those written in the registry, then those taken from `openapi`.
    pub routes: Vec<RouteTemplate>,
    pub openapi: Option<PathBuf>,
    pub max_inferred_routes: usize,
    pub line: usize,
}

impl Api {
    /// Host patterns of all matchers, each once, in order.
    pub fn hosts(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for h in self.matchers.iter().flat_map(|m| &m.hosts) {
            if !out.contains(&h.as_str()) {
                out.push(h.as_str());
            }
        }
        out
    }

    /// The first base path of any matcher ("" when none).
    pub fn first_base_path(&self) -> &str {
        self.matchers
            .iter()
            .find_map(|m| m.base_paths.first())
            .map_or("", String::as_str)
    }

    /// The auth kinds in order, comma-separated (`basic,bearer`).
    pub fn auth_label(&self) -> String {
        let kinds: Vec<&str> = self.auth.iter().map(|a| a.kind.as_str()).collect();
        kinds.join(",")
    }
}

/// How traffic is recognised as belonging to an API. Every criterion given must hold (a list holds when any of its
/// entries matches); criteria not given are not checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiMatch {
    /// Host globs, case-insensitive, compared with the Host header without its port.
    pub hosts: Vec<Glob>,
    /// Destination ports.
    pub ports: Vec<u16>,
    /// Path prefixes, matched on segment boundaries (`/v1/pay` does not match `/v1/payments`).
    pub base_paths: Vec<String>,
    /// Path regular expressions, anchored at the start of the path (gateway routes written as regexes).
    pub path_regex: Vec<PathRegex>,
    /// Request methods, upper case.
    pub methods: Vec<String>,
    /// Server process name globs.
    pub server_comm: Vec<Glob>,
    /// Server cgroup path globs.
    pub server_cgroup: Vec<Glob>,
    /// Kubernetes Services (`namespace/name`, globs allowed) one of which the server end backs (`--kubernetes`).
    pub services: Vec<Glob>,
    pub line: usize,
}

/// A path regular expression matched from the start of the path; equal when written the same.
#[derive(Debug, Clone)]
pub struct PathRegex {
    written: String,
    regex: regex::Regex,
}

impl PathRegex {
    pub fn new(written: &str) -> Result<Self, regex::Error> {
        Ok(PathRegex {
            written: written.to_string(),
            regex: regex::Regex::new(&format!("^(?:{written})"))?,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.written
    }

    pub fn is_match(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }

    /// Length of the literal text the expression starts with (its specificity next to base paths).
    pub fn literal_prefix_len(&self) -> usize {
        self.written
            .find(|c: char| !(c.is_alphanumeric() || matches!(c, '/' | '-' | '_')))
            .unwrap_or(self.written.len())
    }
}

impl PartialEq for PathRegex {
    fn eq(&self, other: &Self) -> bool {
        self.written == other.written
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// A key in a header (default `X-Api-Key`, `Api-Key`) or a query parameter.
    ApiKey,
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// `Authorization: Basic ...`; the username is the key.
    Basic,
    /// No credential is looked for.
    Anonymous,
}

impl AuthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::ApiKey => "api_key",
            AuthKind::Bearer => "bearer",
            AuthKind::Basic => "basic",
            AuthKind::Anonymous => "anonymous",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "api_key" => AuthKind::ApiKey,
            "bearer" => AuthKind::Bearer,
            "basic" => AuthKind::Basic,
            "anonymous" => AuthKind::Anonymous,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub kind: AuthKind,
    /// Header names for `api_key` (case-insensitive).
    pub headers: Vec<String>,
    /// Query parameter names for `api_key`.
    pub query: Vec<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            kind: AuthKind::ApiKey,
            headers: DEFAULT_KEY_HEADERS.iter().map(|s| s.to_string()).collect(),
            query: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Application {
    pub id: String,
    pub name: String,
    /// Owning team id.
    pub team: String,
    /// Defaults to the team's line of business.
    pub line_of_business: String,
    pub created_by: String,
    pub created_at: Option<Timestamp>,
    /// Id of the application this one replaces.
    pub predecessor: Option<String>,
    /// Recognise the application's traffic without a key; any selector may match.
    pub workload: Vec<WorkloadSelector>,
    pub line: usize,
}

/// Client workload selector: every criterion given must match. The Kubernetes terms (`namespace`, `workload`,
/// `labels`) match only a client that is a pod on this node known from the API (`observer run --kubernetes`).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSelector {
    pub comm: Option<Glob>,
    pub cgroup: Option<Glob>,
    pub namespace: Option<Glob>,
    /// `Kind/name` of the owning workload (`Deployment/checkout`; globs allowed in the name).
    pub workload: Option<Glob>,
    /// Labels the pod must carry with exactly these values (`matchLabels`).
    pub labels: Vec<(String, String)>,
    pub line: usize,
}

/// The workload kinds a `workload` selector may name (what pod identity resolves owners to).
pub const WORKLOAD_KINDS: &[&str] = &[
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ReplicaSet",
];

impl WorkloadSelector {
    pub fn matches(&self, comm: &str, cgroup: &str, pod: Option<&crate::kube::PodMeta>) -> bool {
        let host = self.comm.as_ref().is_none_or(|g| g.matches(comm))
            && self.cgroup.as_ref().is_none_or(|g| g.matches(cgroup));
        if !host || !self.uses_kubernetes() {
            return host;
        }
        let Some(pod) = pod else { return false };
        self.namespace
            .as_ref()
            .is_none_or(|g| g.matches(&pod.namespace))
            && self
                .workload
                .as_ref()
                .is_none_or(|g| g.matches(&pod.workload))
            && self
                .labels
                .iter()
                .all(|(k, v)| pod.labels.get(k).is_some_and(|have| have == v))
    }

    /// Whether a Kubernetes term is given.
    pub fn uses_kubernetes(&self) -> bool {
        self.namespace.is_some() || self.workload.is_some() || !self.labels.is_empty()
    }

    /// More criteria is more specific.
    pub fn specificity(&self) -> u8 {
        let terms = [
            self.comm.is_some(),
            self.cgroup.is_some(),
            self.namespace.is_some(),
            self.workload.is_some(),
        ];
        terms.iter().map(|&t| t as u8).sum::<u8>() + self.labels.len().min(200) as u8
    }
}

/// Where a key's fingerprint came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Fingerprint,
    Env(String),
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub id: String,
    pub application: String,
    /// Lower-case hex HMAC-SHA256 of the key under the deployment secret.
    pub fingerprint: String,
    /// Display suffix (may be empty when only a fingerprint is known).
    pub suffix: String,
    pub source: KeySource,
    /// Key-wide window: the key itself was issued / expires / was revoked (applies to every grant).
    pub window: Window,
    /// Dated grant entries; several entries for one API form its history (in chronological order).
    pub grants: Vec<Grant>,
    pub line: usize,
}

/// A validity window. `granted_at` is inclusive; the key is expired at and after `expires_at` and revoked at and
/// after `revoked_at`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Window {
    pub granted_by: String,
    pub granted_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub revoked_by: String,
}

impl Window {
    /// State of this window at `now`. Revocation wins over expiry and not-yet-valid.
    pub fn state(&self, now: Timestamp) -> KeyState {
        if self.revoked_at.is_some_and(|r| now >= r) {
            KeyState::Revoked
        } else if self.granted_at.is_some_and(|g| now < g) {
            KeyState::NotYetValid
        } else if self.expires_at.is_some_and(|e| now >= e) {
            KeyState::Expired
        } else {
            KeyState::Valid
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub api: String,
    pub window: Window,
    pub note: String,
    pub line: usize,
}

impl Key {
    /// The key's state for a call to `api` (None when no API matched) at `now`.
    ///
    /// The key-wide window decides first (revoked / not yet valid / expired). Then, for a matched API: no grant entry
    /// for it is `not_granted_for_api`; any entry valid at `now` is `valid`; otherwise the latest entry that had
    /// started by `now` decides (`revoked` or `expired`), and if none had started, `not_yet_valid`. When no API
    /// matched, the key-wide state stands.
    pub fn state(&self, api: Option<&str>, now: Timestamp) -> KeyState {
        let key_state = self.window.state(now);
        if key_state != KeyState::Valid {
            return key_state;
        }
        let Some(api) = api else {
            return KeyState::Valid;
        };
        let mut any = false;
        let mut latest_started: Option<(Timestamp, KeyState)> = None;
        for g in self.grants.iter().filter(|g| g.api == api) {
            any = true;
            let s = g.window.state(now);
            if s == KeyState::Valid {
                return KeyState::Valid;
            }
            if s != KeyState::NotYetValid {
                let at = g.window.granted_at.unwrap_or_default();
                if latest_started.is_none_or(|(t, _)| at >= t) {
                    latest_started = Some((at, s));
                }
            }
        }
        match (any, latest_started) {
            (false, _) => KeyState::NotGrantedForApi,
            (true, Some((_, s))) => s,
            (true, None) => KeyState::NotYetValid,
        }
    }
}

/// Parses an RFC 3339 timestamp or a plain `YYYY-MM-DD` date (midnight UTC).
pub fn parse_date(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if let Some(t) = Timestamp::parse_rfc3339(s) {
        return Some(t);
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(s, &fmt).ok()?;
    let dt = date.midnight().assume_utc();
    Some(Timestamp((dt.unix_timestamp_nanos() / 1000) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        parse_date(s).unwrap_or_else(|| panic!("{s:?} must parse as a date"))
    }

    fn window(g: Option<&str>, e: Option<&str>, r: Option<&str>) -> Window {
        Window {
            granted_by: "alice".into(),
            granted_at: g.map(ts),
            expires_at: e.map(ts),
            revoked_at: r.map(ts),
            revoked_by: r.map(|_| "bob".to_string()).unwrap_or_default(),
        }
    }

    fn key(window: Window, grants: Vec<(&str, Window)>) -> Key {
        Key {
            id: "k".into(),
            application: "app".into(),
            fingerprint: "00".repeat(32),
            suffix: String::new(),
            source: KeySource::Fingerprint,
            window,
            grants: grants
                .into_iter()
                .map(|(api, window)| Grant {
                    api: api.into(),
                    window,
                    note: String::new(),
                    line: 1,
                })
                .collect(),
            line: 1,
        }
    }

    #[test]
    fn dates_parse_both_forms() {
        assert_eq!(ts("1970-01-02"), Timestamp(86_400_000_000));
        assert_eq!(ts("1970-01-02T00:00:00Z"), Timestamp(86_400_000_000));
        assert_eq!(ts("1970-01-02T01:00:00+01:00"), Timestamp(86_400_000_000));
        assert!(parse_date("2026-13-01").is_none(), "month 13");
        assert!(parse_date("yesterday").is_none());
    }

    #[test]
    fn window_edges() {
        let w = window(Some("2026-03-02"), Some("2026-04-01"), None);
        let g = ts("2026-03-02");
        let e = ts("2026-04-01");
        assert_eq!(
            w.state(Timestamp(g.0 - 1)),
            KeyState::NotYetValid,
            "1µs before grant"
        );
        assert_eq!(w.state(g), KeyState::Valid, "at granted_at is valid");
        assert_eq!(
            w.state(Timestamp(e.0 - 1)),
            KeyState::Valid,
            "1µs before expiry"
        );
        assert_eq!(w.state(e), KeyState::Expired, "at expires_at is expired");
        let r = window(
            Some("2026-03-02"),
            Some("2026-04-01"),
            Some("2026-03-10T12:00:00Z"),
        );
        let rt = ts("2026-03-10T12:00:00Z");
        assert_eq!(
            r.state(Timestamp(rt.0 - 1)),
            KeyState::Valid,
            "1µs before revocation"
        );
        assert_eq!(r.state(rt), KeyState::Revoked, "at revoked_at is revoked");
        assert_eq!(r.state(e), KeyState::Revoked, "revocation wins over expiry");
    }

    #[test]
    fn key_state_per_api() {
        let k = key(
            Window::default(),
            vec![
                ("pay", window(Some("2026-01-01"), None, Some("2026-02-01"))),
                ("pay", window(Some("2026-03-01"), None, None)),
                (
                    "orders",
                    window(Some("2026-01-01"), Some("2026-02-01"), None),
                ),
                ("later", window(Some("2027-01-01"), None, None)),
            ],
        );
        assert_eq!(k.state(Some("pay"), ts("2026-01-15")), KeyState::Valid);
        assert_eq!(
            k.state(Some("pay"), ts("2026-02-15")),
            KeyState::Revoked,
            "between entries"
        );
        assert_eq!(
            k.state(Some("pay"), ts("2026-03-01")),
            KeyState::Valid,
            "re-granted"
        );
        assert_eq!(k.state(Some("orders"), ts("2026-02-01")), KeyState::Expired);
        assert_eq!(
            k.state(Some("later"), ts("2026-06-01")),
            KeyState::NotYetValid
        );
        assert_eq!(
            k.state(Some("other"), ts("2026-06-01")),
            KeyState::NotGrantedForApi
        );
        assert_eq!(
            k.state(None, ts("2026-06-01")),
            KeyState::Valid,
            "no API: key-wide state"
        );
    }

    #[test]
    fn key_wide_window_wins() {
        let k = key(
            window(None, None, Some("2026-05-01")),
            vec![("pay", window(Some("2026-01-01"), None, None))],
        );
        assert_eq!(k.state(Some("pay"), ts("2026-04-30")), KeyState::Valid);
        assert_eq!(k.state(Some("pay"), ts("2026-05-01")), KeyState::Revoked);
        assert_eq!(
            k.state(Some("nope"), ts("2026-05-01")),
            KeyState::Revoked,
            "revoked key is revoked everywhere"
        );
        assert_eq!(k.state(None, ts("2026-05-02")), KeyState::Revoked);
    }
}
