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

/// The rows of one registry state. `version` must grow with every state written (the load time in microseconds
/// does); for a key granted the same API several times (revoked, then granted again) the latest entry is the
/// current grant, and earlier entries live on in earlier versions.
pub fn from_registry(
    reg: &crate::registry::Registry,
    version: u64,
    loaded_at: Timestamp,
) -> RegistryRows {
    let apis = reg
        .apis
        .iter()
        .map(|a| ApiRow {
            api_id: a.id.clone(),
            name: a.name.clone(),
            owner: a.owner.clone(),
            hosts: a
                .matcher
                .hosts
                .iter()
                .map(|h| h.as_str().to_string())
                .collect(),
            base_path: a.matcher.base_paths.first().cloned().unwrap_or_default(),
            version,
            loaded_at,
            deleted: false,
        })
        .collect();
    let applications = reg
        .applications
        .iter()
        .map(|a| ApplicationRow {
            app_id: a.id.clone(),
            name: a.name.clone(),
            team: a.team.clone(),
            line_of_business: a.line_of_business.clone(),
            workloads: a
                .workload
                .iter()
                .map(|w| {
                    let mut parts = Vec::new();
                    if let Some(c) = &w.comm {
                        parts.push(format!("comm={}", c.as_str()));
                    }
                    if let Some(c) = &w.cgroup {
                        parts.push(format!("cgroup={}", c.as_str()));
                    }
                    parts.join(" ")
                })
                .collect(),
            version,
            loaded_at,
            deleted: false,
        })
        .collect();
    let mut key_grants: Vec<KeyGrantRow> = Vec::new();
    for k in &reg.keys {
        for g in &k.grants {
            let row = KeyGrantRow {
                key_fingerprint: k.fingerprint.clone(),
                api_id: g.api.clone(),
                key_suffix: k.suffix.clone(),
                app_id: k.application.clone(),
                valid_from: g.window.granted_at.or(k.window.granted_at),
                valid_until: g.window.expires_at.or(k.window.expires_at),
                revoked_at: g.window.revoked_at.or(k.window.revoked_at),
                version,
                loaded_at,
                deleted: false,
            };
            match key_grants
                .iter_mut()
                .find(|r| r.key_fingerprint == row.key_fingerprint && r.api_id == row.api_id)
            {
                Some(existing) => *existing = row,
                None => key_grants.push(row),
            }
        }
    }
    let teams = reg
        .teams
        .iter()
        .map(|t| TeamRow {
            team: t.id.clone(),
            line_of_business: t.line_of_business.clone(),
            owner: t.alert_contact.clone(),
            version,
            loaded_at,
            deleted: false,
        })
        .collect();
    RegistryRows {
        apis,
        applications,
        key_grants,
        teams,
    }
}

/// Adds to `next` (written as `version`) a `deleted` row for every id of `prev` that `next` no longer has.
pub fn with_deletions(
    prev: &RegistryRows,
    mut next: RegistryRows,
    version: u64,
    loaded_at: Timestamp,
) -> RegistryRows {
    for a in &prev.apis {
        if !next.apis.iter().any(|n| n.api_id == a.api_id) {
            next.apis.push(ApiRow {
                version,
                loaded_at,
                deleted: true,
                ..a.clone()
            });
        }
    }
    for a in &prev.applications {
        if !next.applications.iter().any(|n| n.app_id == a.app_id) {
            next.applications.push(ApplicationRow {
                version,
                loaded_at,
                deleted: true,
                ..a.clone()
            });
        }
    }
    for k in &prev.key_grants {
        if !next
            .key_grants
            .iter()
            .any(|n| n.key_fingerprint == k.key_fingerprint && n.api_id == k.api_id)
        {
            next.key_grants.push(KeyGrantRow {
                version,
                loaded_at,
                deleted: true,
                ..k.clone()
            });
        }
    }
    for t in &prev.teams {
        if !next.teams.iter().any(|n| n.team == t.team) {
            next.teams.push(TeamRow {
                version,
                loaded_at,
                deleted: true,
                ..t.clone()
            });
        }
    }
    next
}
