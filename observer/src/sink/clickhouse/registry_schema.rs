//! The registry's tables in ClickHouse (teams, APIs, applications, keys, grants, routes): their columns, the
//! `*_latest` views and dictionaries over them, and the grant-in-force dictionary for audits. Migrations 3 and 5 of
//! [`super::migrations`] create them; [`super::registry_rows`] writes their rows.
use super::schema::SchemaConfig;

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

pub(super) fn v3_registry(cfg: &SchemaConfig) -> Vec<String> {
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

/// The grant entry in force at a call's time, for audit views: `key_grants_in_force` gives every entry of
/// `key_grants_latest` the time it takes effect (`valid_from`, or the epoch when unset), and `key_grants_at_dict`
/// answers `dictGet('observer.key_grants_at_dict', 'granted_by', tuple(key_fingerprint, api_id), ts)` with the
/// entry that had most recently taken effect at `ts` (a later re-grant does not rewrite an earlier call's grantor).
pub(super) fn v5_grants_in_force(cfg: &SchemaConfig) -> Vec<String> {
    let db = &cfg.database;
    let oc = cfg.on_cluster();
    let grants = REGISTRY_TABLES
        .iter()
        .find(|t| t.name == "key_grants")
        .expect("key_grants is a registry table");
    let cols: Vec<&str> = grants.columns.iter().map(|(c, _)| *c).collect();
    let dict_cols: Vec<String> = grants
        .columns
        .iter()
        .filter(|(c, _)| !grants.dict_key.contains(c))
        .map(|(c, ty)| {
            let default = match *ty {
                "String" => " DEFAULT ''",
                "UInt32" => " DEFAULT 0",
                _ => " DEFAULT NULL",
            };
            format!("    {c} {ty}{default}")
        })
        .collect();
    let keys: Vec<String> = grants
        .dict_key
        .iter()
        .map(|c| format!("    {c} String"))
        .collect();
    vec![
        format!(
            "CREATE VIEW IF NOT EXISTS {db}.key_grants_in_force{oc} AS
SELECT {cols}, \
             ifNull(valid_from, toDateTime64(0, 6, 'UTC')) AS in_force_from, \
             toDateTime64('2299-12-31 00:00:00', 6, 'UTC') AS in_force_until\nFROM {db}.key_grants_latest",
            cols = cols.join(", "),
        ),
        format!(
            "CREATE DICTIONARY IF NOT EXISTS {db}.key_grants_at_dict{oc}\n(\n{keys},\n\
             \x20   in_force_from DateTime64(6, 'UTC'),\n    in_force_until DateTime64(6, 'UTC'),\n{dict_cols}\n)\n\
             PRIMARY KEY {dkey}\nSOURCE(CLICKHOUSE(DB '{db}' TABLE 'key_grants_in_force'))\n\
             LIFETIME(MIN 30 MAX 120)\nLAYOUT(COMPLEX_KEY_RANGE_HASHED(range_lookup_strategy 'max'))\n\
             RANGE(MIN in_force_from MAX in_force_until)",
            keys = keys.join(",\n"),
            dict_cols = dict_cols.join(",\n"),
            dkey = grants.dict_key.join(", "),
        ),
    ]
}

/// `argMax(tuple(c), by).1 AS c` for each column: its value in the row with the greatest `by`. Through a tuple
/// because argMax skips NULL values, and a cleared date (a grant revoked, then granted again) must win.
fn newest<'a>(columns: impl Iterator<Item = &'a str>, by: &str) -> String {
    columns
        .map(|c| format!("argMax(tuple({c}), {by}).1 AS {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}
