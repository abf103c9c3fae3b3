//! Registry rows as stored in ClickHouse (`apis`, `applications`, `key_grants`, `teams`).
//!
//! Each row is one id at one registry `version` (any number that grows when the registry changes, e.g. a load
//! counter or the source's modification time); writing the same version again replaces the row, a new version adds
//! a history row. `deleted` marks an id that disappeared from the registry at that version. The `*_latest` views and
//! `*_dict` dictionaries (see [`super::schema`]) expose the newest non-deleted version of every id.
use std::sync::Arc;

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
    pub line_of_business: String,
    /// `api_key`, `bearer`, `basic` or `anonymous`.
    pub auth: String,
    /// Host names the API is served under.
    pub hosts: Vec<String>,
    pub base_path: String,
    /// Route templates (`METHOD /path/{param}`, or `/path` for any method) from the registry and the API's
    /// OpenAPI document (schema version 12).
    pub routes: Vec<String>,
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
    pub created_by: String,
    #[serde(with = "ts_micros::option")]
    pub created_at: Option<Timestamp>,
    /// The application this one replaces, or empty.
    pub predecessor: String,
    /// Workload selectors (e.g. cgroup or process patterns) that identify the application without a key.
    pub workloads: Vec<String>,
    pub version: u64,
    #[serde(with = "ts_micros")]
    pub loaded_at: Timestamp,
    pub deleted: bool,
}

/// Table `key_grants`: one dated grant entry of an API key for one API. A key granted the same API several times
/// (granted, revoked, granted again) has one row per entry, numbered by `grant_seq` in registry order; the entry
/// with the greatest `grant_seq` is the current grant.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize, Default)]
pub struct KeyGrantRow {
    pub key_fingerprint: String,
    pub api_id: String,
    pub grant_seq: u32,
    /// The key's id in the registry.
    pub key_id: String,
    pub key_suffix: String,
    pub app_id: String,
    pub granted_by: String,
    #[serde(with = "ts_micros::option")]
    pub valid_from: Option<Timestamp>,
    #[serde(with = "ts_micros::option")]
    pub valid_until: Option<Timestamp>,
    #[serde(with = "ts_micros::option")]
    pub revoked_at: Option<Timestamp>,
    pub revoked_by: String,
    pub note: String,
    pub version: u64,
    #[serde(with = "ts_micros")]
    pub loaded_at: Timestamp,
    pub deleted: bool,
}

/// Table `teams`.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize, Default)]
pub struct TeamRow {
    pub team: String,
    pub name: String,
    pub line_of_business: String,
    /// Where alerts about the team's APIs and applications go.
    pub alert_contact: String,
    /// URL receiving the team's new and escalated findings as JSON (schema version 12).
    pub alert_webhook: String,
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
/// does). Every grant entry of a key is a row (see [`KeyGrantRow`]); a key-wide window (granted_by, dates) fills
/// what an entry leaves unset.
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
            line_of_business: a.line_of_business.clone(),
            auth: a.auth_label(),
            hosts: a.hosts().into_iter().map(str::to_string).collect(),
            base_path: a.first_base_path().to_string(),
            routes: a
                .routes
                .iter()
                .map(|r| match &r.method {
                    Some(m) => format!("{m} {}", r.path),
                    None => r.path.clone(),
                })
                .collect(),
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
            created_by: a.created_by.clone(),
            created_at: a.created_at,
            predecessor: a.predecessor.clone().unwrap_or_default(),
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
    // A grant entry's own value, else the key-wide one.
    let or = |a: &str, b: &str| if a.is_empty() { b } else { a }.to_string();
    let mut key_grants: Vec<KeyGrantRow> = Vec::new();
    for k in &reg.keys {
        for (i, g) in k.grants.iter().enumerate() {
            let grant_seq = k.grants[..i].iter().filter(|p| p.api == g.api).count() as u32;
            key_grants.push(KeyGrantRow {
                key_fingerprint: k.fingerprint.clone(),
                api_id: g.api.clone(),
                grant_seq,
                key_id: k.id.clone(),
                key_suffix: k.suffix.clone(),
                app_id: k.application.clone(),
                granted_by: or(&g.window.granted_by, &k.window.granted_by),
                valid_from: g.window.granted_at.or(k.window.granted_at),
                valid_until: g.window.expires_at.or(k.window.expires_at),
                revoked_at: g.window.revoked_at.or(k.window.revoked_at),
                revoked_by: or(&g.window.revoked_by, &k.window.revoked_by),
                note: g.note.clone(),
                version,
                loaded_at,
                deleted: false,
            });
        }
    }
    let teams = reg
        .teams
        .iter()
        .map(|t| TeamRow {
            team: t.id.clone(),
            name: t.name.clone(),
            line_of_business: t.line_of_business.clone(),
            alert_contact: t.alert_contact.clone(),
            alert_webhook: t.alert_webhook.clone(),
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
        if !next.key_grants.iter().any(|n| {
            n.key_fingerprint == k.key_fingerprint
                && n.api_id == k.api_id
                && n.grant_seq == k.grant_seq
        }) {
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

// ---------------------------------------------------------------------------------------------------------------
// Writing

/// Inserts registry rows (the client must point at observer's database).
pub async fn write_registry(
    client: &clickhouse::Client,
    rows: &RegistryRows,
) -> Result<(), clickhouse::error::Error> {
    async fn put<T>(
        client: &clickhouse::Client,
        table: &str,
        rows: &[T],
    ) -> Result<(), clickhouse::error::Error>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let mut ins = client.insert::<T>(table).await?;
        for r in rows {
            ins.write(r).await?;
        }
        ins.end().await
    }
    put(client, "apis", &rows.apis).await?;
    put(client, "applications", &rows.applications).await?;
    put(client, "key_grants", &rows.key_grants).await?;
    put(client, "teams", &rows.teams).await?;
    Ok(())
}

/// Writes the newest registry state, retrying with backoff until it lands or a newer one replaces it.
pub(crate) async fn registry_task(
    client: clickhouse::Client,
    mut rx: tokio::sync::watch::Receiver<Option<Arc<RegistryRows>>>,
    metrics: Arc<crate::sink::SinkMetrics>,
    backoff_min: std::time::Duration,
    backoff_max: std::time::Duration,
) {
    let mut backoff = super::shipper::Backoff::new(backoff_min, backoff_max);
    while rx.changed().await.is_ok() {
        let Some(rows) = rx.borrow_and_update().clone() else {
            continue;
        };
        loop {
            match write_registry(&client, &rows).await {
                Ok(()) => {
                    metrics.registry_writes.inc();
                    backoff.reset();
                    tracing::info!(rows = rows.len(), "registry written to ClickHouse");
                    break;
                }
                Err(e) => {
                    metrics.registry_errors.inc();
                    let wait = backoff.fail();
                    tracing::warn!(error = %e, retry_in = ?wait, "writing the registry to ClickHouse failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        r = rx.changed() => if r.is_err() { return } else { break },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{load_file, KeySecret};
    use std::path::Path;

    fn example_registry() -> crate::registry::Registry {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/registry.yaml");
        load_file(&path, &KeySecret::from_bytes(b"registry-rows-test"))
            .unwrap_or_else(|e| panic!("examples/registry.yaml: {e}"))
            .registry
    }

    fn example() -> RegistryRows {
        from_registry(&example_registry(), 7, Timestamp(1_000))
    }

    #[test]
    fn every_grant_entry_is_a_row_numbered_per_api() {
        let rows = example();
        let mobile: Vec<&KeyGrantRow> = rows
            .key_grants
            .iter()
            .filter(|g| g.key_suffix == "3f9a")
            .collect();
        let seen: Vec<(&str, u32, &str, &str, &str)> = mobile
            .iter()
            .map(|g| {
                (
                    g.api_id.as_str(),
                    g.grant_seq,
                    g.granted_by.as_str(),
                    g.revoked_by.as_str(),
                    g.note.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("payments-api", 0, "alice", "", "CHG-1042 mobile launch"),
                (
                    "orders-api",
                    0,
                    "alice",
                    "bob",
                    "orders moved to the orders gateway"
                ),
                ("orders-api", 1, "bob", "", ""),
            ]
        );
        assert!(mobile[1].revoked_at.is_some() && mobile[2].revoked_at.is_none());
        assert!(
            mobile[2].valid_until.is_some(),
            "expires_at of the re-grant"
        );
        assert!(mobile.iter().all(|g| g.app_id == "mobile-checkout"
            && g.key_id == "mobile-checkout-prod"
            && g.version == 7));
    }

    #[test]
    fn key_wide_window_fills_grant_entries() {
        let rows = example();
        let legacy: Vec<&KeyGrantRow> = rows
            .key_grants
            .iter()
            .filter(|g| g.key_suffix == "b7c1")
            .collect();
        assert_eq!(legacy.len(), 1);
        let g = legacy[0];
        assert_eq!((g.api_id.as_str(), g.grant_seq), ("payments-api", 0));
        assert_eq!(
            (g.granted_by.as_str(), g.revoked_by.as_str()),
            ("alice", "alice")
        );
        assert!(g.valid_from.is_some() && g.revoked_at.is_some());
    }

    #[test]
    fn teams_apps_and_apis_carry_their_business_fields() {
        let rows = example();
        assert!(rows
            .teams
            .iter()
            .all(|t| !t.name.is_empty() && !t.alert_contact.is_empty()));
        assert!(rows
            .apis
            .iter()
            .all(|a| !a.line_of_business.is_empty() && !a.auth.is_empty()));
        let apps: Vec<(&str, &str)> = rows
            .applications
            .iter()
            .filter(|a| !a.predecessor.is_empty())
            .map(|a| (a.app_id.as_str(), a.predecessor.as_str()))
            .collect();
        assert!(!apps.is_empty(), "the example has a successor application");
        // Route templates are written so that they parse back to the registry's (method included).
        let reg = example_registry();
        for (api, row) in reg.apis.iter().zip(&rows.apis) {
            let back: Vec<_> = row
                .routes
                .iter()
                .map(|r| crate::registry::RouteTemplate::parse(r).expect("parses"))
                .collect();
            assert_eq!(back, api.routes, "{}", api.id);
        }
        assert!(rows.apis.iter().any(|a| !a.routes.is_empty()));
    }

    #[test]
    fn a_removed_grant_entry_gets_a_deleted_row() {
        let prev = example();
        let mut next = example();
        next.key_grants
            .retain(|g| !(g.key_suffix == "3f9a" && g.grant_seq == 1));
        for g in &mut next.key_grants {
            g.version = 8;
        }
        let out = with_deletions(&prev, next, 8, Timestamp(2_000));
        let deleted: Vec<&KeyGrantRow> = out.key_grants.iter().filter(|g| g.deleted).collect();
        assert_eq!(deleted.len(), 1);
        assert_eq!(
            (
                deleted[0].api_id.as_str(),
                deleted[0].grant_seq,
                deleted[0].version
            ),
            ("orders-api", 1, 8)
        );
    }
}
