//! The one record the agent produces per HTTP exchange, and its stable NDJSON / ClickHouse field names.
//!
//! `flow` fills the capture fields, `enrich` the business-context fields; sinks serialize it. Field names are a
//! public contract (they become ClickHouse columns): add fields, never rename them.
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Which end(s) of the exchange a local socket observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    #[default]
    Client,
    Server,
    Both,
}

impl Side {
    /// Every variant.
    pub const ALL: [Side; 3] = [Side::Client, Side::Server, Side::Both];

    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
            Side::Both => "both",
        }
    }
}

/// State of the API key an exchange presented, against the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Valid,
    Unknown,
    NotGrantedForApi,
    Expired,
    Revoked,
    NotYetValid,
    #[default]
    None,
}

impl KeyState {
    /// Every variant.
    pub const ALL: [KeyState; 7] = [
        KeyState::Valid,
        KeyState::Unknown,
        KeyState::NotGrantedForApi,
        KeyState::Expired,
        KeyState::Revoked,
        KeyState::NotYetValid,
        KeyState::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Valid => "valid",
            KeyState::Unknown => "unknown",
            KeyState::NotGrantedForApi => "not_granted_for_api",
            KeyState::Expired => "expired",
            KeyState::Revoked => "revoked",
            KeyState::NotYetValid => "not_yet_valid",
            KeyState::None => "none",
        }
    }
}

/// How the calling application was identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AttributedBy {
    Key,
    Workload,
    #[default]
    None,
}

impl AttributedBy {
    /// Every variant.
    pub const ALL: [AttributedBy; 3] = [
        AttributedBy::Key,
        AttributedBy::Workload,
        AttributedBy::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttributedBy::Key => "key",
            AttributedBy::Workload => "workload",
            AttributedBy::None => "none",
        }
    }
}

/// Wall-clock time in microseconds since the Unix epoch; serialized as RFC 3339 with microseconds (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_micros() as i64)
    }

    pub fn to_rfc3339(self) -> String {
        let dt = time::OffsetDateTime::from_unix_timestamp_nanos(self.0 as i128 * 1000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let fmt = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        );
        dt.format(&fmt).unwrap_or_default()
    }

    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let dt =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
        Some(Timestamp((dt.unix_timestamp_nanos() / 1000) as i64))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid RFC 3339 time {s:?}")))
    }
}

/// An immutable string shared by reference count. Process names and cgroup paths repeat for every exchange of a
/// socket: events share one copy instead of allocating and freeing their own.
/// Serialized as a plain string; the empty string allocates nothing.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedStr(Option<Arc<str>>);

impl SharedStr {
    pub fn as_str(&self) -> &str {
        self.0.as_deref().unwrap_or("")
    }
}

impl Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for SharedStr {
    fn from(s: &str) -> Self {
        SharedStr((!s.is_empty()).then(|| Arc::from(s)))
    }
}

impl From<String> for SharedStr {
    fn from(s: String) -> Self {
        SharedStr((!s.is_empty()).then(|| Arc::from(s)))
    }
}

impl From<&String> for SharedStr {
    fn from(s: &String) -> Self {
        SharedStr::from(s.as_str())
    }
}

impl PartialEq<str> for SharedStr {
    fn eq(&self, o: &str) -> bool {
        self.as_str() == o
    }
}

impl PartialEq<&str> for SharedStr {
    fn eq(&self, o: &&str) -> bool {
        self.as_str() == *o
    }
}

impl PartialEq<String> for SharedStr {
    fn eq(&self, o: &String) -> bool {
        self.as_str() == o
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SharedStr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SharedStr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(SharedStr::from(String::deserialize(d)?))
    }
}

/// One HTTP exchange (request and its response), with capture identity and business context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    // --- capture (flow) ---
    /// Request start (first byte of the request seen).
    pub ts: Timestamp,
    /// Request start to end of response headers, microseconds.
    pub duration_us: u64,
    pub side: Side,
    pub method: String,
    pub host: String,
    /// Path without the query string.
    pub path: String,
    /// Query parameter names only (values never leave the agent).
    pub query_keys: Vec<String>,
    /// Response status; 0 when no response was seen (connection closed or timed out).
    pub status: u16,
    /// Request bytes on the wire: headers plus body.
    pub req_bytes: u64,
    /// Response bytes on the wire: headers plus body.
    pub resp_bytes: u64,
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub client_pid: u32,
    pub client_comm: SharedStr,
    /// cgroup v2 path of the client socket ("" when not local).
    pub client_cgroup: SharedStr,
    pub server_pid: u32,
    pub server_comm: SharedStr,
    pub server_cgroup: SharedStr,
    pub user_agent: String,
    /// From `X-Request-Id`, else the trace id of `traceparent`.
    pub request_id: String,
    /// Headers exceeded the capture cap.
    pub truncated: bool,
    /// Stable id of the connection (socket cookie of the client socket when local, else of the server socket).
    pub conn_id: u64,

    // --- business context (enrich) ---
    pub api_id: String,
    pub api_name: String,
    pub api_owner: String,
    pub route: String,
    pub app_id: String,
    pub app_name: String,
    pub app_team: String,
    pub line_of_business: String,
    pub key_fingerprint: String,
    pub key_suffix: String,
    pub key_state: KeyState,
    pub attributed_by: AttributedBy,
}

impl Default for Event {
    fn default() -> Self {
        Event {
            ts: Timestamp::default(),
            duration_us: 0,
            side: Side::default(),
            method: String::new(),
            host: String::new(),
            path: String::new(),
            query_keys: Vec::new(),
            status: 0,
            req_bytes: 0,
            resp_bytes: 0,
            src_ip: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            src_port: 0,
            dst_ip: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            dst_port: 0,
            client_pid: 0,
            client_comm: SharedStr::default(),
            client_cgroup: SharedStr::default(),
            server_pid: 0,
            server_comm: SharedStr::default(),
            server_cgroup: SharedStr::default(),
            user_agent: String::new(),
            request_id: String::new(),
            truncated: false,
            conn_id: 0,
            api_id: String::new(),
            api_name: String::new(),
            api_owner: String::new(),
            route: String::new(),
            app_id: String::new(),
            app_name: String::new(),
            app_team: String::new(),
            line_of_business: String::new(),
            key_fingerprint: String::new(),
            key_suffix: String::new(),
            key_state: KeyState::None,
            attributed_by: AttributedBy::None,
        }
    }
}

/// What `flow` hands to `enrich`: the event plus request material that may hold secrets. Only `event` outlives
/// enrichment; the rest is dropped in the agent's memory and never serialized.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exchange {
    pub event: Event,
    /// Request headers as captured (name, value), in order; may contain credentials.
    pub request_headers: crate::http::Headers,
    /// Raw query string without the leading `?` (may contain credentials).
    pub raw_query: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_str_reads_compares_and_serializes_as_a_plain_string() {
        let a = SharedStr::from("nginx");
        let b = a.clone();
        assert!(
            std::ptr::eq(a.as_str(), b.as_str()),
            "clones share one copy"
        );
        assert_eq!(a, "nginx");
        assert_eq!(a, String::from("nginx"));
        assert_eq!(&*a, "nginx");
        assert_eq!(format!("{a} {a:?}"), "nginx \"nginx\"");
        assert!(
            SharedStr::from(String::new()).0.is_none(),
            "empty holds no allocation"
        );
        assert_eq!(SharedStr::from(""), SharedStr::default());
        assert_eq!(serde_json::to_string(&a).expect("json"), "\"nginx\"");
        let back: SharedStr = serde_json::from_str("\"/system.slice\"").expect("json");
        assert_eq!(back, "/system.slice");
    }
}
