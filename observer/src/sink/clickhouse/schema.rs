//! ClickHouse schema: what the DDL depends on ([`SchemaConfig`]), applying the migrations of [`super::migrations`]
//! in order, and the `observer schema` command.
//!
//! Every migration is a list of `IF NOT EXISTS` statements generated from a [`SchemaConfig`] (database, optional
//! cluster, retention), so re-running a migration that was interrupted half-way is safe. Applied versions are
//! recorded in `schema_migrations`; `apply` runs only the versions above the recorded maximum and refuses a database
//! whose schema is newer than this binary knows.
//!
//! Layout (single node):
//! - `http_requests`: one row per HTTP exchange, every [`crate::event::Event`] field (see
//!   [`super::migrations::http_requests_columns`], from [`crate::event_fields!`]).
//! - `http_requests_1m` / `http_requests_1h`: AggregatingMergeTree rollups fed by materialized views, read by the
//!   dashboards through the parameterized view `http_requests_rollup(from, to, step_s)`, which takes whole hours of
//!   the range from the hour rollup when the panel's resolution allows.
//! - `apis`, `applications`, `key_grants`, `teams`: registry history (one row per id and registry version), views
//!   `*_latest` with the newest non-deleted version, and dictionaries `*_dict` over those views. `key_grants` keeps
//!   every dated grant entry of a key for an API (`grant_seq`); `key_grants_current` and its dictionary give the
//!   newest entry per (key, API).
//!
//! With `--cluster NAME` every statement carries `ON CLUSTER NAME`; the event and rollup tables are
//! `Replicated*MergeTree` tables named `*_local` (zookeeper path `/clickhouse/tables/{shard}/DB/TABLE`, replica
//! `{replica}`) behind `Distributed` tables with the plain names, sharded by `cityHash64(api_id, app_id)` so a retried
//! batch splits the same way and stays deduplicated. Registry tables and `schema_migrations` are replicated to every
//! node (path without `{shard}`, so `{replica}` must be unique across the cluster).
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Subcommand};
use thiserror::Error;

use super::credentials::{Credentials, CredentialsError};
use super::migrations::{all_statements, bootstrap_statements, latest_version, MIGRATIONS};

/// Errors of schema generation and application.
#[derive(Debug, Error)]
pub enum SchemaError {
    #[error(
        "invalid {what} {value:?}: use letters, digits and '_' only, not starting with a digit"
    )]
    InvalidIdentifier { what: &'static str, value: String },
    #[error("invalid retention {0:?}: expected a positive whole number of seconds with a unit, e.g. 30d, 12h, 2w")]
    InvalidRetention(String),
    #[error(
        "database {database} has schema version {found}, newer than the {known} this observer binary knows; \
         upgrade observer (or apply with the newer binary) instead of downgrading the schema"
    )]
    NewerThanBinary {
        database: String,
        found: u32,
        known: u32,
    },
    #[error("schema migration {version} ({name}) failed on statement {index} of {total}: {source}\nstatement: {sql}")]
    Statement {
        version: u32,
        name: &'static str,
        index: usize,
        total: usize,
        sql: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("ClickHouse at {url}: {what}: {source}")]
    Query {
        url: String,
        what: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error(transparent)]
    Credentials(#[from] super::credentials::CredentialsError),
    #[error("unknown target schema version {0}: this binary knows versions 1..={1}")]
    UnknownTarget(u32, u32),
}

/// A retention period for a TTL, parsed from `30d`, `12h`, `2w`, `3600s`, `90m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    seconds: u64,
}

impl Retention {
    pub const fn days(days: u64) -> Self {
        Retention {
            seconds: days * 86_400,
        }
    }

    pub fn seconds(self) -> u64 {
        self.seconds
    }

    /// The interval as ClickHouse SQL (`INTERVAL 30 DAY`), using the largest exact unit.
    pub fn to_sql_interval(self) -> String {
        let s = self.seconds;
        if s.is_multiple_of(86_400) {
            format!("INTERVAL {} DAY", s / 86_400)
        } else if s.is_multiple_of(3_600) {
            format!("INTERVAL {} HOUR", s / 3_600)
        } else if s.is_multiple_of(60) {
            format!("INTERVAL {} MINUTE", s / 60)
        } else {
            format!("INTERVAL {s} SECOND")
        }
    }
}

impl FromStr for Retention {
    type Err = SchemaError;

    /// Any positive whole number of seconds, in the agent's one duration syntax (humantime: `30d`, `12h`, `2w`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SchemaError::InvalidRetention(s.to_string());
        let d = crate::units::parse_duration(s).map_err(|_| bad())?;
        if d.subsec_nanos() != 0 || d.as_secs() == 0 {
            return Err(bad());
        }
        Ok(Retention {
            seconds: d.as_secs(),
        })
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.seconds;
        if s.is_multiple_of(86_400) {
            write!(f, "{}d", s / 86_400)
        } else if s.is_multiple_of(3_600) {
            write!(f, "{}h", s / 3_600)
        } else if s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

pub fn check_identifier(what: &'static str, value: &str) -> Result<(), SchemaError> {
    let ok = !value.is_empty()
        && !value.starts_with(|c: char| c.is_ascii_digit())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SchemaError::InvalidIdentifier {
            what,
            value: value.to_string(),
        })
    }
}

/// Days the raw `request_id` is kept by default: a week of incidents to grep by the id from an application's logs.
pub const DEFAULT_REQUEST_ID_DAYS: u64 = 7;

/// What the generated DDL depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaConfig {
    pub(super) database: String,
    pub(super) cluster: Option<String>,
    pub(super) retention: Retention,
    pub(super) rollup_1m_retention: Retention,
    pub(super) rollup_1h_retention: Retention,
    /// How long `http_requests.request_id` keeps the raw `X-Request-Id` (a column TTL, migration 14); the keyed
    /// `request_id_hash` stays for the row's whole retention.
    pub(super) request_id_retention: Retention,
}

impl SchemaConfig {
    /// Validates names (they are spliced into DDL unquoted).
    pub fn new(
        database: &str,
        cluster: Option<&str>,
        retention: Retention,
    ) -> Result<Self, SchemaError> {
        check_identifier("database name", database)?;
        if let Some(c) = cluster {
            check_identifier("cluster name", c)?;
        }
        Ok(SchemaConfig {
            database: database.to_string(),
            cluster: cluster.map(str::to_string),
            retention,
            rollup_1m_retention: Retention::days(90),
            rollup_1h_retention: Retention::days(400),
            request_id_retention: Retention::days(DEFAULT_REQUEST_ID_DAYS),
        })
    }

    /// Retention of the per-minute and per-hour rollups (defaults 90 and 400 days).
    pub fn with_rollup_retention(mut self, minute: Retention, hour: Retention) -> Self {
        self.rollup_1m_retention = minute;
        self.rollup_1h_retention = hour;
        self
    }

    /// How long the raw `request_id` is kept (default [`DEFAULT_REQUEST_ID_DAYS`] days); set before the database
    /// reaches version 14 (later: `ALTER TABLE ... MODIFY COLUMN request_id ... TTL ...`, see README).
    pub fn with_request_id_retention(mut self, raw: Retention) -> Self {
        self.request_id_retention = raw;
        self
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    pub(super) fn on_cluster(&self) -> String {
        match &self.cluster {
            Some(c) => format!(" ON CLUSTER {c}"),
            None => String::new(),
        }
    }

    /// Name of the table holding the data of a sharded table (`NAME_local` on a cluster).
    pub(super) fn storage(&self, table: &str) -> String {
        match self.cluster {
            Some(_) => format!("{table}_local"),
            None => table.to_string(),
        }
    }

    /// Engine for a sharded table: `kind` is e.g. `MergeTree` or `AggregatingMergeTree`.
    pub(super) fn sharded_engine(&self, kind: &str, table: &str) -> String {
        match self.cluster {
            Some(_) => format!(
                "Replicated{kind}('/clickhouse/tables/{{shard}}/{}/{}', '{{replica}}')",
                self.database,
                self.storage(table)
            ),
            None => kind.to_string(),
        }
    }

    /// Engine for a small table copied to every node; `kind_args` e.g. `(loaded_at)`.
    pub(super) fn everywhere_engine(&self, kind: &str, kind_args: &str, table: &str) -> String {
        match self.cluster {
            Some(_) => {
                let extra = kind_args.trim_start_matches('(').trim_end_matches(')');
                let extra = if extra.is_empty() {
                    String::new()
                } else {
                    format!(", {extra}")
                };
                format!(
                    "Replicated{kind}('/clickhouse/tables/all/{}/{table}', '{{replica}}'{extra})",
                    self.database
                )
            }
            None => format!("{kind}{kind_args}"),
        }
    }

    /// Deduplication of retried inserts: replicated tables have it by default, plain MergeTree needs a window.
    pub(super) fn dedup_setting(&self) -> &'static str {
        match self.cluster {
            Some(_) => "",
            None => "\nSETTINGS non_replicated_deduplication_window = 10000",
        }
    }

    pub(super) fn distributed(&self, table: &str, sharding_key: &str) -> Option<String> {
        let cluster = self.cluster.as_ref()?;
        let db = &self.database;
        Some(format!(
            "CREATE TABLE IF NOT EXISTS {db}.{table}{oc} AS {db}.{local}\n\
             ENGINE = Distributed({cluster}, {db}, {local}, {sharding_key})",
            oc = self.on_cluster(),
            local = self.storage(table),
        ))
    }
}

/// How to reach ClickHouse, for `observer run` (flattened into its sink options) and the schema commands (which
/// make the URL required).
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectArgs {
    /// ClickHouse HTTP(S) URL, e.g. http://127.0.0.1:8123.
    #[arg(long, env = "CLICKHOUSE_URL")]
    pub clickhouse_url: Option<String>,
    /// ClickHouse user.
    #[arg(long, env = "CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,
    /// File holding the ClickHouse password (trailing newline ignored); without it the password is taken from
    /// CLICKHOUSE_URL's `user:password@` or the CLICKHOUSE_PASSWORD environment variable, never from the command line.
    #[arg(long)]
    pub clickhouse_password_file: Option<PathBuf>,
}

impl ConnectArgs {
    /// The URL without credentials (for messages); the schema commands' parser requires it, so it is there.
    fn url(&self) -> String {
        super::credentials::split_userinfo(self.clickhouse_url.as_deref().unwrap_or_default()).0
    }

    /// The URL without credentials, the user and the password (file, CLICKHOUSE_URL, CLICKHOUSE_PASSWORD). A
    /// password in a `--clickhouse-url` given on the command line is refused.
    pub fn credentials(&self) -> Result<Credentials, CredentialsError> {
        let argv: Vec<String> = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        super::credentials::resolve(
            self.clickhouse_url.as_deref().unwrap_or_default(),
            self.clickhouse_user.as_deref(),
            self.clickhouse_password_file.as_deref(),
            std::env::var(super::credentials::PASSWORD_ENV).ok(),
            &argv,
        )
    }

    pub fn client(&self) -> Result<clickhouse::Client, SchemaError> {
        let c = self.credentials()?;
        let mut client = clickhouse::Client::default().with_url(c.url);
        if let Some(user) = c.user {
            client = client.with_user(user);
        }
        if let Some(password) = c.password {
            client = client.with_password(password);
        }
        Ok(client)
    }
}

/// What the DDL depends on, as command-line options.
#[derive(Debug, Clone, Args)]
pub struct LayoutArgs {
    /// Database holding observer's tables.
    #[arg(long, default_value = "observer")]
    pub database: String,
    /// Emit `ON CLUSTER` DDL with Replicated tables and Distributed tables for this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// How long raw `http_requests` rows are kept (s, m, h, d, w).
    #[arg(long, default_value = "30d")]
    pub retention: Retention,
    /// How long per-minute rollups are kept.
    #[arg(long, default_value = "90d")]
    pub rollup_1m_retention: Retention,
    /// How long per-hour rollups are kept.
    #[arg(long, default_value = "400d")]
    pub rollup_1h_retention: Retention,
    /// How long `http_requests` keeps the raw `request_id` (X-Request-Id); after that only its keyed hash
    /// (`request_id_hash`) is kept, for the row's whole `--retention`. Applied when the database reaches schema
    /// version 14.
    #[arg(long, default_value = "7d")]
    pub request_id_retention: Retention,
}

impl LayoutArgs {
    pub fn config(&self) -> Result<SchemaConfig, SchemaError> {
        Ok(
            SchemaConfig::new(&self.database, self.cluster.as_deref(), self.retention)?
                .with_rollup_retention(self.rollup_1m_retention, self.rollup_1h_retention)
                .with_request_id_retention(self.request_id_retention),
        )
    }
}

/// `observer schema ...`
#[derive(Debug, Args)]
pub struct SchemaCommand {
    #[command(subcommand)]
    pub action: SchemaAction,
}

#[derive(Debug, Subcommand)]
pub enum SchemaAction {
    /// Create or upgrade observer's tables, views and dictionaries (idempotent).
    #[command(mut_arg("clickhouse_url", |a| a.required(true)))]
    Apply {
        #[command(flatten)]
        connect: ConnectArgs,
        #[command(flatten)]
        layout: LayoutArgs,
        /// Stop at this schema version (default: the newest this binary knows).
        #[arg(long, hide = true)]
        target_version: Option<u32>,
    },
    /// Print the DDL `apply` would run on an empty database.
    Print {
        #[command(flatten)]
        layout: LayoutArgs,
    },
    /// Print the database's schema version and the newest this binary knows.
    #[command(mut_arg("clickhouse_url", |a| a.required(true)))]
    Status {
        #[command(flatten)]
        connect: ConnectArgs,
        #[arg(long, default_value = "observer")]
        database: String,
    },
}

impl SchemaCommand {
    pub async fn run(self) -> Result<(), SchemaError> {
        match self.action {
            SchemaAction::Apply {
                connect,
                layout,
                target_version,
            } => {
                let cfg = layout.config()?;
                let client = connect.client()?;
                let report = apply(&client, &connect.url(), &cfg, target_version).await?;
                println!("{report}");
            }
            SchemaAction::Print { layout } => {
                let cfg = layout.config()?;
                for s in all_statements(&cfg, latest_version()) {
                    println!("{s};\n");
                }
            }
            SchemaAction::Status { connect, database } => {
                check_identifier("database name", &database)?;
                let client = connect.client()?;
                let v = current_version(&client, &connect.url(), &database).await?;
                println!(
                    "database {database}: schema version {}; this binary knows up to {}",
                    v.map_or("none".to_string(), |v| v.to_string()),
                    latest_version()
                );
            }
        }
        Ok(())
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub database: String,
    pub from: Option<u32>,
    pub to: u32,
    pub applied: Vec<u32>,
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.applied.is_empty() {
            write!(
                f,
                "database {}: schema already at version {}, nothing to do",
                self.database, self.to
            )
        } else {
            write!(
                f,
                "database {}: schema upgraded from {} to {} (applied {:?})",
                self.database,
                self.from.map_or("empty".to_string(), |v| v.to_string()),
                self.to,
                self.applied
            )
        }
    }
}

/// The highest applied version, or `None` when the database or `schema_migrations` does not exist.
pub async fn current_version(
    client: &clickhouse::Client,
    url: &str,
    database: &str,
) -> Result<Option<u32>, SchemaError> {
    let q = |what: &str, source| SchemaError::Query {
        url: url.to_string(),
        what: what.to_string(),
        source,
    };
    let exists: u8 = client
        .query("SELECT count() > 0 FROM system.tables WHERE database = ? AND name = 'schema_migrations'")
        .bind(database)
        .fetch_one()
        .await
        .map_err(|e| q("checking for schema_migrations", e))?;
    if exists == 0 {
        return Ok(None);
    }
    let versions: Vec<u32> = client
        .query(&format!("SELECT version FROM {database}.schema_migrations"))
        .fetch_all()
        .await
        .map_err(|e| q("reading schema_migrations", e))?;
    Ok(versions.into_iter().max())
}

/// Brings `cfg.database` to `target` (default: newest) version. Safe to run concurrently with agents inserting
/// and to re-run; a database newer than this binary is an error and is left untouched.
pub async fn apply(
    client: &clickhouse::Client,
    url: &str,
    cfg: &SchemaConfig,
    target: Option<u32>,
) -> Result<ApplyReport, SchemaError> {
    let known = latest_version();
    let target = target.unwrap_or(known);
    if target == 0 || target > known {
        return Err(SchemaError::UnknownTarget(target, known));
    }
    let from = current_version(client, url, &cfg.database).await?;
    if let Some(found) = from {
        if found > known {
            return Err(SchemaError::NewerThanBinary {
                database: cfg.database.clone(),
                found,
                known,
            });
        }
    }
    let mut applied = Vec::new();
    if from.is_some_and(|v| v >= target) {
        return Ok(ApplyReport {
            database: cfg.database.clone(),
            from,
            to: from.unwrap_or(0),
            applied,
        });
    }
    for (i, sql) in bootstrap_statements(cfg).iter().enumerate() {
        client
            .query(sql)
            .execute()
            .await
            .map_err(|source| SchemaError::Statement {
                version: 0,
                name: "bootstrap",
                index: i + 1,
                total: 2,
                sql: sql.clone(),
                source,
            })?;
    }
    let start = from.unwrap_or(0);
    for m in MIGRATIONS
        .iter()
        .filter(|m| m.version > start && m.version <= target)
    {
        let stmts = m.statements(cfg);
        let total = stmts.len();
        for (i, sql) in stmts.iter().enumerate() {
            client
                .query(sql)
                .execute()
                .await
                .map_err(|source| SchemaError::Statement {
                    version: m.version,
                    name: m.name,
                    index: i + 1,
                    total,
                    sql: sql.clone(),
                    source,
                })?;
        }
        client
            .query(&format!(
                "INSERT INTO {}.schema_migrations (version, name, observer_version) VALUES (?, ?, ?)",
                cfg.database
            ))
            .bind(m.version)
            .bind(m.name)
            .bind(env!("CARGO_PKG_VERSION"))
            .execute()
            .await
            .map_err(|source| SchemaError::Query {
                url: url.to_string(),
                what: format!("recording migration {}", m.version),
                source,
            })?;
        tracing::info!(database = %cfg.database, version = m.version, name = m.name, "applied schema migration");
        applied.push(m.version);
    }
    Ok(ApplyReport {
        database: cfg.database.clone(),
        from,
        to: target,
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_units_and_rejects_garbage() {
        assert_eq!("30d".parse::<Retention>().unwrap().seconds(), 30 * 86_400);
        assert_eq!(
            "12h".parse::<Retention>().unwrap().to_sql_interval(),
            "INTERVAL 12 HOUR"
        );
        assert_eq!("2w".parse::<Retention>().unwrap().to_string(), "14d");
        assert_eq!(
            "90s".parse::<Retention>().unwrap().to_sql_interval(),
            "INTERVAL 90 SECOND"
        );
        // The agent's one duration syntax (humantime): fractions and combinations too, in whole seconds.
        assert_eq!("1.5d".parse::<Retention>().unwrap().to_string(), "36h");
        assert_eq!("1h 30m".parse::<Retention>().unwrap().to_string(), "90m");
        for bad in ["", "d", "30", "0d", "30x", "-1d", "1500ms"] {
            assert!(bad.parse::<Retention>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn identifiers_are_validated() {
        assert!(SchemaConfig::new("obs; DROP", None, Retention::days(1)).is_err());
        assert!(SchemaConfig::new("1db", None, Retention::days(1)).is_err());
        assert!(SchemaConfig::new("db", Some("a-b"), Retention::days(1)).is_err());
        let err = SchemaConfig::new("", None, Retention::days(1))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("database name"),
            "error names the problem: {err}"
        );
    }

    #[test]
    fn schema_commands_require_the_url_run_does_not() {
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            action: SchemaAction,
        }
        use clap::Parser;
        let status = Cli::try_parse_from(["x", "status", "--clickhouse-url", "http://h:8123"])
            .expect("parses");
        let SchemaAction::Status { connect, .. } = status.action else {
            panic!("status");
        };
        assert_eq!(connect.url(), "http://h:8123");
        if std::env::var_os("CLICKHOUSE_URL").is_none() {
            for cmd in ["status", "apply"] {
                let err = Cli::try_parse_from(["x", cmd]).unwrap_err().to_string();
                assert!(err.contains("--clickhouse-url"), "{cmd}: {err}");
            }
            assert!(Cli::try_parse_from(["x", "print"]).is_ok());
        }
    }
}
