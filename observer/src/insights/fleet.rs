//! `observer insights run`: the fleet-wide runner. One node sees only part of an application's traffic, so this
//! reads what every node stored in ClickHouse and feeds the same [`Engine`] as the agent and the replay:
//! - the registry from the registry tables (`*_latest`, grants from `key_grants_in_force`), reloaded each poll;
//! - at start, baselines warmed from the 1h rollup `http_requests_1h` and key use from `key_use_1d`;
//! - then `http_requests` in time order from a watermark, in pages of at most `--page-rows` rows, up to
//!   `now - --lag` (rows still being inserted are left for the next poll);
//! - finding versions go to the `insights` table with source `fleet` through the [`FindingsWriter`].
//!
//! With `--state-dir` the baselines and the watermark survive a restart; without, a start reads the last
//! `--lookback` again (finding ids are deterministic, so versions written twice are one row in `insights_latest`).
use std::path::PathBuf;
use std::time::Duration;

use clickhouse::Row;
use serde::Deserialize;
use tracing::{info, warn};

use super::{Config, Engine, Finding, Input};
use crate::event::{AttributedBy, KeyState, Timestamp};
use crate::registry::{
    Api, ApiMatch, Application, Auth, AuthKind, Glob, Grant, Key, KeySource, Registry,
    RouteTemplate, Team, Window, WorkloadSelector,
};
use crate::sink::clickhouse::insights_rows::FindingsWriter;
use crate::sink::clickhouse::registry_rows::{ts_micros, ApiRow, RegistryRows, TeamRow};
use crate::sink::clickhouse::schema::{check_identifier, ConnectArgs};
use crate::sink::clickhouse::ClickHouseConfig;

/// Where observer's tables are: the connection flags shared with `schema`, and the database.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Database holding observer's tables.
    #[arg(long, env = "CLICKHOUSE_DATABASE", default_value = "observer")]
    pub database: String,
}

impl StoreArgs {
    /// The ClickHouse URL, which `insights run` and `insights list` cannot do without.
    pub fn url(&self) -> Result<&str, FleetError> {
        self.connect
            .clickhouse_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or(FleetError::NoUrl)
    }

    pub fn client(&self) -> Result<clickhouse::Client, FleetError> {
        self.url()?;
        check_identifier("database name", &self.database)?;
        Ok(self.connect.client()?.with_database(&self.database))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Thresholds (TOML; defaults: examples/insights.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Process the events stored up to now (minus --lag), write the findings and exit.
    #[arg(long)]
    pub once: bool,
    /// How often new events are read.
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration)]
    pub poll_interval: Duration,
    /// Events younger than this are left for the next poll (nodes insert about once a second; a spooled batch
    /// arrives later and is missed).
    #[arg(long, default_value = "30s", value_parser = crate::units::parse_duration)]
    pub lag: Duration,
    /// Without a saved watermark, start this long before now (ignored with --from).
    #[arg(long, default_value = "15m", value_parser = crate::units::parse_duration)]
    pub lookback: Duration,
    /// Start reading at this time (RFC 3339) instead of the saved watermark or --lookback.
    #[arg(long, value_parser = |s: &str| Timestamp::parse_rfc3339(s).ok_or_else(|| format!("invalid RFC 3339 time {s:?}")))]
    pub from: Option<Timestamp>,
    /// Days of the 1h rollup the baselines are warmed with at start (0: none; skipped when state was restored).
    #[arg(long, default_value_t = 14)]
    pub warmup_days: u32,
    /// Most rows read per query.
    #[arg(long, default_value_t = 100_000)]
    pub page_rows: u64,
    /// Directory the baselines and the watermark are kept in between runs.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory for finding batches ClickHouse could not take yet.
    #[arg(long, default_value = "/tmp/observer-insights-spool")]
    pub spool_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Schema(#[from] crate::sink::clickhouse::schema::SchemaError),
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    #[error(transparent)]
    State(#[from] super::state::StateError),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    #[error("ClickHouse query ({what}): {source}")]
    Query {
        what: &'static str,
        source: clickhouse::error::Error,
    },
    #[error("no ClickHouse to read: give --clickhouse-url URL (or set CLICKHOUSE_URL)")]
    NoUrl,
    #[error("watermark file {path}: {source}")]
    Watermark {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn q(what: &'static str) -> impl FnOnce(clickhouse::error::Error) -> FleetError {
    move |source| FleetError::Query { what, source }
}

/// One stored exchange, as much of it as the detectors read.
#[derive(Debug, Row, Deserialize)]
struct EventRow {
    #[serde(with = "ts_micros")]
    ts: Timestamp,
    method: String,
    host: String,
    path: String,
    query_keys: Vec<String>,
    status: u16,
    src_ip: String,
    client_comm: String,
    client_cgroup: String,
    user_agent: String,
    api_id: String,
    route: String,
    app_id: String,
    key_fingerprint: String,
    key_state: i8,
    attributed_by: i8,
    request_hash: u64,
}

const EVENT_COLUMNS: &str = "ts, method, host, path, query_keys, status, \
     replaceRegexpOne(IPv6NumToString(src_ip), '^::ffff:', '') AS src_ip, client_comm, client_cgroup, user_agent, \
     api_id, route, app_id, key_fingerprint, toInt8(key_state) AS key_state, toInt8(attributed_by) AS attributed_by, \
     request_hash";

impl EventRow {
    fn input(&self) -> Input<'_> {
        use std::borrow::Cow::Borrowed;
        Input {
            ts: self.ts,
            method: Borrowed(&self.method),
            host: Borrowed(&self.host),
            path: Borrowed(&self.path),
            query_keys: self
                .query_keys
                .iter()
                .map(|k| Borrowed(k.as_str()))
                .collect(),
            status: self.status,
            src_ip: Borrowed(&self.src_ip),
            client_comm: Borrowed(&self.client_comm),
            client_cgroup: Borrowed(&self.client_cgroup),
            user_agent: Borrowed(&self.user_agent),
            api_id: Borrowed(&self.api_id),
            route: Borrowed(&self.route),
            app_id: Borrowed(&self.app_id),
            key_fingerprint: Borrowed(&self.key_fingerprint),
            key_state: KeyState::from_code(self.key_state).unwrap_or_default(),
            attributed_by: AttributedBy::from_code(self.attributed_by).unwrap_or_default(),
            // 0: stored by an agent without the field (before schema version 9).
            request_hash: (self.request_hash != 0).then_some(self.request_hash),
        }
    }
}

/// SQL for a time in microseconds.
fn at(t: Timestamp) -> String {
    format!("fromUnixTimestamp64Micro(toInt64({}), 'UTC')", t.0)
}

/// SQL: per id, the newest stored value of a registry column the `*_latest` views do not have (schema version 12:
/// `apis.routes`, `teams.alert_webhook`).
fn newest_column(table: &str, key: &str, column: &str) -> String {
    format!(
        "SELECT {key}, argMax(tuple({column}), version).1 AS {column} FROM {table} GROUP BY {key}"
    )
}

#[derive(Debug, Row, Deserialize)]
struct RoutesRow {
    api_id: String,
    routes: Vec<String>,
}

/// The registry as the registry tables hold it now. Facts only the YAML has (auth locations, Kubernetes terms of
/// workload selectors) are absent: detectors that need them stay silent.
pub async fn load_registry(client: &clickhouse::Client) -> Result<Registry, FleetError> {
    // The `*_latest` views hold live rows only; `deleted` is constant.
    const TAIL: &str = "version, loaded_at, false AS deleted";
    let mut teams: Vec<TeamRow> = client
        .query(&format!(
            "SELECT team, name, line_of_business, alert_contact, '' AS alert_webhook, {TAIL} FROM teams_latest \
             ORDER BY team"
        ))
        .fetch_all()
        .await
        .map_err(q("teams_latest"))?;
    let mut webhooks: std::collections::HashMap<String, String> = client
        .query(&newest_column("teams", "team", "alert_webhook"))
        .fetch_all::<(String, String)>()
        .await
        .map_err(q("teams"))?
        .into_iter()
        .collect();
    for t in &mut teams {
        t.alert_webhook = webhooks.remove(&t.team).unwrap_or_default();
    }
    let mut apis: Vec<ApiRow> = client
        .query(&format!(
            "SELECT api_id, name, owner, line_of_business, auth, hosts, base_path, emptyArrayString() AS routes, {TAIL} \
             FROM apis_latest ORDER BY api_id"
        ))
        .fetch_all()
        .await
        .map_err(q("apis_latest"))?;
    let mut routes: std::collections::HashMap<String, Vec<String>> = client
        .query(&newest_column("apis", "api_id", "routes"))
        .fetch_all::<RoutesRow>()
        .await
        .map_err(q("apis"))?
        .into_iter()
        .map(|r| (r.api_id, r.routes))
        .collect();
    for a in &mut apis {
        a.routes = routes.remove(&a.api_id).unwrap_or_default();
    }
    let rows = RegistryRows {
        teams,
        apis,
        applications: client
            .query(&format!(
                "SELECT app_id, name, team, line_of_business, created_by, created_at, predecessor, workloads, \
                 {TAIL} FROM applications_latest ORDER BY app_id"
            ))
            .fetch_all()
            .await
            .map_err(q("applications_latest"))?,
        key_grants: client
            .query(
                "SELECT key_fingerprint, api_id, grant_seq, key_id, key_suffix, app_id, granted_by, valid_from, \
                 valid_until, revoked_at, revoked_by, note, toUInt64(0) AS version, \
                 toDateTime64(0, 6, 'UTC') AS loaded_at, false AS deleted FROM key_grants_in_force ORDER BY key_fingerprint, api_id, grant_seq",
            )
            .fetch_all()
            .await
            .map_err(q("key_grants_in_force"))?,
    };
    Ok(registry_from_rows(rows))
}

/// The inverse of [`crate::sink::clickhouse::registry_rows::from_registry`], for what the rows keep.
fn registry_from_rows(rows: RegistryRows) -> Registry {
    let teams = rows
        .teams
        .into_iter()
        .map(|t| Team {
            id: t.team,
            name: t.name,
            line_of_business: t.line_of_business,
            alert_contact: t.alert_contact,
            alert_webhook: t.alert_webhook,
            line: 0,
        })
        .collect();
    let apis = rows
        .apis
        .into_iter()
        .map(|a| Api {
            id: a.api_id,
            name: a.name,
            owner: a.owner,
            line_of_business: a.line_of_business,
            matchers: vec![ApiMatch {
                hosts: a.hosts.iter().map(|h| Glob::new(h, true)).collect(),
                base_paths: [a.base_path]
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .collect(),
                ..Default::default()
            }],
            auth: a
                .auth
                .split(',')
                .filter_map(AuthKind::parse)
                .map(|kind| Auth {
                    kind,
                    ..Default::default()
                })
                .collect(),
            // As written by `registry_rows` from templates that parsed, so they parse again; a row written by
            // hand that does not is left out (undocumented_route then judges with the others).
            routes: a
                .routes
                .iter()
                .filter_map(|r| RouteTemplate::parse(r).ok())
                .collect(),
            openapi: None,
            max_inferred_routes: 0,
            line: 0,
        })
        .collect();
    let applications = rows
        .applications
        .into_iter()
        .map(|a| Application {
            id: a.app_id,
            name: a.name,
            team: a.team,
            line_of_business: a.line_of_business,
            created_by: a.created_by,
            created_at: a.created_at,
            predecessor: Some(a.predecessor).filter(|p| !p.is_empty()),
            workload: a.workloads.iter().map(|w| workload(w)).collect(),
            line: 0,
        })
        .collect();
    let mut keys: Vec<Key> = Vec::new();
    for g in rows.key_grants {
        if keys
            .last()
            .is_none_or(|k| k.fingerprint != g.key_fingerprint)
        {
            keys.push(Key {
                id: g.key_id.clone(),
                application: g.app_id.clone(),
                fingerprint: g.key_fingerprint.clone(),
                suffix: g.key_suffix.clone(),
                source: KeySource::Fingerprint,
                window: Window::default(),
                grants: Vec::new(),
                line: 0,
            });
        }
        let k = keys.last_mut().expect("pushed above");
        k.grants.push(Grant {
            api: g.api_id,
            window: Window {
                granted_by: g.granted_by,
                granted_at: g.valid_from,
                expires_at: g.valid_until,
                revoked_at: g.revoked_at,
                revoked_by: g.revoked_by,
            },
            note: g.note,
            line: 0,
        });
    }
    Registry {
        teams,
        apis,
        applications,
        keys,
    }
}

/// A workload selector as `registry_rows` writes it: `comm=GLOB cgroup=GLOB`.
fn workload(text: &str) -> WorkloadSelector {
    let mut w = WorkloadSelector {
        comm: None,
        cgroup: None,
        namespace: None,
        workload: None,
        labels: Vec::new(),
        line: 0,
    };
    for part in text.split_whitespace() {
        if let Some(c) = part.strip_prefix("comm=") {
            w.comm = Some(Glob::new(c, false));
        } else if let Some(c) = part.strip_prefix("cgroup=") {
            w.cgroup = Some(Glob::path(c));
        }
    }
    w
}

/// Trains the engine with the history before `from`: the 1h rollup's last `days` days, and key use.
async fn warm_up(
    client: &clickhouse::Client,
    engine: &mut Engine,
    from: Timestamp,
    days: u32,
) -> Result<(), FleetError> {
    if days > 0 {
        let since = Timestamp(from.0 - days as i64 * 86_400_000_000);
        let sql = format!(
            "SELECT api_id, app_id, toInt64(intDiv(toUnixTimestamp(hour), 60)) AS m, sum(requests), sum(errors) \
             FROM http_requests_1h WHERE hour >= toDateTime(intDiv({s}, 1000000), 'UTC') \
             AND hour < toDateTime(intDiv({f}, 1000000), 'UTC') AND api_id != '' GROUP BY api_id, app_id, m \
             ORDER BY m",
            s = since.0,
            f = from.0 - from.0.rem_euclid(3_600_000_000),
        );
        let rows: Vec<(String, String, i64, u64, u64)> = client
            .query(&sql)
            .fetch_all()
            .await
            .map_err(q("http_requests_1h"))?;
        let mut hours = std::collections::BTreeMap::<(String, i64), (u64, u64)>::new();
        for (api, app, m, n, e) in &rows {
            engine.warm_hour(api, app, *m, *n, *e);
            let t = hours.entry((api.clone(), *m)).or_default();
            t.0 += n;
            t.1 += e;
        }
        for ((api, m), (n, e)) in hours {
            engine.warm_hour(&api, "", m, n, e);
        }
        info!(
            rows = rows.len(),
            days, "insights: baselines warmed from http_requests_1h"
        );
    }
    let oldest: Vec<(u8, i64)> = client
        .query(
            "SELECT 1, toUnixTimestamp64Micro(min(last_call)) FROM key_use_1d HAVING count() > 0",
        )
        .fetch_all()
        .await
        .map_err(q("key_use_1d"))?;
    if let Some((_, t)) = oldest.first() {
        engine.history_from(Timestamp((*t).min(from.0)));
    }
    let uses: Vec<(String, String, i64)> = client
        .query(&format!(
            "SELECT key_fingerprint, api_id, toUnixTimestamp64Micro(max(last_call)) FROM key_use_1d \
             WHERE last_call < {} GROUP BY key_fingerprint, api_id",
            at(from)
        ))
        .fetch_all()
        .await
        .map_err(q("key_use_1d"))?;
    for (fp, api, t) in &uses {
        engine.warm_key_use(fp, api, Timestamp(*t));
    }
    Ok(())
}

/// Reads `[from, upto)` in pages and feeds the engine; returns the watermark reached (`upto`) and the events read.
async fn read_until(
    client: &clickhouse::Client,
    engine: &mut Engine,
    mut from: Timestamp,
    upto: Timestamp,
    page_rows: u64,
    out: &mut Vec<Finding>,
) -> Result<(Timestamp, u64), FleetError> {
    let mut n = 0u64;
    while from < upto {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM http_requests WHERE ts >= {} AND ts < {} ORDER BY ts LIMIT {page_rows}",
            at(from),
            at(upto)
        );
        let rows: Vec<EventRow> = client
            .query(&sql)
            .fetch_all()
            .await
            .map_err(q("http_requests"))?;
        let full = rows.len() as u64 >= page_rows.max(1);
        let (take, next) = match (full, rows.first(), rows.last()) {
            (false, _, _) | (true, None, _) | (true, _, None) => (rows.len(), upto),
            // A page of one instant: take it all and step past it.
            (true, Some(a), Some(b)) if a.ts == b.ts => (rows.len(), Timestamp(b.ts.0 + 1)),
            // Rows at the page's last instant may continue on the next page: read them there.
            (true, _, Some(b)) => (rows.partition_point(|r| r.ts < b.ts), b.ts),
        };
        for r in &rows[..take] {
            engine.ingest(&r.input());
        }
        engine.drain(out);
        n += take as u64;
        from = next;
    }
    engine.advance(upto);
    engine.drain(out);
    Ok((upto, n))
}

const WATERMARK_FILE: &str = "fleet-watermark";

fn load_watermark(dir: &std::path::Path) -> Result<Option<Timestamp>, FleetError> {
    let path = dir.join(WATERMARK_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().parse().ok().map(Timestamp)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FleetError::Watermark { path, source }),
    }
}

fn save_watermark(dir: &std::path::Path, t: Timestamp) -> Result<(), FleetError> {
    let path = dir.join(WATERMARK_FILE);
    let tmp = dir.join(format!("{WATERMARK_FILE}.tmp"));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, t.0.to_string()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| FleetError::Watermark { path, source })
}

/// `observer insights run`.
pub async fn run(args: RunArgs) -> Result<(), FleetError> {
    let cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    let client = args.store.client()?;
    // ClickHouse may start after the runner: retry, except with --once.
    let registry = loop {
        match load_registry(&client).await {
            Ok(r) => break r,
            Err(e) if !args.once => {
                warn!(error = %e, retry_in = ?args.poll_interval, "insights: reading the registry failed");
                tokio::time::sleep(args.poll_interval).await;
            }
            Err(e) => return Err(e),
        }
    };
    // Per-team webhooks, as the agent sends them (new and escalated findings).
    let (mut notifier, deliver) =
        super::notify::Notifier::new(super::notify::NotifyConfig::default(), &registry);
    let delivering = tokio::spawn(deliver);
    let mut engine = Engine::new(cfg, registry);
    let restored = match &args.state_dir {
        Some(d) => engine.restore_from(d)?,
        None => false,
    };
    let saved = match &args.state_dir {
        Some(d) if restored => load_watermark(d)?,
        _ => None,
    };
    let now = Timestamp::now();
    let mut wm = args
        .from
        .or(saved)
        .unwrap_or(Timestamp(now.0 - args.lookback.as_micros() as i64));
    if !restored {
        match warm_up(&client, &mut engine, wm, args.warmup_days).await {
            Ok(()) => {}
            Err(e) if !args.once => {
                warn!(error = %e, "insights: warming up from history failed; learning")
            }
            Err(e) => return Err(e),
        }
    }
    args.store.url()?;
    let creds = args
        .store
        .connect
        .credentials()
        .map_err(crate::sink::clickhouse::schema::SchemaError::from)?;
    let mut ch = ClickHouseConfig::new(&creds.url, args.spool_dir.clone());
    ch.database = args.store.database.clone();
    ch.user = creds.user;
    ch.password = creds.password;
    ch.agent_id = format!("fleet-{}", ch.agent_id);
    let (writer, task) = FindingsWriter::start(ch, "fleet".into()).await?;

    info!(from = %wm.to_rfc3339(), once = args.once, "insights: fleet runner started");
    let mut found = Vec::new();
    let result = loop {
        let upto = Timestamp(Timestamp::now().0 - args.lag.as_micros() as i64);
        let step = async {
            let registry = load_registry(&client).await?;
            notifier.set_registry(&registry);
            engine.set_registry(registry);
            read_until(&client, &mut engine, wm, upto, args.page_rows, &mut found).await
        };
        match step.await {
            Ok((reached, n)) => {
                wm = reached;
                if !found.is_empty() || n > 0 {
                    info!(events = n, findings = found.len(), upto = %upto.to_rfc3339(), "insights: read");
                }
                writer.offer(&found);
                notifier.offer(&found);
                found.clear();
                if let Some(d) = &args.state_dir {
                    engine.save(d)?;
                    save_watermark(d, wm)?;
                }
            }
            // A failed read leaves the watermark where it was; the next poll reads the same events again.
            Err(e) if !args.once => warn!(error = %e, "insights: reading ClickHouse failed"),
            Err(e) => break Err(e),
        }
        if args.once {
            break Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(args.poll_interval) => {}
            _ = tokio::signal::ctrl_c() => break Ok(()),
        }
    };
    let probe = writer.stats();
    drop(writer);
    let _ = task.await;
    let sent = notifier.stats().clone();
    // Queued deliveries are still tried (with their bounded retries) before the runner exits.
    drop(notifier);
    let _ = delivering.await;
    info!(
        written = probe.written(),
        dropped = probe.dropped(),
        webhooks_sent = sent.sent.get(),
        webhooks_failed = sent.failed.get(),
        webhooks_dropped = sent.dropped.get(),
        "insights: fleet runner stopped"
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::clickhouse::registry_rows::{ApiRow, ApplicationRow, KeyGrantRow, TeamRow};

    #[test]
    fn rows_become_a_registry_the_detectors_can_ask() {
        let grant = |api: &str, seq: u32, revoked: Option<i64>| KeyGrantRow {
            key_fingerprint: "fp1".into(),
            api_id: api.into(),
            grant_seq: seq,
            key_id: "k1".into(),
            app_id: "checkout-v2".into(),
            revoked_at: revoked.map(Timestamp),
            ..Default::default()
        };
        let reg = registry_from_rows(RegistryRows {
            teams: vec![TeamRow {
                team: "payments".into(),
                alert_webhook: "http://hooks.example/payments".into(),
                ..Default::default()
            }],
            apis: vec![ApiRow {
                api_id: "payments-api".into(),
                owner: "payments".into(),
                auth: "api_key".into(),
                hosts: vec!["pay.example.com".into()],
                routes: vec![
                    "POST /v1/payments".into(),
                    "/v1/payments/{id}".into(),
                    "not a route".into(),
                ],
                ..Default::default()
            }],
            applications: vec![ApplicationRow {
                app_id: "checkout-v2".into(),
                team: "payments".into(),
                predecessor: "checkout-v1".into(),
                workloads: vec!["comm=checkout cgroup=/kubepods/*".into()],
                ..Default::default()
            }],
            key_grants: vec![
                grant("orders-api", 0, Some(10)),
                grant("payments-api", 0, None),
            ],
        });
        assert_eq!(reg.teams[0].alert_webhook, "http://hooks.example/payments");
        let ctx = super::super::context::Context::new(reg);
        assert!(ctx.api_is_keyed("payments-api"));
        // Routes written by registry_rows come back as templates (undocumented_route works fleet-wide).
        let undocumented = |m: &str, p: &str| ctx.route_undocumented("payments-api", m, p);
        assert_eq!(undocumented("POST", "/v1/payments"), Some(false));
        assert_eq!(undocumented("DELETE", "/v1/payments/42"), Some(false));
        assert_eq!(undocumented("GET", "/v1/payments"), Some(true));
        assert_eq!(undocumented("GET", "/v1/refunds/1"), Some(true));
        assert_eq!(ctx.api_owner("payments-api"), "payments");
        let app = ctx.app("checkout-v2").expect("app");
        assert_eq!(app.predecessor.as_deref(), Some("checkout-v1"));
        assert!(app.workload[0].matches("checkout", "/kubepods/x", None));
        let key = ctx.key("fp1").expect("key");
        assert_eq!(key.grants.len(), 2);
        assert_eq!(
            key.state(Some("orders-api"), Timestamp(20)),
            KeyState::Revoked
        );
        assert_eq!(
            key.state(Some("payments-api"), Timestamp(20)),
            KeyState::Valid
        );
        assert_eq!(
            key.state(Some("rates-api"), Timestamp(20)),
            KeyState::NotGrantedForApi
        );
    }
}
