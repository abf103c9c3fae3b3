//! Every version of observer's ClickHouse schema, in order: the one place to change the tables.
//!
//! A migration is a function from [`SchemaConfig`] to `IF NOT EXISTS` statements (safe to re-run after an
//! interruption); [`super::schema::apply`] runs the versions a database lacks and records them. Released versions
//! are never edited. To change the schema, append a [`Migration`] to [`MIGRATIONS`] with the next version:
//! - a new event field: its line in [`crate::event_fields!`] names this version as the column's `since`, and
//!   [`Migration::statements`] adds the column (`statements: no_statements` when that is all the version does);
//! - anything else (a rollup, a view, a registry table): its DDL in a `vN_...` function here.
use std::sync::LazyLock;

use super::registry_schema::{v3_registry, v5_grants_in_force};
use super::schema::{Retention, SchemaConfig};
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

/// The `http_requests` column `name` (a migration naming a column that does not exist is a bug).
fn http_requests_column(name: &str) -> &'static Column {
    http_requests_columns()
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("http_requests has no column {name}"))
}

/// Latency quantiles kept in the rollups' `duration_quantiles` state, in this order.
pub const ROLLUP_QUANTILES: &str = "0.5, 0.9, 0.95, 0.99";

/// One schema version.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    statements: fn(&SchemaConfig) -> Vec<String>,
}

impl Migration {
    /// The `http_requests` columns whose `since` is this version, then the migration's own statements (which may
    /// read those columns).
    pub fn statements(&self, cfg: &SchemaConfig) -> Vec<String> {
        let mut out = Vec::new();
        if self.version > 1 {
            out.extend(add_columns(cfg, http_requests_columns(), self.version));
        }
        out.extend((self.statements)(cfg));
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
    Migration {
        version: 4,
        name: "capture_incomplete_and_framing_anomaly",
        statements: no_statements,
    },
    Migration {
        version: 5,
        name: "key_grants_in_force",
        statements: v5_grants_in_force,
    },
    Migration {
        version: 6,
        name: "pod_identity",
        statements: no_statements,
    },
    Migration {
        version: 7,
        name: "insights",
        statements: v7_insights,
    },
    Migration {
        version: 8,
        name: "key_use_1d",
        statements: v8_key_use,
    },
    Migration {
        version: 9,
        name: "request_hash_and_ml_features",
        statements: v9_ml_features,
    },
    Migration {
        version: 10,
        name: "origin_across_hops",
        statements: no_statements,
    },
    Migration {
        version: 11,
        name: "origin_across_nodes",
        statements: v11_origin_fleet,
    },
    Migration {
        version: 12,
        name: "registry_routes_and_webhooks",
        statements: v12_registry_routes_and_webhooks,
    },
    Migration {
        version: 13,
        name: "http_requests_codecs",
        statements: v13_codecs,
    },
    Migration {
        version: 14,
        name: "request_id_ttl",
        statements: v14_request_id_ttl,
    },
    Migration {
        version: 15,
        name: "request_hash_32_bits",
        statements: v15_request_hash_32_bits,
    },
    Migration {
        version: 16,
        name: "rollup_view",
        statements: v16_rollup_view,
    },
    Migration {
        version: 17,
        name: "http_requests_codecs_for_reused_connections",
        statements: v17_codecs,
    },
];

/// One rollup of `http_requests` (migration 2): its table, its time bucket's column and the bucket's width.
pub struct Rollup {
    pub table: &'static str,
    pub bucket: &'static str,
    pub seconds: u32,
}

pub const ROLLUP_1M: Rollup = Rollup {
    table: "http_requests_1m",
    bucket: "minute",
    seconds: 60,
};

pub const ROLLUP_1H: Rollup = Rollup {
    table: "http_requests_1h",
    bucket: "hour",
    seconds: 3_600,
};

/// The parameterized view the dashboards read the rollups through (migration 16); see [`v16_rollup_view`].
pub const ROLLUP_VIEW: &str = "http_requests_rollup";

/// `http_requests_rollup(from = ..., to = ..., step_s = ...)`: the rollup rows of the time range `from`..`to`
/// (bucket starts, both ends included, as Grafana's `$__timeFilter`), each with its bucket's start as `bucket`, read
/// from the coarsest rollup that gives the same numbers. A panel passes the width of the time buckets it groups into
/// as `step_s` (`$__interval_s`), or 0 when it aggregates the whole range. When that width is a whole number of
/// hours (0 included), every hour lying wholly inside the range comes from `http_requests_1h`, and only the minutes
/// of the partial hours at the range's ends from `http_requests_1m`; otherwise every minute does. Sums, counts,
/// maxima and `uniq` states come out the same either way (t-digest quantile states merge to close, not always equal,
/// values); a long range reads up to 60 times fewer rows, less where a rollup key combination is quiet for most
/// minutes of an hour (BENCHMARKS.md, "ClickHouse").
///
/// Both branches test the same condition on a bucket's hour, so each minute is counted once; `step_s` and the range
/// are constants by the time ClickHouse plans the query, so a branch whose condition is false reads no part. The
/// rollups' columns come from their tables (`* EXCEPT` the bucket), so a column added to both reaches the view.
fn v16_rollup_view(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    let (m, h) = (&ROLLUP_1M, &ROLLUP_1H);
    let whole_hour = |hour: &str| {
        format!(
            "{{step_s:UInt32}} % {hs} = 0 AND {hour} >= {{from:DateTime}} AND {hour} <= {{to:DateTime}} - {last}",
            hs = h.seconds,
            last = h.seconds - m.seconds,
        )
    };
    vec![format!(
        "CREATE VIEW IF NOT EXISTS {db}.{ROLLUP_VIEW}{oc} AS\n\
         SELECT {mb} AS bucket, * EXCEPT ({mb})\nFROM {db}.{mt}\n\
         WHERE {mb} >= {{from:DateTime}} AND {mb} <= {{to:DateTime}}\n  \
         AND NOT ({in_hours})\n\
         UNION ALL\n\
         SELECT {hb} AS bucket, * EXCEPT ({hb})\nFROM {db}.{ht}\n\
         WHERE {hours}",
        oc = cfg.on_cluster(),
        mb = m.bucket,
        mt = m.table,
        hb = h.bucket,
        ht = h.table,
        in_hours = whole_hour(&format!("toStartOfHour({})", m.bucket)),
        hours = whole_hour(h.bucket),
    )]
}

/// The `http_requests` columns whose codec migration 17 changed (README "Storage in ClickHouse", per column):
/// - `ts`: `Delta(8), T64, ZSTD(1)`: T64 keeps only the bits the deltas of a 64-row block use (about 20 of 64 at a
///   thousand requests a second), which ZSTD alone left as runs of zero bytes (3.2 -> 2.6 bytes a row);
/// - `conn_id`, `src_port`: `ZSTD(3)`: on reused connections consecutive rows of an (API, application) pair take one
///   of a few values (its pool's connections), which ZSTD finds as repeats; deltas and T64's bit planes hid them
///   (1.0 -> 0.7 and 1.2 -> 0.6 bytes a row);
/// - `truncated`, `incomplete`: `T64, ZSTD(1)`: 64 flags in 8 bytes before ZSTD, which cannot code a byte in under a
///   bit (0.15 -> 0.08);
/// - `trace_id_hash`, `request_id_hash`: `T64, ZSTD(1)`: the same 8 bytes for a 64-bit hash, and only the bits used
///   for a narrower one, as `request_hash` since migration 15.
pub const V17_CODEC_COLUMNS: &[&str] = &[
    "ts",
    "src_port",
    "truncated",
    "conn_id",
    "incomplete",
    "trace_id_hash",
    "request_id_hash",
];

/// Migration 17: the codecs of [`V17_CODEC_COLUMNS`] on `http_requests` (and on the copies of `conn_id` and `ts` in
/// `origin_fleet`, so that upgraded and new databases agree). A metadata change: new parts use them, existing parts
/// as they are merged; no row changes.
fn v17_codecs(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    let oc = cfg.on_cluster();
    let modify = |table: String, name: &str| {
        format!(
            "ALTER TABLE {db}.{table}{oc} MODIFY COLUMN {}",
            column_definition(http_requests_column(name))
        )
    };
    let mut out: Vec<String> = V17_CODEC_COLUMNS
        .iter()
        .map(|c| modify(cfg.storage("http_requests"), c))
        .collect();
    out.extend(["conn_id", "ts"].map(|c| modify(cfg.storage("origin_fleet"), c)));
    out
}

/// `request_hash` in 4 bytes a row instead of 8 (README "Storage in ClickHouse": 38.4 -> 34.4 bytes per row over a
/// 30-day retention): the agent keeps 32 bits of the hash ([`crate::enrich::request_hash`]) and T64 stores only the
/// bits a block uses. The column stays `UInt64`, so older agents' inserts and spooled batches still match the table
/// (their 64-bit values cost 8 bytes until they are upgraded). Existing rows keep what the new agent computes for the
/// same request, the low 32 bits (0 becomes 1, as there), by a background mutation of that column alone.
fn v15_request_hash_32_bits(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    let table = cfg.storage("http_requests");
    let oc = cfg.on_cluster();
    vec![
        format!(
            "ALTER TABLE {db}.{table}{oc} MODIFY COLUMN {}",
            column_definition(http_requests_column("request_hash"))
        ),
        format!(
            "ALTER TABLE {db}.{table}{oc} UPDATE request_hash = greatest(bitAnd(request_hash, 4294967295), 1) \
             WHERE request_hash > 4294967295"
        ),
    ]
}

/// The raw `request_id` for `--request-id-retention` (default 7 days), its keyed hash for the row's whole life: the
/// raw id (a random X-Request-Id is 16 bytes of entropy, about 16.6 bytes a row compressed, half of a row) is what an
/// operator greps an incident by while it is fresh; older rows keep `request_id_hash` for joins across nodes
/// (`origin join`) and lookups. A column TTL: a merge after the deadline empties the column in the part and drops its
/// file (README "Storage in ClickHouse"). On a table with data, ClickHouse applies the TTL to existing parts as a
/// background mutation (`materialize_ttl_after_modify`).
fn v14_request_id_ttl(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    let table = cfg.storage("http_requests");
    let oc = cfg.on_cluster();
    vec![format!(
        "ALTER TABLE {db}.{table}{oc} MODIFY COLUMN {} TTL toDateTime(ts) + {}",
        column_definition(http_requests_column("request_id")),
        cfg.request_id_retention.to_sql_interval()
    )]
}

/// Smaller `http_requests` rows (README "Storage in ClickHouse": 41.3 -> 34.6 bytes per row on the realistic
/// generator): every column to its codec in [`crate::event_fields!`] (low-cardinality dictionaries, enums, flags
/// and arrays entropy-coded by ZSTD instead of the default LZ4, `conn_id` as deltas) and larger compression blocks,
/// which ZSTD turns into a better ratio on the random-looking columns (`request_id`, `path`). Changing a codec is a
/// metadata change: new parts use it, existing ones as they are merged. On a new table (created with these codecs)
/// the statements change nothing.
fn v13_codecs(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    let table = cfg.storage("http_requests");
    let oc = cfg.on_cluster();
    let mut out: Vec<String> = http_requests_columns()
        .iter()
        .filter(|c| c.since < 13 && !c.codec.is_empty())
        .map(|c| {
            format!(
                "ALTER TABLE {db}.{table}{oc} MODIFY COLUMN {}",
                column_definition(c)
            )
        })
        .collect();
    out.push(format!(
        "ALTER TABLE {db}.{table}{oc} MODIFY SETTING min_compress_block_size = {HTTP_REQUESTS_MIN_BLOCK}, \
         max_compress_block_size = {HTTP_REQUESTS_MAX_BLOCK}"
    ));
    out
}

/// `http_requests` compression blocks (bytes): four to sixteen times the server's defaults (64 KiB, 1 MiB).
const HTTP_REQUESTS_MIN_BLOCK: u32 = 1 << 20;
const HTTP_REQUESTS_MAX_BLOCK: u32 = 4 << 20;

/// Registry facts the fleet-wide insights runner needs and the tables lacked: an API's route templates (for
/// `undocumented_route`) and a team's `alert_webhook` (to notify as the agent does). The `*_latest` views and the
/// dictionaries keep their columns; the runner reads these from the tables ([`crate::insights::fleet`]).
fn v12_registry_routes_and_webhooks(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    let oc = cfg.on_cluster();
    [
        ("apis", "routes Array(String)", "base_path"),
        ("teams", "alert_webhook String", "alert_contact"),
    ]
    .iter()
    .map(|(table, column, after)| {
        format!("ALTER TABLE {db}.{table}{oc} ADD COLUMN IF NOT EXISTS {column} AFTER {after}")
    })
    .collect()
}

/// The columns of `insights`: one row per version of a finding (see [`crate::insights::finding::Finding`]).
pub const INSIGHTS_COLUMNS: &[(&str, &str)] = &[
    // detected_at of this version
    ("ts", "DateTime64(6, 'UTC')"),
    ("id", "String"),
    ("version", "UInt32"),
    // open | update | closed
    ("status", "LowCardinality(String)"),
    ("kind", "LowCardinality(String)"),
    // info | warning | critical
    ("severity", "LowCardinality(String)"),
    ("team", "LowCardinality(String)"),
    ("api_id", "LowCardinality(String)"),
    ("app_id", "LowCardinality(String)"),
    ("key_id", "String"),
    ("key_fingerprint", "String"),
    ("workload", "String"),
    ("route", "String"),
    // who or what the finding is about, in words ("app checkout-v2 on payments")
    ("subject", "String"),
    // one short line for lists and alerts
    ("title", "String"),
    ("explanation", "String"),
    // the figures, as a JSON object
    ("evidence", "String"),
    ("first_seen", "DateTime64(6, 'UTC')"),
    ("last_seen", "DateTime64(6, 'UTC')"),
    // who raised it: `agent:<node>` or `fleet`
    ("source", "LowCardinality(String)"),
];

/// Findings of the insights detectors (the agent's `--insights` and the fleet-wide `insights run`), one row per
/// version; `insights_latest` keeps the newest version of each finding.
fn v7_insights(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    let oc = cfg.on_cluster();
    let cols: Vec<String> = INSIGHTS_COLUMNS
        .iter()
        .map(|(c, ty)| format!("    {c} {ty}"))
        .collect();
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.insights{oc}\n(\n{cols}\n)\nENGINE = {engine}\n\
             PARTITION BY toYYYYMM(ts)\nORDER BY (kind, id, version)",
            cols = cols.join(",\n"),
            engine = cfg.everywhere_engine("ReplacingMergeTree", "", "insights"),
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {db}.insights_latest{oc} AS\n\
             SELECT * FROM {db}.insights FINAL ORDER BY id, version DESC LIMIT 1 BY id"
        ),
    ]
}

/// `key_use_1d`: calls and last call per (API key, API, day), kept as long as the 1h rollup. The fleet-wide insights
/// runner reads it for `unused_grant` (a grant with no call for N days, longer than raw events are kept).
fn v8_key_use(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    let oc = cfg.on_cluster();
    let storage = cfg.storage("key_use_1d");
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {db}.{storage}{oc}\n(\n    \
         day Date,\n    \
         key_fingerprint String,\n    \
         api_id LowCardinality(String),\n    \
         calls SimpleAggregateFunction(sum, UInt64),\n    \
         last_call SimpleAggregateFunction(max, DateTime64(6, 'UTC'))\n)\n\
         ENGINE = {engine}\nPARTITION BY toYYYYMM(day)\nORDER BY (key_fingerprint, api_id, day)\n\
         TTL day + {ttl}{dedup}",
        engine = cfg.sharded_engine("AggregatingMergeTree", "key_use_1d"),
        ttl = cfg.rollup_1h_retention.to_sql_interval(),
        dedup = cfg.dedup_setting(),
    )];
    out.extend(cfg.distributed("key_use_1d", "cityHash64(key_fingerprint)"));
    out.push(format!(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{storage}_mv{oc} TO {db}.{storage}\nAS SELECT\n    \
         toDate(ts, 'UTC') AS day,\n    key_fingerprint,\n    api_id,\n    \
         count() AS calls,\n    max(ts) AS last_call\n\
         FROM {db}.{source}\nWHERE key_fingerprint != ''\nGROUP BY day, key_fingerprint, api_id",
        source = cfg.storage("http_requests"),
    ));
    out
}

/// Columns of `ml_features_1m`, in order, each with what it means (docs/ml-features.md shows the same list; a test
/// checks the view has exactly these).
pub const ML_FEATURE_COLUMNS: &[(&str, &str)] = &[
    ("minute", "start of the minute (UTC)"),
    ("api_id", "the API called (\"\" when no registered API matched)"),
    ("app_id", "the calling application (\"\" when none was identified)"),
    ("requests", "exchanges in the minute"),
    ("rate_per_s", "requests / 60"),
    ("error_ratio_4xx", "share of exchanges answered 4xx"),
    ("error_ratio_5xx", "share of exchanges answered 5xx"),
    ("no_response_ratio", "share of exchanges without a response (status 0: closed or timed out)"),
    ("latency_p50_us", "median request-to-response-head time of answered exchanges, µs"),
    ("latency_p90_us", "90th percentile of the same"),
    ("latency_p99_us", "99th percentile of the same"),
    ("distinct_sources", "distinct clients: local workload (comm and cgroup), else source address"),
    ("distinct_routes", "distinct route templates called"),
    ("keyless_ratio", "share of exchanges without an API key or with one the registry does not know"),
    ("repeat_ratio", "share of exchanges carrying a request_hash already seen earlier in the minute (the same request again); NULL when no exchange had a hash"),
    ("new_pair", "1 in the first minute the (api_id, app_id) pair appears in the table, else 0"),
];

/// `request_hash` (the column), and `ml_features_1m`: per-minute features per (api_id, app_id) computed from
/// `http_requests`, documented column by column in [`ML_FEATURE_COLUMNS`], for training models on the traffic.
fn v9_ml_features(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    let oc = cfg.on_cluster();
    vec![format!(
        "CREATE VIEW IF NOT EXISTS {db}.ml_features_1m{oc} AS\n\
         SELECT minute, api_id, app_id, requests,\n\
             requests / 60 AS rate_per_s,\n\
             errors_4xx / requests AS error_ratio_4xx,\n\
             errors_5xx / requests AS error_ratio_5xx,\n\
             no_response / requests AS no_response_ratio,\n\
             latency[1] AS latency_p50_us,\n\
             latency[2] AS latency_p90_us,\n\
             latency[3] AS latency_p99_us,\n\
             distinct_sources, distinct_routes,\n\
             keyless / requests AS keyless_ratio,\n\
             if(hashed = 0, NULL, (hashed - distinct_requests) / hashed) AS repeat_ratio,\n\
             toUInt8(minute = min(minute) OVER (PARTITION BY api_id, app_id)) AS new_pair\n\
         FROM (\n\
             SELECT toStartOfMinute(toDateTime(ts, 'UTC')) AS minute, api_id, app_id,\n\
                 count() AS requests,\n\
                 countIf(status >= 400 AND status < 500) AS errors_4xx,\n\
                 countIf(status >= 500) AS errors_5xx,\n\
                 countIf(status = 0) AS no_response,\n\
                 quantilesIf(0.5, 0.9, 0.99)(duration_us, status != 0) AS latency,\n\
                 uniqExact(if(client_comm = '' AND client_cgroup = '', toString(src_ip), \
                     concat(client_comm, ' ', client_cgroup))) AS distinct_sources,\n\
                 uniqExact(route) AS distinct_routes,\n\
                 countIf(key_state IN ('none', 'unknown')) AS keyless,\n\
                 countIf(request_hash != 0) AS hashed,\n\
                 uniqExactIf(request_hash, request_hash != 0) AS distinct_requests\n\
             FROM {db}.http_requests\n\
             GROUP BY minute, api_id, app_id\n\
         )"
    )]
}

/// The origin columns the fleet-wide join fills ([`crate::origin_join`]), in `http_requests` order.
pub const ORIGIN_COLUMNS: &[&str] = &[
    "origin_app_id",
    "origin_key_fingerprint",
    "origin_api_id",
    "parent_conn_id",
    "parent_ts",
    "hop",
    "origin_by",
];

/// `origin_fleet`: the origin of exchanges whose parent ran on another node, found by `observer origin join` from
/// the keyed trace and request id hashes (one row per exchange, the newest fill kept); and `http_requests_origin`,
/// `http_requests` with those rows' origin in place of what the node decided.
fn v11_origin_fleet(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    let oc = cfg.on_cluster();
    let storage = cfg.storage("origin_fleet");
    let col = |name: &str| column_definition(http_requests_column(name));
    let mut defs: Vec<String> = ["conn_id", "ts"].iter().map(|c| col(c)).collect();
    defs.extend(ORIGIN_COLUMNS.iter().map(|c| col(c)));
    defs.push("filled_at DateTime64(6, 'UTC') DEFAULT now64(6)".into());
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {db}.{storage}{oc}\n(\n    {defs}\n)\nENGINE = {engine}\n\
         PARTITION BY toDate(ts)\nORDER BY (conn_id, ts)\nTTL toDateTime(ts) + {ttl}",
        defs = defs.join(",\n    "),
        engine = cfg.sharded_engine("ReplacingMergeTree", "origin_fleet"),
        ttl = cfg.retention.to_sql_interval(),
    )];
    out.extend(cfg.distributed("origin_fleet", "cityHash64(conn_id, ts)"));
    let replaced: Vec<String> = ORIGIN_COLUMNS
        .iter()
        .map(|c| format!("if(f.conn_id = 0, r.{c}, f.{c}) AS {c}"))
        .collect();
    out.push(format!(
        "CREATE VIEW IF NOT EXISTS {db}.http_requests_origin{oc} AS\n\
         SELECT r.* REPLACE ({replaced})\nFROM {db}.http_requests AS r\n\
         LEFT ANY JOIN (SELECT * FROM {db}.origin_fleet FINAL) AS f ON f.conn_id = r.conn_id AND f.ts = r.ts",
        replaced = replaced.join(", "),
    ));
    out
}

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

fn rollup(cfg: &SchemaConfig, r: &Rollup, bucket_expr: &str, ttl: Retention) -> Vec<String> {
    let (table, bucket) = (r.table, r.bucket);
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
        &ROLLUP_1M,
        "toStartOfMinute(toDateTime(ts, 'UTC'))",
        cfg.rollup_1m_retention,
    );
    out.extend(rollup(
        cfg,
        &ROLLUP_1H,
        "toStartOfHour(toDateTime(ts, 'UTC'))",
        cfg.rollup_1h_retention,
    ));
    out
}

/// Every statement of the full schema (bootstrap, then each migration up to `target`), for `schema print`.
pub fn all_statements(cfg: &SchemaConfig, target: u32) -> Vec<String> {
    let mut out = bootstrap_statements(cfg);
    for m in MIGRATIONS.iter().filter(|m| m.version <= target) {
        out.extend(m.statements(cfg));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ml_feature_doc_lists_every_column_with_its_meaning() {
        let doc = include_str!("../../../../docs/ml-features.md");
        let rows: Vec<String> = ML_FEATURE_COLUMNS
            .iter()
            .map(|(name, meaning)| format!("| `{name}` | {meaning} |"))
            .collect();
        let listed: Vec<&str> = doc.lines().filter(|l| l.starts_with("| `")).collect();
        assert_eq!(
            listed, rows,
            "docs/ml-features.md and ML_FEATURE_COLUMNS disagree"
        );
        let sql = v9_ml_features(
            &SchemaConfig::new("observer", None, Retention::days(30)).expect("config"),
        )
        .join("\n");
        for (name, _) in ML_FEATURE_COLUMNS {
            assert!(sql.contains(name), "{name} is not in the view");
        }
    }

    use super::*;

    fn single() -> SchemaConfig {
        SchemaConfig::new("observer", None, Retention::days(30)).expect("valid config")
    }

    fn clustered() -> SchemaConfig {
        SchemaConfig::new("obs", Some("prod"), "7d".parse().expect("7d parses"))
            .expect("valid config")
    }

    #[test]
    fn request_id_keeps_its_codec_and_gets_a_ttl() {
        let v14 = &MIGRATIONS[13];
        assert_eq!(v14.version, 14);
        assert_eq!(
            v14.statements(&single()),
            vec![
                "ALTER TABLE observer.http_requests MODIFY COLUMN request_id String CODEC(ZSTD(3)) \
                 TTL toDateTime(ts) + INTERVAL 7 DAY"
                    .to_string()
            ]
        );
        let cfg = clustered().with_request_id_retention("36h".parse().expect("36h parses"));
        assert_eq!(
            v14.statements(&cfg),
            vec![
                "ALTER TABLE obs.http_requests_local ON CLUSTER prod MODIFY COLUMN request_id String \
                 CODEC(ZSTD(3)) TTL toDateTime(ts) + INTERVAL 36 HOUR"
                    .to_string()
            ],
            "the storage table, not the Distributed one"
        );
    }

    #[test]
    fn request_hash_keeps_its_type_and_existing_rows_keep_32_bits() {
        let v15 = &MIGRATIONS[14];
        assert_eq!(v15.version, 15);
        assert_eq!(
            v15.statements(&clustered()),
            vec![
                "ALTER TABLE obs.http_requests_local ON CLUSTER prod MODIFY COLUMN request_hash UInt64 \
                 CODEC(T64, ZSTD(1))"
                    .to_string(),
                "ALTER TABLE obs.http_requests_local ON CLUSTER prod UPDATE request_hash = \
                 greatest(bitAnd(request_hash, 4294967295), 1) WHERE request_hash > 4294967295"
                    .to_string()
            ]
        );
    }

    #[test]
    fn codecs_of_17_reach_both_tables_holding_the_columns() {
        let v17 = &MIGRATIONS[16];
        assert_eq!(v17.version, 17);
        let s = v17.statements(&clustered());
        assert_eq!(s.len(), V17_CODEC_COLUMNS.len() + 2, "{s:#?}");
        for (needle, table) in [
            (
                "ts DateTime64(6, 'UTC') CODEC(Delta(8), T64, ZSTD(1))",
                "http_requests_local",
            ),
            ("src_port UInt16 CODEC(ZSTD(3))", "http_requests_local"),
            ("conn_id UInt64 CODEC(ZSTD(3))", "http_requests_local"),
            ("incomplete Bool CODEC(T64, ZSTD(1))", "http_requests_local"),
            (
                "request_id_hash UInt64 CODEC(T64, ZSTD(1))",
                "http_requests_local",
            ),
            ("conn_id UInt64 CODEC(ZSTD(3))", "origin_fleet_local"),
            (
                "ts DateTime64(6, 'UTC') CODEC(Delta(8), T64, ZSTD(1))",
                "origin_fleet_local",
            ),
        ] {
            let want = format!("ALTER TABLE obs.{table} ON CLUSTER prod MODIFY COLUMN {needle}");
            assert!(s.contains(&want), "missing {want:?} in {s:#?}");
        }
        assert!(
            s.iter().all(|s| !s.contains(" TTL ")),
            "no column of 17 has a TTL to keep: {s:#?}"
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
                // MODIFY sets a column or setting to a stated definition, and an UPDATE's WHERE excludes the rows
                // it has already set: running either again changes nothing.
                assert!(
                    head.contains("IF NOT EXISTS")
                        || head.contains(" MODIFY COLUMN ")
                        || head.contains(" MODIFY SETTING ")
                        || (head.contains(" UPDATE ") && head.contains(" WHERE ")),
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
            "ts DateTime64(6, 'UTC') CODEC(Delta(8), T64, ZSTD(1))",
            "conn_id UInt64 CODEC(ZSTD(3))",
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
    fn rollup_view_reads_whole_hours_from_the_hour_rollup() {
        let v16 = &MIGRATIONS[15];
        assert_eq!(v16.version, 16);
        let hour = "{step_s:UInt32} % 3600 = 0 AND hour >= {from:DateTime} AND hour <= {to:DateTime} - 3540";
        assert_eq!(
            v16.statements(&single()),
            vec![format!(
                "CREATE VIEW IF NOT EXISTS observer.http_requests_rollup AS\n\
                 SELECT minute AS bucket, * EXCEPT (minute)\nFROM observer.http_requests_1m\n\
                 WHERE minute >= {{from:DateTime}} AND minute <= {{to:DateTime}}\n  \
                 AND NOT ({})\n\
                 UNION ALL\n\
                 SELECT hour AS bucket, * EXCEPT (hour)\nFROM observer.http_requests_1h\n\
                 WHERE {hour}",
                hour.replace("hour >=", "toStartOfHour(minute) >=")
                    .replace("hour <=", "toStartOfHour(minute) <=")
            )]
        );
        let c = v16.statements(&clustered()).join("\n");
        for needle in [
            "CREATE VIEW IF NOT EXISTS obs.http_requests_rollup ON CLUSTER prod AS\n",
            "FROM obs.http_requests_1m\n",
            "FROM obs.http_requests_1h\n",
        ] {
            assert!(c.contains(needle), "missing {needle:?} in:\n{c}");
        }
    }

    #[test]
    fn key_use_rollup_reads_keyed_events() {
        let ddl = v8_key_use(&single()).join(";\n");
        for needle in [
            "CREATE TABLE IF NOT EXISTS observer.key_use_1d\n",
            "last_call SimpleAggregateFunction(max, DateTime64(6, 'UTC'))",
            "ORDER BY (key_fingerprint, api_id, day)",
            "TTL day + INTERVAL 400 DAY",
            "CREATE MATERIALIZED VIEW IF NOT EXISTS observer.key_use_1d_mv TO observer.key_use_1d",
            "WHERE key_fingerprint != ''",
        ] {
            assert!(ddl.contains(needle), "missing {needle:?} in:\n{ddl}");
        }
        let c = v8_key_use(&clustered()).join(";\n");
        assert!(c.contains("FROM obs.http_requests_local\n"), "{c}");
        assert!(c.contains("Distributed(prod, obs, key_use_1d_local"), "{c}");
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
