//! Registry rows as stored in ClickHouse (`apis`, `applications`, `key_grants`, `teams`).
//!
//! Each row is one id at one registry `version` (any number that grows when the registry changes, e.g. a load
//! counter or the source's modification time); writing the same version again replaces the row, a new version adds
//! a history row. `deleted` marks an id that disappeared from the registry at that version. The `*_latest` views and
//! `*_dict` dictionaries (see [`super::schema`]) expose the newest non-deleted version of every id.
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::event::Timestamp;

/// Serde for [`Timestamp`] as ClickHouse `DateTime64(6)` (Int64 microseconds).
pub mod ts_micros {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(t.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        i64::deserialize(d).map(Timestamp)
    }

    /// For `Nullable(DateTime64(6))`.
    pub mod option {
        use super::Timestamp;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&t.0),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
            Option::<i64>::deserialize(d).map(|o| o.map(Timestamp))
        }
    }
}

/// Table `apis`.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize, Default)]
pub struct ApiRow {
    pub api_id: String,
    pub name: String,
    pub owner: String,
    /// Host names the API is served under.
    pub hosts: Vec<String>,
    pub base_path: String,
    pub version: u64,
    #[serde(with = "ts_micros")]
    pub loaded_at: Timestamp,
    pub deleted: bool,
}

/// Table `applications`.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize, Default)]
pub struct ApplicationRow {
    pub app_id: String,
    pub name: String,
    pub team: String,
    pub line_of_business: String,
    /// Workload selectors (e.g. cgroup or process patterns) that identify the application without a key.
    pub workloads: Vec<String>,
    pub version: u64,
    #[serde(with = "ts_micros")]
    pub loaded_at: Timestamp,
    pub deleted: bool,
}

/// Table `key_grants`: one API key granted to one API, with its validity dates.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize, Default)]
pub struct KeyGrantRow {
    pub key_fingerprint: String,
    pub api_id: String,
    pub key_suffix: String,
    pub app_id: String,
    #[serde(with = "ts_micros::option")]
    pub valid_from: Option<Timestamp>,
    #[serde(with = "ts_micros::option")]
    pub valid_until: Option<Timestamp>,
    #[serde(with = "ts_micros::option")]
    pub revoked_at: Option<Timestamp>,
    pub version: u64,
    #[serde(with = "ts_micros")]
    pub loaded_at: Timestamp,
    pub deleted: bool,
}

/// Table `teams`.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize, Default)]
pub struct TeamRow {
    pub team: String,
    pub line_of_business: String,
    pub owner: String,
    pub version: u64,
    #[serde(with = "ts_micros")]
    pub loaded_at: Timestamp,
    pub deleted: bool,
}

/// One registry state to write; empty vectors write nothing for that table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryRows {
    pub apis: Vec<ApiRow>,
    pub applications: Vec<ApplicationRow>,
    pub key_grants: Vec<KeyGrantRow>,
    pub teams: Vec<TeamRow>,
}

impl RegistryRows {
    pub fn is_empty(&self) -> bool {
        self.apis.is_empty()
            && self.applications.is_empty()
            && self.key_grants.is_empty()
            && self.teams.is_empty()
    }

    pub fn len(&self) -> usize {
        self.apis.len() + self.applications.len() + self.key_grants.len() + self.teams.len()
    }
}
