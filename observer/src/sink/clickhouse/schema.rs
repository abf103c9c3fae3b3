//! ClickHouse schema: versioned, idempotent migrations and the `observer schema` command.
//!
//! Every migration is a list of `IF NOT EXISTS` statements generated from a [`SchemaConfig`] (database, optional
//! cluster, retention), so re-running a migration that was interrupted half-way is safe. Applied versions are
//! recorded in `schema_migrations`; `apply` runs only the versions above the recorded maximum and refuses a database
//! whose schema is newer than this binary knows.
//!
//! Layout (single node):
//! - `http_requests`: one row per HTTP exchange, every [`crate::event::Event`] field (see
//!   [`http_requests_columns`], from [`crate::event_fields!`]).
//! - `http_requests_1m` / `http_requests_1h`: AggregatingMergeTree rollups fed by materialized views.
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
use std::sync::LazyLock;

use clap::{Args, Subcommand};
use thiserror::Error;

use crate::event::{enum8, KeyState};

/// A column of `http_requests`, from [`crate::event_fields!`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    /// ClickHouse type.
    pub ty: String,
    /// `CODEC(...)`, or empty for the default.
    pub codec: &'static str,
    /// The schema version (migration) that adds the column.
    pub since: u32,
}

macro_rules! columns {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty => $ch:expr, $codec:literal, $since:literal; )*) => {
        fn build_columns() -> Vec<Column> {
            vec![$( Column { name: stringify!($name), ty: String::from($ch), codec: $codec, since: $since }, )*]
        }
    };
}

crate::event_fields!(columns);

/// The columns of `http_requests`, in [`crate::event::Event`] field order; the sink's RowBinary encoder writes
/// exactly these, in this order.
pub fn http_requests_columns() -> &'static [Column] {
    static COLUMNS: LazyLock<Vec<Column>> = LazyLock::new(build_columns);
    &COLUMNS
}

/// Latency quantiles kept in the rollups' `duration_quantiles` state, in this order.
pub const ROLLUP_QUANTILES: &str = "0.5, 0.9, 0.95, 0.99";

/// Errors of schema generation and application.
#[derive(Debug, Error)]
pub enum SchemaError {
    #[error(
        "invalid {what} {value:?}: use letters, digits and '_' only, not starting with a digit"
    )]
    InvalidIdentifier { what: &'static str, value: String },
    #[error("invalid retention {0:?}: expected a positive number with a unit s, m, h, d or w (e.g. 30d)")]
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
    #[error("cannot read ClickHouse password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || SchemaError::InvalidRetention(s.to_string());
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            _ => return Err(bad()),
        };
        let seconds = n.checked_mul(mult).filter(|&v| v > 0).ok_or_else(bad)?;
        Ok(Retention { seconds })
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

fn check_identifier(what: &'static str, value: &str) -> Result<(), SchemaError> {
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

/// What the generated DDL depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaConfig {
    database: String,
    cluster: Option<String>,
    retention: Retention,
    rollup_1m_retention: Retention,
    rollup_1h_retention: Retention,
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
        })
    }

    /// Retention of the per-minute and per-hour rollups (defaults 90 and 400 days).
    pub fn with_rollup_retention(mut self, minute: Retention, hour: Retention) -> Self {
        self.rollup_1m_retention = minute;
        self.rollup_1h_retention = hour;
        self
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    fn on_cluster(&self) -> String {
        match &self.cluster {
            Some(c) => format!(" ON CLUSTER {c}"),
            None => String::new(),
        }
    }

    /// Name of the table holding the data of a sharded table (`NAME_local` on a cluster).
    fn storage(&self, table: &str) -> String {
        match self.cluster {
            Some(_) => format!("{table}_local"),
            None => table.to_string(),
        }
    }

    /// Engine for a sharded table: `kind` is e.g. `MergeTree` or `AggregatingMergeTree`.
    fn sharded_engine(&self, kind: &str, table: &str) -> String {
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
    fn everywhere_engine(&self, kind: &str, kind_args: &str, table: &str) -> String {
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
    fn dedup_setting(&self) -> &'static str {
        match self.cluster {
            Some(_) => "",
            None => "\nSETTINGS non_replicated_deduplication_window = 10000",
        }
    }

    fn distributed(&self, table: &str, sharding_key: &str) -> Option<String> {
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

/// One schema version.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    statements: fn(&SchemaConfig) -> Vec<String>,
}

impl Migration {
    /// The migration's own statements, then the `http_requests` columns whose `since` is this version.
    pub fn statements(&self, cfg: &SchemaConfig) -> Vec<String> {
        let mut out = (self.statements)(cfg);
        if self.version > 1 {
            out.extend(add_columns(cfg, http_requests_columns(), self.version));
        }
        out
    }
}

/// All migrations, in version order. Never edit a released one: add a new version. A new event field only needs
/// an entry here whose version is the field's `since` in [`crate::event_fields!`] (its `statements` may be
/// [`no_statements`]): [`Migration::statements`] adds the column.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "http_requests",
        statements: v1_http_requests,
    },
    Migration {
        version: 2,
        name: "rollups_1m_1h",
        statements: v2_rollups,
    },
    Migration {
        version: 3,
        name: "registry_and_dictionaries",
        statements: v3_registry,
    },
];

/// For a migration that only adds event columns.
pub fn no_statements(_: &SchemaConfig) -> Vec<String> {
    Vec::new()
}

/// `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` for the columns of `columns` added in `version`, each after its
/// predecessor in the table so that upgraded and new databases have the same column order. On a cluster the
/// Distributed table gets the column too.
fn add_columns(cfg: &SchemaConfig, columns: &[Column], version: u32) -> Vec<String> {
    let db = &cfg.database;
    let mut out = Vec::new();
    for (i, c) in columns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.since == version)
    {
        let after = match i.checked_sub(1) {
            Some(p) => format!(" AFTER {}", columns[p].name),
            None => " FIRST".to_string(),
        };
        let mut tables = vec![cfg.storage("http_requests")];
        if cfg.cluster.is_some() {
            tables.push("http_requests".to_string());
        }
        for t in tables {
            out.push(format!(
                "ALTER TABLE {db}.{t}{oc} ADD COLUMN IF NOT EXISTS {def}{after}",
                oc = cfg.on_cluster(),
                def = column_definition(c),
            ));
        }
    }
    out
}

/// `name Type CODEC(...)`.
fn column_definition(c: &Column) -> String {
    if c.codec.is_empty() {
        format!("{} {}", c.name, c.ty)
    } else {
        format!("{} {} {}", c.name, c.ty, c.codec)
    }
}

/// The newest schema version this binary knows.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
}

/// Statements creating the database and `schema_migrations` (run before every apply; idempotent).
pub fn bootstrap_statements(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}{}", cfg.on_cluster()),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations{oc}\n(\n    \
             version UInt32,\n    name String,\n    applied_at DateTime64(3, 'UTC') DEFAULT now64(3),\n    \
             observer_version String\n)\nENGINE = {engine}\nORDER BY version",
            oc = cfg.on_cluster(),
            engine = cfg.everywhere_engine("ReplacingMergeTree", "(applied_at)", "schema_migrations"),
        ),
    ]
}

fn v1_http_requests(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    // Columns added later come with their own migration (see `Migration::statements`).
    let cols: Vec<String> = http_requests_columns()
        .iter()
        .filter(|c| c.since == 1)
        .map(|c| format!("    {}", column_definition(c)))
        .collect();
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {db}.{table}{oc}\n(\n{cols}\n)\nENGINE = {engine}\n\
         PARTITION BY toDate(ts)\nORDER BY (api_id, app_id, ts)\n\
         TTL toDateTime(ts) + {ttl}{dedup}",
        table = cfg.storage("http_requests"),
        oc = cfg.on_cluster(),
        cols = cols.join(",\n"),
        engine = cfg.sharded_engine("MergeTree", "http_requests"),
        ttl = cfg.retention.to_sql_interval(),
        dedup = cfg.dedup_setting(),
    )];
    out.extend(cfg.distributed("http_requests", "cityHash64(api_id, app_id)"));
    out
}

fn rollup(
    cfg: &SchemaConfig,
    table: &str,
    bucket: &str,
    bucket_expr: &str,
    ttl: Retention,
) -> Vec<String> {
    let db = &cfg.database;
    let storage = cfg.storage(table);
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {db}.{storage}{oc}\n(\n    \
         {bucket} DateTime('UTC') CODEC(Delta(4), ZSTD(1)),\n    \
         api_id LowCardinality(String),\n    \
         route LowCardinality(String),\n    \
         method LowCardinality(String),\n    \
         app_id LowCardinality(String),\n    \
         key_state {key_state},\n    \
         status_class UInt8,\n    \
         requests SimpleAggregateFunction(sum, UInt64),\n    \
         errors SimpleAggregateFunction(sum, UInt64),\n    \
         req_bytes SimpleAggregateFunction(sum, UInt64),\n    \
         resp_bytes SimpleAggregateFunction(sum, UInt64),\n    \
         duration_us_sum SimpleAggregateFunction(sum, UInt64),\n    \
         duration_us_max SimpleAggregateFunction(max, UInt64),\n    \
         duration_quantiles AggregateFunction(quantilesTDigest({ROLLUP_QUANTILES}), UInt64),\n    \
         client_workloads AggregateFunction(uniq, IPv6, LowCardinality(String), LowCardinality(String))\n)\n\
         ENGINE = {engine}\nPARTITION BY toYYYYMM({bucket})\n\
         ORDER BY (api_id, app_id, {bucket}, route, method, key_state, status_class)\n\
         TTL {bucket} + {ttl}{dedup}",
        oc = cfg.on_cluster(),
        key_state = enum8::<KeyState>(),
        engine = cfg.sharded_engine("AggregatingMergeTree", table),
        ttl = ttl.to_sql_interval(),
        dedup = cfg.dedup_setting(),
    )];
    out.extend(cfg.distributed(table, "cityHash64(api_id, app_id)"));
    out.push(format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{storage}_mv{oc} TO {db}.{storage}\nAS SELECT\n    \
         {bucket_expr} AS {bucket},\n    api_id,\n    route,\n    method,\n    app_id,\n    key_state,\n    \
         toUInt8(intDiv(status, 100)) AS status_class,\n    \
         count() AS requests,\n    \
         countIf(status >= 500 OR status = 0) AS errors,\n    \
         sum(req_bytes) AS req_bytes,\n    \
         sum(resp_bytes) AS resp_bytes,\n    \
         sum(duration_us) AS duration_us_sum,\n    \
         max(duration_us) AS duration_us_max,\n    \
         quantilesTDigestState({ROLLUP_QUANTILES})(duration_us) AS duration_quantiles,\n    \
         uniqState(src_ip, client_cgroup, client_comm) AS client_workloads\n\
         FROM {db}.{source}\nGROUP BY {bucket}, api_id, route, method, app_id, key_state, status_class",
        oc = cfg.on_cluster(),
        source = cfg.storage("http_requests"),
    ));
    out
}

fn v2_rollups(cfg: &SchemaConfig) -> Vec<String> {
    let mut out = rollup(
        cfg,
        "http_requests_1m",
        "minute",
        "toStartOfMinute(toDateTime(ts, 'UTC'))",
        cfg.rollup_1m_retention,
    );
    out.extend(rollup(
        cfg,
        "http_requests_1h",
        "hour",
        "toStartOfHour(toDateTime(ts, 'UTC'))",
        cfg.rollup_1h_retention,
    ));
    out
}

/// One registry table: its columns (besides `version`, `loaded_at`, `deleted`), key, and dictionary key.
struct RegistryTable {
    name: &'static str,
    columns: &'static [(&'static str, &'static str)],
    /// The id of one row of history: with `version` it orders the table, `*_latest` has one row per key.
    key: &'static [&'static str],
    /// The dictionary key, a prefix of `key`. When shorter, a `*_current` view keeps, per dictionary key, the row
    /// of `*_latest` with the greatest remaining key (for `key_grants`: the newest grant entry of a key for an API),
    /// and the dictionary reads that view.
    dict_key: &'static [&'static str],
}

/// Registry tables; [`super::registry_rows`] mirrors these columns.
const REGISTRY_TABLES: &[RegistryTable] = &[
    RegistryTable {
        name: "apis",
        columns: &[
            ("api_id", "String"),
            ("name", "String"),
            ("owner", "String"),
            ("line_of_business", "String"),
            ("auth", "String"),
            ("hosts", "Array(String)"),
            ("base_path", "String"),
        ],
        key: &["api_id"],
        dict_key: &["api_id"],
    },
    RegistryTable {
        name: "applications",
        columns: &[
            ("app_id", "String"),
            ("name", "String"),
            ("team", "String"),
            ("line_of_business", "String"),
            ("created_by", "String"),
            ("created_at", "Nullable(DateTime64(6, 'UTC'))"),
            ("predecessor", "String"),
            ("workloads", "Array(String)"),
        ],
        key: &["app_id"],
        dict_key: &["app_id"],
    },
    RegistryTable {
        name: "key_grants",
        columns: &[
            ("key_fingerprint", "String"),
            ("api_id", "String"),
            ("grant_seq", "UInt32"),
            ("key_id", "String"),
            ("key_suffix", "String"),
            ("app_id", "String"),
            ("granted_by", "String"),
            ("valid_from", "Nullable(DateTime64(6, 'UTC'))"),
            ("valid_until", "Nullable(DateTime64(6, 'UTC'))"),
            ("revoked_at", "Nullable(DateTime64(6, 'UTC'))"),
            ("revoked_by", "String"),
            ("note", "String"),
        ],
        key: &["key_fingerprint", "api_id", "grant_seq"],
        dict_key: &["key_fingerprint", "api_id"],
    },
    RegistryTable {
        name: "teams",
        columns: &[
            ("team", "String"),
            ("name", "String"),
            ("line_of_business", "String"),
            ("alert_contact", "String"),
        ],
        key: &["team"],
        dict_key: &["team"],
    },
];

fn v3_registry(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    let oc = cfg.on_cluster();
    let mut out = Vec::new();
    for t in REGISTRY_TABLES {
        let name = t.name;
        let mut cols: Vec<String> = t
            .columns
            .iter()
            .map(|(c, ty)| {
                let ty = if t.key.contains(c) && *ty == "String" {
                    format!("LowCardinality({ty})")
                } else {
                    ty.to_string()
                };
                format!("    {c} {ty}")
            })
            .collect();
        cols.push("    version UInt64".into());
        cols.push("    loaded_at DateTime64(6, 'UTC')".into());
        cols.push("    deleted Bool".into());
        let key = t.key.join(", ");
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {db}.{name}{oc}\n(\n{cols}\n)\nENGINE = {engine}\n\
             ORDER BY ({key}, version)",
            cols = cols.join(",\n"),
            engine = cfg.everywhere_engine("ReplacingMergeTree", "(loaded_at)", name),
        ));
        // Newest version of every id that is not deleted.
        let latest = newest(
            t.columns
                .iter()
                .map(|(c, _)| *c)
                .filter(|c| !t.key.contains(c)),
            "v",
        );
        out.push(format!(
            "CREATE VIEW IF NOT EXISTS {db}.{name}_latest{oc} AS\nSELECT {key}, {latest}, \
             max(v) AS version, argMax(loaded_at, v) AS loaded_at\n\
             FROM (SELECT *, version AS v FROM {db}.{name})\nGROUP BY {key}\nHAVING argMax(deleted, v) = false",
        ));
        let mut dict_source = format!("{name}_latest");
        if t.dict_key.len() < t.key.len() {
            // Per dictionary key, the row with the greatest rest-of-key (e.g. the newest grant entry).
            let rest = &t.key[t.dict_key.len()..];
            let cols = newest(
                t.columns
                    .iter()
                    .map(|(c, _)| *c)
                    .chain(["version", "loaded_at"])
                    .filter(|c| !t.dict_key.contains(c)),
                "o",
            );
            out.push(format!(
                "CREATE VIEW IF NOT EXISTS {db}.{name}_current{oc} AS\nSELECT {dkey}, {cols}\n\
                 FROM (SELECT *, tuple({rest}) AS o FROM {db}.{name}_latest)\nGROUP BY {dkey}",
                rest = rest.join(", "),
                dkey = t.dict_key.join(", "),
            ));
            dict_source = format!("{name}_current");
        }
        let dict_cols: Vec<String> = t
            .columns
            .iter()
            .map(|(c, ty)| {
                let default = match *ty {
                    "String" => " DEFAULT ''",
                    "UInt32" => " DEFAULT 0",
                    "Array(String)" => "",
                    _ => " DEFAULT NULL",
                };
                format!("    {c} {ty}{default}")
            })
            .collect();
        out.push(format!(
            "CREATE DICTIONARY IF NOT EXISTS {db}.{name}_dict{oc}\n(\n{cols},\n    version UInt64 DEFAULT 0\n)\n\
             PRIMARY KEY {dkey}\nSOURCE(CLICKHOUSE(DB '{db}' TABLE '{dict_source}'))\n\
             LIFETIME(MIN 30 MAX 120)\nLAYOUT(COMPLEX_KEY_HASHED())",
            cols = dict_cols.join(",\n"),
            dkey = t.dict_key.join(", "),
        ));
    }
    out
}

/// `argMax(tuple(c), by).1 AS c` for each column: its value in the row with the greatest `by`. Through a tuple
/// because argMax skips NULL values, and a cleared date (a grant revoked, then granted again) must win.
fn newest<'a>(columns: impl Iterator<Item = &'a str>, by: &str) -> String {
    columns
        .map(|c| format!("argMax(tuple({c}), {by}).1 AS {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every statement of the full schema (bootstrap, then each migration up to `target`), for `schema print`.
pub fn all_statements(cfg: &SchemaConfig, target: u32) -> Vec<String> {
    let mut out = bootstrap_statements(cfg);
    for m in MIGRATIONS.iter().filter(|m| m.version <= target) {
        out.extend(m.statements(cfg));
    }
    out
}

/// Connection settings for schema commands.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// ClickHouse HTTP(S) URL, e.g. http://127.0.0.1:8123.
    #[arg(long, env = "CLICKHOUSE_URL")]
    pub clickhouse_url: String,
    /// ClickHouse user.
    #[arg(long, env = "CLICKHOUSE_USER")]
    pub clickhouse_user: Option<String>,
    /// File holding the ClickHouse password (trailing newline ignored).
    #[arg(long)]
    pub clickhouse_password_file: Option<PathBuf>,
}

impl ConnectArgs {
    pub fn client(&self) -> Result<clickhouse::Client, SchemaError> {
        let mut client = clickhouse::Client::default().with_url(&self.clickhouse_url);
        if let Some(user) = &self.clickhouse_user {
            client = client.with_user(user);
        }
        if let Some(path) = &self.clickhouse_password_file {
            client = client.with_password(read_password(path)?);
        }
        Ok(client)
    }
}

/// Reads a password file, dropping one trailing newline.
pub fn read_password(path: &std::path::Path) -> Result<String, SchemaError> {
    let s = std::fs::read_to_string(path).map_err(|source| SchemaError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(s.strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&s)
        .to_string())
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
}

impl LayoutArgs {
    pub fn config(&self) -> Result<SchemaConfig, SchemaError> {
        Ok(
            SchemaConfig::new(&self.database, self.cluster.as_deref(), self.retention)?
                .with_rollup_retention(self.rollup_1m_retention, self.rollup_1h_retention),
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
                let report = apply(&client, &connect.clickhouse_url, &cfg, target_version).await?;
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
                let v = current_version(&client, &connect.clickhouse_url, &database).await?;
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

    fn single() -> SchemaConfig {
        SchemaConfig::new("observer", None, Retention::days(30)).expect("valid config")
    }

    fn clustered() -> SchemaConfig {
        SchemaConfig::new("obs", Some("prod"), "7d".parse().expect("7d parses"))
            .expect("valid config")
    }

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
        for bad in ["", "d", "30", "0d", "30x", "-1d", "1.5d"] {
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
    fn versions_are_dense_and_increasing() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as u32 + 1, "migration {} out of order", m.name);
        }
        assert!(
            latest_version() >= 2,
            "at least two versions so upgrades are exercised"
        );
    }

    #[test]
    fn every_event_column_belongs_to_a_known_migration() {
        for c in http_requests_columns() {
            assert!(
                c.since >= 1 && c.since <= latest_version(),
                "column {} has since = {}, but MIGRATIONS ends at {}: add the migration",
                c.name,
                c.since,
                latest_version()
            );
        }
    }

    #[test]
    fn a_later_column_is_added_after_its_predecessor() {
        let col = |name, since| Column {
            name,
            ty: "String".into(),
            codec: "",
            since,
        };
        let cols = [col("ts", 1), col("extra", 4), col("path", 1)];
        assert_eq!(
            add_columns(&single(), &cols, 4),
            vec![
                "ALTER TABLE observer.http_requests ADD COLUMN IF NOT EXISTS extra String AFTER ts"
            ]
        );
        assert_eq!(
            add_columns(&clustered(), &cols, 4),
            vec![
                "ALTER TABLE obs.http_requests_local ON CLUSTER prod ADD COLUMN IF NOT EXISTS extra String AFTER ts",
                "ALTER TABLE obs.http_requests ON CLUSTER prod ADD COLUMN IF NOT EXISTS extra String AFTER ts",
            ]
        );
        assert!(add_columns(&single(), &cols, 5).is_empty());
    }

    #[test]
    fn every_statement_is_idempotent() {
        for cfg in [single(), clustered()] {
            for s in all_statements(&cfg, latest_version()) {
                let head: String = s.lines().next().unwrap_or_default().to_string();
                assert!(
                    head.contains("IF NOT EXISTS"),
                    "statement is not idempotent: {head}"
                );
            }
        }
    }

    #[test]
    fn http_requests_ddl_single_node() {
        let ddl = v1_http_requests(&single());
        assert_eq!(ddl.len(), 1, "no Distributed table on a single node");
        let t = &ddl[0];
        for needle in [
            "CREATE TABLE IF NOT EXISTS observer.http_requests\n",
            "ts DateTime64(6, 'UTC') CODEC(Delta(8), ZSTD(1))",
            "src_ip IPv6 CODEC(ZSTD(1))",
            "method LowCardinality(String)",
            "req_bytes UInt64 CODEC(T64, ZSTD(1))",
            "key_state Enum8('none' = 0",
            "ENGINE = MergeTree\n",
            "PARTITION BY toDate(ts)",
            "ORDER BY (api_id, app_id, ts)",
            "TTL toDateTime(ts) + INTERVAL 30 DAY",
            "non_replicated_deduplication_window",
        ] {
            assert!(t.contains(needle), "missing {needle:?} in:\n{t}");
        }
        assert!(
            !t.contains("ON CLUSTER"),
            "single node DDL must not use ON CLUSTER:\n{t}"
        );
    }

    #[test]
    fn http_requests_ddl_cluster() {
        let ddl = v1_http_requests(&clustered());
        assert_eq!(ddl.len(), 2, "local table plus Distributed table: {ddl:#?}");
        assert!(ddl[0]
            .starts_with("CREATE TABLE IF NOT EXISTS obs.http_requests_local ON CLUSTER prod\n"));
        assert!(ddl[0].contains(
            "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/obs/http_requests_local', '{replica}')"
        ), "{}", ddl[0]);
        assert!(ddl[0].contains("TTL toDateTime(ts) + INTERVAL 7 DAY"));
        assert!(!ddl[0].contains("non_replicated_deduplication_window"));
        assert_eq!(
            ddl[1],
            "CREATE TABLE IF NOT EXISTS obs.http_requests ON CLUSTER prod AS obs.http_requests_local\n\
             ENGINE = Distributed(prod, obs, http_requests_local, cityHash64(api_id, app_id))"
        );
    }

    #[test]
    fn rollups_cluster_read_local_tables() {
        let ddl = v2_rollups(&clustered()).join(";\n");
        for needle in [
            "CREATE TABLE IF NOT EXISTS obs.http_requests_1m_local ON CLUSTER prod",
            "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/obs/http_requests_1m_local', '{replica}')",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS obs.http_requests_1m_local_mv ON CLUSTER prod TO obs.http_requests_1m_local",
            "FROM obs.http_requests_local\n",
            "ENGINE = Distributed(prod, obs, http_requests_1h_local, cityHash64(api_id, app_id))",
            "TTL hour + INTERVAL 400 DAY",
        ] {
            assert!(ddl.contains(needle), "missing {needle:?} in:\n{ddl}");
        }
    }

    #[test]
    fn rollups_single_node() {
        let ddl = v2_rollups(&single()).join(";\n");
        for needle in [
            "CREATE TABLE IF NOT EXISTS observer.http_requests_1m\n",
            "ENGINE = AggregatingMergeTree\n",
            "quantilesTDigestState(0.5, 0.9, 0.95, 0.99)(duration_us)",
            "uniqState(src_ip, client_cgroup, client_comm)",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS observer.http_requests_1h_mv TO observer.http_requests_1h",
            "TTL minute + INTERVAL 90 DAY",
            "non_replicated_deduplication_window",
        ] {
            assert!(ddl.contains(needle), "missing {needle:?} in:\n{ddl}");
        }
    }

    #[test]
    fn registry_ddl_and_dictionaries() {
        let ddl = v3_registry(&single()).join(";\n");
        for needle in [
            "CREATE TABLE IF NOT EXISTS observer.key_grants\n",
            "ENGINE = ReplacingMergeTree(loaded_at)\nORDER BY (key_fingerprint, api_id, grant_seq, version)",
            "    grant_seq UInt32,\n",
            "CREATE VIEW IF NOT EXISTS observer.key_grants_current AS\nSELECT key_fingerprint, api_id, \
             argMax(tuple(grant_seq), o).1 AS grant_seq,",
            "SOURCE(CLICKHOUSE(DB 'observer' TABLE 'key_grants_current'))",
            "CREATE VIEW IF NOT EXISTS observer.apis_latest AS",
            "HAVING argMax(deleted, v) = false",
            "CREATE DICTIONARY IF NOT EXISTS observer.applications_dict\n",
            "SOURCE(CLICKHOUSE(DB 'observer' TABLE 'applications_latest'))",
            "LIFETIME(MIN 30 MAX 120)",
            "PRIMARY KEY key_fingerprint, api_id",
        ] {
            assert!(ddl.contains(needle), "missing {needle:?} in:\n{ddl}");
        }
        let c = v3_registry(&clustered()).join(";\n");
        assert!(c.contains(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/all/obs/teams', '{replica}', loaded_at)"
        ), "{c}");
        assert!(
            c.contains("CREATE DICTIONARY IF NOT EXISTS obs.teams_dict ON CLUSTER prod"),
            "{c}"
        );
    }

    #[test]
    fn bootstrap_cluster() {
        let b = bootstrap_statements(&clustered());
        assert_eq!(b[0], "CREATE DATABASE IF NOT EXISTS obs ON CLUSTER prod");
        assert!(b[1].contains(
            "ReplicatedReplacingMergeTree('/clickhouse/tables/all/obs/schema_migrations', '{replica}', applied_at)"
        ), "{}", b[1]);
    }
}
