//! The one record the agent produces per HTTP exchange, and its stable NDJSON / ClickHouse field names.
//!
//! `flow` fills the capture fields, `enrich` the business-context fields; sinks serialize it. Field names are a
//! public contract (they become ClickHouse columns): add fields, never rename them.
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

pub use crate::shared_str::{Interner, SharedStr};

/// Defines an enum stored as a ClickHouse `Enum8`: each variant's code (its discriminant and its `Enum8` value,
/// fixed forever once released) and its name (NDJSON value and `Enum8` label) are written here once; `ALL`,
/// `as_str`, `code`, `from_code`, serde and [`enum8`] derive from them.
macro_rules! stored_enum {
    (
        $(#[$m:meta])*
        pub enum $name:ident default $def:ident {
            $( $(#[$vm:meta])* $var:ident = $code:literal => $text:literal, )*
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(i8)]
        pub enum $name {
            $( $(#[$vm])* $var = $code, )*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [$name; [$($text),*].len()] = [$($name::$var),*];
            /// Every name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$var => $text,)*
                }
            }

            /// The stored `Enum8` value.
            pub const fn code(self) -> i8 {
                self as i8
            }

            /// The variant stored as `code`; `None` for a code this binary does not know.
            pub fn from_code(code: i8) -> Option<Self> {
                Self::ALL.into_iter().find(|v| v.code() == code)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$def
            }
        }

        impl StoredEnum for $name {
            const ALL: &'static [Self] = &$name::ALL;
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
            fn code(self) -> i8 {
                $name::code(self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<str>::deserialize(d)?;
                $name::ALL
                    .into_iter()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| serde::de::Error::unknown_variant(&s, $name::NAMES))
            }
        }
    };
}

/// What the sinks need of an enum field: its variants, names and stored codes.
pub trait StoredEnum: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
    fn code(self) -> i8;
}

/// The ClickHouse `Enum8` type of `T`, values in code order: `Enum8('client' = 1, 'server' = 2, 'both' = 3)`.
pub fn enum8<T: StoredEnum>() -> String {
    let mut all = T::ALL.to_vec();
    all.sort_by_key(|v| v.code());
    let values: Vec<String> = all
        .iter()
        .map(|v| format!("'{}' = {}", v.as_str(), v.code()))
        .collect();
    format!("Enum8({})", values.join(", "))
}

stored_enum! {
    /// Which end(s) of the exchange a local socket observed.
    pub enum Side default Client {
        Client = 1 => "client",
        Server = 2 => "server",
        Both = 3 => "both",
    }
}

stored_enum! {
    /// State of the API key an exchange presented, against the registry.
    pub enum KeyState default None {
        Valid = 1 => "valid",
        Unknown = 2 => "unknown",
        NotGrantedForApi = 3 => "not_granted_for_api",
        Expired = 4 => "expired",
        Revoked = 5 => "revoked",
        NotYetValid = 6 => "not_yet_valid",
        None = 0 => "none",
    }
}

stored_enum! {
    /// How the calling application was identified.
    pub enum AttributedBy default None {
        Key = 1 => "key",
        Workload = 2 => "workload",
        None = 0 => "none",
    }
}

stored_enum! {
    /// How an exchange's origin (the first keyed hop it was made for) was found; see `origin`.
    pub enum OriginBy default None {
        /// Hop 0: the exchange's own key, an edge call (no local client), or its own workload.
        OwnContext = 1 => "self",
        /// Its W3C `traceparent` trace id was seen on an inbound request in flight.
        Trace = 2 => "trace",
        /// Its `X-Request-Id` was seen on an inbound request in flight.
        RequestId = 3 => "request_id",
        /// Made by a process while exactly one inbound request was in flight on that process's server sockets.
        Causal = 4 => "causal",
        /// Several inbound requests were in flight on that process and no id decided: none chosen.
        Ambiguous = 5 => "ambiguous",
        /// No parent found and no own context (or the decision ran out of time or memory).
        None = 0 => "none",
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

/// Every field of [`Event`], described once. The struct itself, the ClickHouse columns of `http_requests`
/// (`sink::clickhouse::migrations`), the RowBinary encoder (`sink::clickhouse::rowbinary`), the NDJSON writer
/// (`sink::ndjson`) and the tests' row decoder (`observer/tests/common`) are all generated from this table by
/// passing it to a macro of theirs: `event_fields!(their_macro)`.
///
/// One line per field: `name: RustType => ClickHouse type, codec ("" for the default), schema version`. Codecs
/// are the table's now (a codec change is brought to existing tables by a migration, as version 13 did). The
/// version is the ClickHouse migration that adds the column (1 for the original table; a new field takes a new
/// version, listed in `sink::clickhouse::migrations::MIGRATIONS`, which adds the column to existing tables). Names
/// are a public contract (NDJSON keys and ClickHouse columns): add fields, never rename or reorder released ones.
/// The Rust type must be one the sinks know how to write (see `RowBinary` and `JsonValue`; a new type is a
/// compile error there until it is added). See README, "How to add an event field".
#[macro_export]
macro_rules! event_fields {
    ($then:ident) => {
        $then! {
            // --- capture (flow) ---
            /// Request start (first byte of the request seen).
            ts: $crate::event::Timestamp => "DateTime64(6, 'UTC')", "CODEC(Delta(8), T64, ZSTD(1))", 1;
            /// Request start to end of response headers, microseconds.
            duration_us: u64 => "UInt64", "CODEC(T64, ZSTD(1))", 1;
            side: $crate::event::Side => $crate::event::enum8::<$crate::event::Side>(), "CODEC(ZSTD(1))", 1;
            method: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            host: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            /// Path without the query string.
            path: String => "String", "CODEC(ZSTD(3))", 1;
            /// Query parameter names only (values never leave the agent).
            query_keys: Vec<String> => "Array(LowCardinality(String))", "CODEC(ZSTD(1))", 1;
            /// Response status; 0 when no response was seen (connection closed or timed out).
            status: u16 => "UInt16", "CODEC(ZSTD(1))", 1;
            /// Request bytes on the wire: headers plus body.
            req_bytes: u64 => "UInt64", "CODEC(T64, ZSTD(1))", 1;
            /// Response bytes on the wire: headers plus body.
            resp_bytes: u64 => "UInt64", "CODEC(T64, ZSTD(1))", 1;
            /// Stored as IPv6 (IPv4 as `::ffff:a.b.c.d`).
            src_ip: std::net::IpAddr => "IPv6", "CODEC(ZSTD(1))", 1;
            src_port: u16 => "UInt16", "CODEC(ZSTD(3))", 1;
            dst_ip: std::net::IpAddr => "IPv6", "CODEC(ZSTD(1))", 1;
            dst_port: u16 => "UInt16", "CODEC(T64, ZSTD(1))", 1;
            client_pid: u32 => "UInt32", "CODEC(T64, ZSTD(1))", 1;
            client_comm: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            /// cgroup v2 path of the client socket ("" when not local).
            client_cgroup: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            server_pid: u32 => "UInt32", "CODEC(T64, ZSTD(1))", 1;
            server_comm: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            server_cgroup: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            user_agent: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            /// From `X-Request-Id`, else the trace id of `traceparent`.
            request_id: String => "String", "CODEC(ZSTD(3))", 1;
            /// Headers exceeded the capture cap.
            truncated: bool => "Bool", "CODEC(T64, ZSTD(1))", 1;
            /// Stable id of the connection (socket cookie of the client socket when local, else of the server
            /// socket).
            conn_id: u64 => "UInt64", "CODEC(ZSTD(3))", 1;
            /// The connection closed before a message's declared end: its size counts the bytes sent.
            incomplete: bool => "Bool", "CODEC(T64, ZSTD(1))", 4;
            /// Why the request's or response's framing may be read differently by another reader (request
            /// smuggling): `bare_lf`, `cl_and_te`, `content_length`, `transfer_encoding`, `follows_anomaly`
            /// (`http::Anomalies`); empty for nearly every exchange.
            framing_anomaly: Vec<String> => "Array(LowCardinality(String))", "CODEC(ZSTD(1))", 4;

            // --- business context (enrich) ---
            api_id: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            api_name: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            api_owner: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            route: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            app_id: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            app_name: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            app_team: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            line_of_business: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            key_fingerprint: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            key_suffix: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 1;
            key_state: $crate::event::KeyState => $crate::event::enum8::<$crate::event::KeyState>(), "CODEC(ZSTD(1))", 1;
            attributed_by: $crate::event::AttributedBy
                => $crate::event::enum8::<$crate::event::AttributedBy>(), "CODEC(ZSTD(1))", 1;

            // --- Kubernetes pod identity (`observer run --kubernetes`; empty when the end is no pod on this node) ---
            /// Pod name of the client end.
            client_pod: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 6;
            client_namespace: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 6;
            /// Owning workload as `Kind/name` (`Deployment/checkout`, `CronJob/report`; "" for a bare pod).
            client_workload: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 6;
            /// The pod's labels among `--pod-labels`, as `key=value`.
            client_labels: Vec<String> => "Array(LowCardinality(String))", "CODEC(ZSTD(1))", 6;
            server_pod: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 6;
            server_namespace: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 6;
            server_workload: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 6;
            server_labels: Vec<String> => "Array(LowCardinality(String))", "CODEC(ZSTD(1))", 6;

            // --- request identity (enrich) ---
            /// Keyed hash (SipHash-1-3 under the deployment's key secret) of method, host, target with its query
            /// values and the captured body prefix: equal for the same request, revealing no value; 0 when unknown.
            /// 32 bits (`enrich::request_hash`), stored in 4 bytes by T64 (schema 15).
            request_hash: u64 => "UInt64", "CODEC(T64, ZSTD(1))", 9;
            // --- origin across hops (`origin`): on whose behalf the exchange was made ---
            /// The first keyed hop's application (hop 0: this exchange's own).
            origin_app_id: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 10;
            origin_key_fingerprint: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 10;
            origin_api_id: $crate::event::SharedStr => "LowCardinality(String)", "CODEC(ZSTD(1))", 10;
            /// The inbound exchange this one was made for (its `conn_id` and `ts`); 0 and the epoch at hop 0.
            parent_conn_id: u64 => "UInt64", "CODEC(T64, ZSTD(1))", 10;
            parent_ts: $crate::event::Timestamp => "DateTime64(6, 'UTC')", "CODEC(Delta(8), ZSTD(1))", 10;
            /// 0 at the edge, the parent's hop + 1 below it.
            hop: u16 => "UInt16", "CODEC(T64, ZSTD(1))", 10;
            origin_by: $crate::event::OriginBy => $crate::event::enum8::<$crate::event::OriginBy>(), "CODEC(ZSTD(1))", 10;
            /// Keyed hashes (as `request_hash`) of the W3C trace id of `traceparent` and of `X-Request-Id`; 0 when
            /// absent. Hops on different nodes are joined on them in ClickHouse (`origin_join`).
            trace_id_hash: u64 => "UInt64", "CODEC(T64, ZSTD(1))", 11;
            request_id_hash: u64 => "UInt64", "CODEC(T64, ZSTD(1))", 11;

            // --- new fields go here (or at the end of the section they belong to), with a new schema version ---
        }
    };
}

/// Defines [`Event`] and its `Default` from [`event_fields!`].
macro_rules! define_event {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty => $ch:expr, $codec:literal, $since:literal; )*) => {
        /// One HTTP exchange (request and its response), with capture identity and business context. Fields:
        /// see [`event_fields!`].
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub struct Event {
            $( $(#[$doc])* pub $name: $ty, )*
        }

        impl Default for Event {
            fn default() -> Self {
                Event {
                    $( $name: Empty::empty(), )*
                }
            }
        }
    };
}

crate::event_fields!(define_event);

/// The value of a field in `Event::default()`: zero, empty, the enum's default, the unspecified address.
trait Empty {
    fn empty() -> Self;
}

macro_rules! empty_is_default {
    ($($t:ty),*) => {
        $(impl Empty for $t {
            fn empty() -> Self {
                Self::default()
            }
        })*
    };
}

empty_is_default!(
    u16,
    u32,
    u64,
    bool,
    String,
    SharedStr,
    Vec<String>,
    Timestamp,
    Side,
    KeyState,
    AttributedBy,
    OriginBy
);

impl Empty for IpAddr {
    fn empty() -> Self {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    }
}

/// One finished exchange: the event plus the request material that may hold secrets. Only `event` outlives
/// enrichment; `request` is dropped in the agent's memory and never serialized.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exchange {
    pub event: Event,
    pub request: RequestExtras,
}

/// What a request carried that enrichment reads and nothing stores (it may hold credentials).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestExtras {
    /// Request headers as captured (name, value), in order.
    pub headers: crate::http::Headers,
    /// Raw query string without the leading `?`.
    pub raw_query: String,
    /// The first bytes of the request's body as captured: only hashed into `request_hash`.
    pub body_prefix: BodyPrefix,
    /// Where `headers` hold `X-Request-Id` and `traceparent`, when flow looked them up already (None: enrichment
    /// looks them up).
    pub propagated: Option<PropagatedAt>,
}

/// Finished exchanges as `flow` hands them over: the events in one vector and their request material in another,
/// side by side. Enrichment reads both; then the events go to the sinks as they lie, where taking each out of an
/// [`Exchange`] copied it (an [`Event`] is about 500 bytes).
#[derive(Debug, Default)]
pub struct Exchanges {
    events: Vec<Event>,
    /// `requests[i]` is what `events[i]`'s request carried.
    requests: Vec<RequestExtras>,
}

impl Exchanges {
    pub fn push(&mut self, Exchange { event, request }: Exchange) {
        self.events.push(event);
        self.requests.push(request);
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Drops every exchange, keeping the vectors' room.
    pub fn clear(&mut self) {
        self.events.clear();
        self.requests.clear();
    }

    /// Moves every exchange of `other` to the end of these (handing its vectors over when these are empty).
    pub fn append(&mut self, other: &mut Exchanges) {
        if self.is_empty() {
            std::mem::swap(self, other);
        } else {
            self.events.append(&mut other.events);
            self.requests.append(&mut other.requests);
        }
    }

    /// Keeps the exchanges whose event `keep` accepts, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&Event) -> bool) {
        // Kept ones swap forward past the dropped ones: both vectors stay in step, with no allocation.
        let mut kept = 0;
        for i in 0..self.events.len() {
            if keep(&self.events[i]) {
                self.events.swap(kept, i);
                self.requests.swap(kept, i);
                kept += 1;
            }
        }
        self.events.truncate(kept);
        self.requests.truncate(kept);
    }

    /// Each exchange's event, to change, with its request's material.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&mut Event, &RequestExtras)> {
        self.events.iter_mut().zip(self.requests.iter())
    }

    /// Takes every exchange out, in order.
    pub fn drain(&mut self) -> impl Iterator<Item = Exchange> + '_ {
        self.events
            .drain(..)
            .zip(self.requests.drain(..))
            .map(|(event, request)| Exchange { event, request })
    }

    /// Moves every event to the end of `out` (handing the vector over when `out` is empty) and drops the requests'
    /// material.
    pub fn move_events_into(&mut self, out: &mut Vec<Event>) {
        if out.is_empty() {
            std::mem::swap(out, &mut self.events);
        } else {
            out.append(&mut self.events);
        }
        self.requests.clear();
    }
}

/// Where a request's propagated ids lie in its headers (None: the field is absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PropagatedAt {
    pub request_id: Option<crate::http::ValueAt>,
    pub traceparent: Option<crate::http::ValueAt>,
}

/// Most body bytes of a request that go into its `request_hash` (the kernel copies no more of a body whose framing
/// it can read).
pub use observer_common::BODY_PREFIX;

/// The first [`BODY_PREFIX`] bytes of a request's body as the capture saw them, inline (no allocation). Bytes are
/// the body on the wire: a chunked body's chunk-size lines are part of it. When the kernel's per-message copy
/// (`capture_bytes`) ends inside the first 64 body bytes, the prefix is what was copied; a segment lost in capture
/// ends it (the walker stops at a gap).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BodyPrefix {
    len: u8,
    bytes: [u8; BODY_PREFIX],
}

impl Default for BodyPrefix {
    fn default() -> Self {
        BodyPrefix {
            len: 0,
            bytes: [0; BODY_PREFIX],
        }
    }
}

impl BodyPrefix {
    /// Appends what still fits of `more`, the bytes after those already kept.
    pub fn extend(&mut self, more: &[u8]) {
        let at = self.len as usize;
        let take = more.len().min(BODY_PREFIX - at);
        self.bytes[at..at + take].copy_from_slice(&more[..take]);
        self.len += take as u8;
    }

    pub fn is_full(&self) -> bool {
        self.len as usize == BODY_PREFIX
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl From<&[u8]> for BodyPrefix {
    fn from(bytes: &[u8]) -> Self {
        let mut b = BodyPrefix::default();
        b.extend(bytes);
        b
    }
}

/// The length only: the bytes may hold credentials.
impl std::fmt::Debug for BodyPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BodyPrefix({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_have_fixed_codes_and_enum8_lists_them_in_code_order() {
        assert_eq!(
            enum8::<Side>(),
            "Enum8('client' = 1, 'server' = 2, 'both' = 3)"
        );
        assert_eq!(
            enum8::<KeyState>(),
            "Enum8('none' = 0, 'valid' = 1, 'unknown' = 2, 'not_granted_for_api' = 3, \
             'expired' = 4, 'revoked' = 5, 'not_yet_valid' = 6)"
        );
        assert_eq!(
            enum8::<AttributedBy>(),
            "Enum8('none' = 0, 'key' = 1, 'workload' = 2)"
        );
        for k in KeyState::ALL {
            assert_eq!(KeyState::from_code(k.code()), Some(k));
            let json = serde_json::to_string(&k).expect("json");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<KeyState>(&json).expect("back"), k);
        }
        assert_eq!(
            enum8::<OriginBy>(),
            "Enum8('none' = 0, 'self' = 1, 'trace' = 2, 'request_id' = 3, 'causal' = 4, 'ambiguous' = 5)"
        );
        assert_eq!(KeyState::from_code(7), None);
        let err = serde_json::from_str::<Side>("\"sideways\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sideways") && err.contains("client"), "{err}");
        assert_eq!(
            (
                Side::default(),
                KeyState::default(),
                AttributedBy::default()
            ),
            (Side::Client, KeyState::None, AttributedBy::None)
        );
    }

    /// An exchange whose event and request material both carry `n`, to check that they stay paired.
    fn numbered(n: u16) -> Exchange {
        Exchange {
            event: Event {
                src_port: n,
                ..Event::default()
            },
            request: RequestExtras {
                raw_query: n.to_string(),
                ..RequestExtras::default()
            },
        }
    }

    fn ports(x: &Exchanges) -> Vec<u16> {
        x.events().iter().map(|e| e.src_port).collect()
    }

    #[test]
    fn exchanges_keep_events_and_requests_in_step() {
        let mut a = Exchanges::default();
        for n in 0..10 {
            a.push(numbered(n));
        }
        // Drop the odd ones and 4: the rest keep their order and their own request.
        a.retain(|e| e.src_port % 2 == 0 && e.src_port != 4);
        assert_eq!(ports(&a), [0, 2, 6, 8]);
        for (ev, req) in a.iter_mut() {
            assert_eq!(req.raw_query, ev.src_port.to_string());
            ev.status = 200;
        }
        // Appending to an empty set hands the vectors over; to a filled one, adds after.
        let mut b = Exchanges::default();
        b.append(&mut a);
        assert!(a.is_empty());
        a.push(numbered(11));
        a.append(&mut b);
        assert_eq!(ports(&a), [11, 0, 2, 6, 8]);
        assert!(b.is_empty());
        let back: Vec<Exchange> = a.drain().collect();
        assert!(a.is_empty());
        assert_eq!(back.len(), 5);
        assert!(back
            .iter()
            .all(|x| x.request.raw_query == x.event.src_port.to_string()));
        assert_eq!(back[1].event.status, 200);
        // The events go to a batch whole, after what it holds; the requests' material is dropped.
        let mut batch = vec![numbered(20).event];
        back.into_iter().for_each(|x| a.push(x));
        a.move_events_into(&mut batch);
        assert_eq!(
            batch.iter().map(|e| e.src_port).collect::<Vec<_>>(),
            [20, 11, 0, 2, 6, 8]
        );
        assert!(a.is_empty() && a.requests.is_empty());
        a.push(numbered(30));
        a.clear();
        assert!(a.is_empty() && a.requests.is_empty());
        a.push(numbered(30));
        let mut empty = Vec::new();
        a.move_events_into(&mut empty);
        assert_eq!(empty.len(), 1);
        assert!(a.is_empty() && a.requests.is_empty());
    }
}
