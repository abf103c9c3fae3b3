//! The Grafana dashboards in `dashboards/` (for the ClickHouse data source plugin, `grafana-clickhouse-datasource`).
//!
//! `dashboards_are_well_formed` checks every dashboard file's structure without a server. `every_panel_query_runs`
//! inserts fixture traffic through the real sink and registry rows through `write_registry` into the ClickHouse dev
//! server (see `common/mod.rs`), expands each panel's SQL the way Grafana and the plugin do (template variables, then
//! the plugin's macros), runs it and checks that it returns rows, and for some panels the values the fixtures imply.
//!
// Tests hold a process-wide lock across awaits on purpose: one dev server at a time.
#![allow(clippy::await_holding_lock)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use common::{apply, client, devserver_paths, insert_events, serial, DevServer};
use observer::event::{AttributedBy, Event, KeyState, Side, Timestamp};
use observer::sink::clickhouse::migrations::ROLLUP_QUANTILES;
use observer::sink::clickhouse::registry_rows::{
    ApiRow, ApplicationRow, KeyGrantRow, RegistryRows, TeamRow,
};
use observer::sink::clickhouse::write_registry;
use serde_json::{Map, Value};

const PLUGIN: &str = "grafana-clickhouse-datasource";
/// The plugin's `format` values: time series, table, logs.
const FORMATS: &[u64] = &[0, 1, 2];
/// Macros of the plugin that [`expand_macros`] knows.
const MACROS: &[&str] = &[
    "timeFilter",
    "timeFilter_ms",
    "fromTime",
    "toTime",
    "fromTime_ms",
    "toTime_ms",
    "timeInterval",
    "timeInterval_ms",
    "interval_s",
];

type Row = Map<String, Value>;

// ------------------------------------------------------------------------------------------------------------------
// Dashboard files

struct Dashboard {
    file: String,
    json: Value,
}

impl Dashboard {
    fn variables(&self) -> &[Value] {
        self.json["templating"]["list"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Every panel, including those nested in collapsed rows.
    fn panels(&self) -> Vec<&Value> {
        fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
            for p in panels.as_array().map(Vec::as_slice).unwrap_or_default() {
                out.push(p);
                walk(&p["panels"], out);
            }
        }
        let mut out = Vec::new();
        walk(&self.json["panels"], &mut out);
        out
    }

    /// Panels that query (everything but rows).
    fn query_panels(&self) -> Vec<&Value> {
        self.panels()
            .into_iter()
            .filter(|p| p["type"] != "row")
            .collect()
    }
}

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn load_dashboards() -> Vec<Dashboard> {
    let dir = dashboards_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{file} is not valid JSON: {e}"));
            Dashboard { file, json }
        })
        .collect()
}

fn nonempty_str<'a>(v: &'a Value, what: &str) -> &'a str {
    match v.as_str() {
        Some(s) if !s.trim().is_empty() => s,
        _ => panic!("{what} must be a non-empty string, found {v}"),
    }
}

fn is_plugin_datasource(ds: &Value) -> bool {
    ds["type"] == PLUGIN && ds["uid"] == "${datasource}"
}

// ------------------------------------------------------------------------------------------------------------------
// Template variables, expanded as Grafana's template service does before the plugin sees the query

/// One use of a template variable in SQL: `$name`, `${name}`, `${name:format}` or `[[name]]`, `[[name:format]]`.
struct VarRef {
    start: usize,
    end: usize,
    name: String,
    format: Option<String>,
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn var_refs(sql: &str) -> Vec<VarRef> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < sql.len() {
        let rest = &sql[i..];
        let found = if let Some(body) = rest.strip_prefix("${") {
            body.find('}').map(|close| (&body[..close], 2 + close + 1))
        } else if let Some(body) = rest.strip_prefix("[[") {
            body.find("]]").map(|close| (&body[..close], 2 + close + 2))
        } else if let Some(body) = rest.strip_prefix('$') {
            let n = body.find(|c: char| !is_word(c)).unwrap_or(body.len());
            (n > 0).then(|| (&body[..n], 1 + n))
        } else {
            None
        };
        match found {
            Some((inner, len)) => {
                let (name, format) = match inner.split_once(':') {
                    Some((n, f)) => (n, Some(f.to_string())),
                    None => (inner, None),
                };
                // `${name.field}` picks a field of an object value; none of ours are objects.
                let name = name.split('.').next().unwrap_or_default().to_string();
                out.push(VarRef {
                    start: i,
                    end: i + len,
                    name,
                    format,
                });
                i += len;
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    out
}

/// Names of the template variables used (not the `$__` macros).
fn used_variables(sql: &str) -> BTreeSet<String> {
    var_refs(sql)
        .into_iter()
        .filter(|r| !r.name.starts_with("__"))
        .map(|r| r.name)
        .collect()
}

/// Formats a variable's selected values as Grafana does for `${name:format}`; `None` is the plugin's own format
/// (several values quoted and comma-separated, one value as it is).
fn format_values(name: &str, values: &[String], format: Option<&str>) -> String {
    let quoted = |q: &str, esc: &dyn Fn(&str) -> String| {
        values
            .iter()
            .map(|v| format!("{q}{}{q}", esc(v)))
            .collect::<Vec<_>>()
            .join(",")
    };
    match format {
        None if values.len() == 1 => values[0].clone(),
        None => quoted("'", &|v| v.to_string()),
        Some("singlequote") => quoted("'", &|v| v.replace('\'', "\\'")),
        Some("sqlstring") => quoted("'", &|v| v.replace('\'', "''")),
        Some("doublequote") => quoted("\"", &|v| v.replace('"', "\\\"")),
        Some("csv") | Some("raw") => values.join(","),
        Some(other) => panic!("${{{name}:{other}}}: format not supported by this test"),
    }
}

fn expand_variables(sql: &str, values: &BTreeMap<String, Vec<String>>) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for r in var_refs(sql) {
        if r.name.starts_with("__") {
            continue; // a macro: the plugin's backend expands it afterwards
        }
        let vals = values
            .get(&r.name)
            .unwrap_or_else(|| panic!("variable ${} has no value (undefined?)", r.name));
        assert!(
            !vals.is_empty(),
            "variable ${} has no value: its query returned no options",
            r.name
        );
        out.push_str(&sql[last..r.start]);
        out.push_str(&format_values(&r.name, vals, r.format.as_deref()));
        last = r.end;
    }
    out.push_str(&sql[last..]);
    out
}

// ------------------------------------------------------------------------------------------------------------------
// The plugin's macros, as its backend (pkg/macros) expands them

/// The dashboard time range and interval of one query.
#[derive(Clone, Copy)]
struct TimeRange {
    from_ms: i64,
    to_ms: i64,
    interval_ms: i64,
}

/// Splits a macro's argument list at top-level commas.
fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut cur) = (0i32, String::new());
    for c in args.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn expand_macros(sql: &str, t: TimeRange) -> String {
    let (from_s, to_s) = (t.from_ms.div_euclid(1000), t.to_ms.div_euclid(1000));
    let interval_s = (t.interval_ms / 1000).max(1);
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(pos) = rest.find("$__") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 3..];
        let n = after.find(|c: char| !is_word(c)).unwrap_or(after.len());
        let name = &after[..n];
        let mut tail = &after[n..];
        let mut args = Vec::new();
        if let Some(inner) = tail.strip_prefix('(') {
            let mut depth = 1;
            let close = inner
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap_or_else(|| panic!("$__{name}: unbalanced parentheses in {sql}"));
            args = split_args(&inner[..close]);
            tail = &inner[close + 1..];
        }
        let one_arg = || {
            assert_eq!(args.len(), 1, "$__{name} takes one argument: {args:?}");
            args[0].clone()
        };
        let expanded = match name {
            "timeFilter" => {
                let c = one_arg();
                format!("{c} >= toDateTime({from_s}) AND {c} <= toDateTime({to_s})")
            }
            "timeFilter_ms" => {
                let c = one_arg();
                format!(
                    "{c} >= fromUnixTimestamp64Milli({}) AND {c} <= fromUnixTimestamp64Milli({})",
                    t.from_ms, t.to_ms
                )
            }
            "fromTime" => format!("toDateTime({from_s})"),
            "toTime" => format!("toDateTime({to_s})"),
            "fromTime_ms" => format!("fromUnixTimestamp64Milli({})", t.from_ms),
            "toTime_ms" => format!("fromUnixTimestamp64Milli({})", t.to_ms),
            "timeInterval" => format!(
                "toStartOfInterval(toDateTime({}), INTERVAL {interval_s} second)",
                one_arg()
            ),
            "timeInterval_ms" => format!(
                "toStartOfInterval(toDateTime64({}, 3), INTERVAL {} millisecond)",
                one_arg(),
                t.interval_ms.max(1)
            ),
            "interval_s" => interval_s.to_string(),
            other => panic!("unknown or unsupported macro $__{other} in {sql}"),
        };
        debug_assert!(MACROS.contains(&name));
        out.push_str(&expanded);
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Variables, then macros, as a query travels from the dashboard to ClickHouse.
fn expand(sql: &str, values: &BTreeMap<String, Vec<String>>, t: TimeRange) -> String {
    let sql = expand_macros(&expand_variables(sql, values), t);
    assert!(
        !sql.contains('$') && !sql.contains("[["),
        "unexpanded template syntax left in:\n{sql}"
    );
    sql
}

// ------------------------------------------------------------------------------------------------------------------
// Structure

#[test]
fn dashboards_are_well_formed() {
    let dashboards = load_dashboards();
    let mut uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let rollup_merge = format!("quantilesTDigestMerge({ROLLUP_QUANTILES})");
    for d in &dashboards {
        let f = &d.file;
        let uid = nonempty_str(&d.json["uid"], &format!("{f}: uid"));
        let title = nonempty_str(&d.json["title"], &format!("{f}: title"));
        assert!(uids.insert(uid.to_string()), "{f}: uid {uid:?} used twice");
        assert!(
            titles.insert(title.to_string()),
            "{f}: title {title:?} used twice"
        );
        let schema = d.json["schemaVersion"].as_u64().unwrap_or(0);
        assert!(
            schema >= 39,
            "{f}: schemaVersion {schema}, want 39 or newer"
        );
        assert!(
            d.json["tags"].as_array().is_some_and(|t| !t.is_empty()),
            "{f}: tags missing"
        );
        assert_eq!(
            d.json["time"]["from"], "now-6h",
            "{f}: default time range is the last 6 hours"
        );

        // Variables: a data source variable for the plugin, query variables on it.
        let mut defined = BTreeSet::new();
        for v in d.variables() {
            let name = nonempty_str(&v["name"], &format!("{f}: variable name"));
            assert!(defined.insert(name), "{f}: variable {name} defined twice");
            match v["type"].as_str() {
                Some("datasource") => {
                    assert_eq!(
                        v["query"], PLUGIN,
                        "{f}: ${name} must list {PLUGIN} data sources"
                    );
                }
                Some("query") => {
                    assert!(
                        is_plugin_datasource(&v["datasource"]),
                        "{f}: variable {name} must query ${{datasource}} of type {PLUGIN}: {}",
                        v["datasource"]
                    );
                    nonempty_str(&v["query"], &format!("{f}: query of variable {name}"));
                }
                Some("custom" | "constant" | "textbox" | "interval") => {}
                other => panic!("{f}: variable {name} has unexpected type {other:?}"),
            }
        }
        assert!(
            d.variables()
                .iter()
                .any(|v| v["name"] == "datasource" && v["type"] == "datasource"),
            "{f}: no data source variable named datasource"
        );
        for v in d.variables().iter().filter(|v| v["type"] == "query") {
            let q = v["query"].as_str().unwrap_or_default();
            for used in used_variables(q) {
                assert!(
                    defined.contains(used.as_str()),
                    "{f}: variable {} uses undefined ${used}",
                    v["name"]
                );
            }
        }

        // Panels.
        let mut ids = BTreeSet::new();
        let mut panel_titles = BTreeSet::new();
        for p in d.panels() {
            let ptitle = p["title"].as_str().unwrap_or("<untitled>");
            let what = format!("{f}: panel {ptitle:?}");
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{what}: id missing"));
            assert!(ids.insert(id), "{what}: panel id {id} used twice");
            let g = &p["gridPos"];
            for k in ["x", "y", "w", "h"] {
                assert!(g[k].is_u64(), "{what}: gridPos.{k} missing: {g}");
            }
            assert!(
                g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
                "{what}: wider than the 24-column grid: {g}"
            );
            if p["type"] == "row" {
                continue;
            }
            nonempty_str(&p["title"], &format!("{what}: title"));
            assert!(panel_titles.insert(ptitle), "{what}: title used twice");
            nonempty_str(&p["type"], &format!("{what}: type"));
            assert!(
                is_plugin_datasource(&p["datasource"]),
                "{what}: datasource must be {{type: {PLUGIN}, uid: ${{datasource}}}}, found {}",
                p["datasource"]
            );
            let targets = p["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(!targets.is_empty(), "{what}: no targets");
            for t in targets {
                let sql = nonempty_str(&t["rawSql"], &format!("{what}: rawSql"));
                if !t["datasource"].is_null() {
                    assert!(
                        is_plugin_datasource(&t["datasource"]),
                        "{what}: target datasource {}",
                        t["datasource"]
                    );
                }
                assert_eq!(t["queryType"], "sql", "{what}: queryType");
                let format = t["format"].as_u64();
                assert!(
                    format.is_some_and(|x| FORMATS.contains(&x)),
                    "{what}: format must be one of {FORMATS:?} (time series, table, logs), found {}",
                    t["format"]
                );
                nonempty_str(&t["refId"], &format!("{what}: refId"));
                for used in used_variables(sql) {
                    assert!(
                        defined.contains(used.as_str()),
                        "{what}: SQL uses ${used}, which templating does not define"
                    );
                }
                for r in var_refs(sql).iter().filter(|r| r.name.starts_with("__")) {
                    let m = &r.name[2..];
                    assert!(MACROS.contains(&m), "{what}: unknown macro $__{m}");
                }
                // The rollups keep t-digest states for ROLLUP_QUANTILES; merge them with the same levels.
                for (i, _) in sql.match_indices("quantilesTDigestMerge(") {
                    assert!(
                        sql[i..].starts_with(&rollup_merge),
                        "{what}: merge the rollup's quantile states as {rollup_merge}"
                    );
                }
                if format == Some(0) {
                    assert!(
                        sql.contains("$__timeInterval") || sql.contains("$__timeFilter"),
                        "{what}: a time series should bucket and filter by the dashboard time"
                    );
                }
            }
        }
        assert!(!ids.is_empty(), "{f}: no panels");
    }
    // The main dashboard offers every key state in its key_state variable.
    let main = dashboards
        .iter()
        .find(|d| d.file == "api-consumption.json")
        .expect("dashboards/api-consumption.json exists");
    let key_state = main
        .variables()
        .iter()
        .find(|v| v["name"] == "key_state")
        .expect("api-consumption.json: key_state variable");
    let q = key_state["query"].as_str().unwrap_or_default();
    for state in KeyState::NAMES {
        assert!(
            q.contains(&format!("'{state}'")),
            "api-consumption.json: key_state variable misses {state:?}: {q}"
        );
    }
    for name in ["api", "app", "key_state"] {
        let v = main
            .variables()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("api-consumption.json: variable {name} missing"));
        assert!(
            v["multi"] == true && v["includeAll"] == true,
            "api-consumption.json: {name} must be multi-select with All"
        );
    }
}

#[test]
fn template_expansion_matches_grafana() {
    let values: BTreeMap<String, Vec<String>> = [
        (
            "api".to_string(),
            vec!["pay".to_string(), "o'k".to_string()],
        ),
        ("one".to_string(), vec!["x".to_string()]),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        expand_variables(
            "a IN (${api:singlequote}) AND b = ${one:sqlstring}",
            &values
        ),
        "a IN ('pay','o\\'k') AND b = 'x'"
    );
    assert_eq!(
        expand_variables("${api:sqlstring} [[one]] $one ${api}", &values),
        "'pay','o''k' x x 'pay','o'k'"
    );
    let t = TimeRange {
        from_ms: 1_000_500,
        to_ms: 2_000_000,
        interval_ms: 30_000,
    };
    assert_eq!(
        expand_macros("WHERE $__timeFilter(ts) AND x", t),
        "WHERE ts >= toDateTime(1000) AND ts <= toDateTime(2000) AND x"
    );
    assert_eq!(
        expand_macros("$__timeFilter_ms(ts)", t),
        "ts >= fromUnixTimestamp64Milli(1000500) AND ts <= fromUnixTimestamp64Milli(2000000)"
    );
    assert_eq!(
        expand_macros("$__timeInterval(minute) / $__interval_s, $__fromTime..$__toTime", t),
        "toStartOfInterval(toDateTime(minute), INTERVAL 30 second) / 30, toDateTime(1000)..toDateTime(2000)"
    );
    assert_eq!(
        expand_macros("$__timeInterval(toDateTime(ts, 'UTC'))", t),
        "toStartOfInterval(toDateTime(toDateTime(ts, 'UTC')), INTERVAL 30 second)"
    );
}

// ------------------------------------------------------------------------------------------------------------------
// Fixtures

/// Start of the fixture traffic (2025-10-09T08:53:20Z); events spread over the two hours after it.
const T0_S: i64 = 1_760_000_000;
const SPAN_S: i64 = 2 * 3600;

fn us(s: i64) -> Timestamp {
    Timestamp(s * 1_000_000)
}

/// One kind of traffic: `n` exchanges of one client to one API route, spread over the fixture span.
struct Flow {
    n: u64,
    api: (&'static str, &'static str),
    host: &'static str,
    method: &'static str,
    route: &'static str,
    app: Option<(&'static str, &'static str, &'static str, &'static str)>,
    key: Option<(&'static str, &'static str)>,
    key_state: KeyState,
    attributed_by: AttributedBy,
    comm: &'static str,
    cgroup: &'static str,
    src_ip: [u8; 4],
}

const SHOP: Option<(&str, &str, &str, &str)> = Some(("shop", "Shop", "web", "retail"));
const BILLING: Option<(&str, &str, &str, &str)> =
    Some(("billing", "Billing", "finance", "corporate"));
const BATCH: Option<(&str, &str, &str, &str)> =
    Some(("batch", "Nightly batch", "data", "wholesale"));
const PAY: (&str, &str) = ("pay", "Payments");
const ORDERS: (&str, &str) = ("orders", "Orders");
const CATALOG: (&str, &str) = ("catalog", "Catalog");

fn flows() -> Vec<Flow> {
    let base = Flow {
        n: 0,
        api: PAY,
        host: "pay.internal",
        method: "GET",
        route: "/v1/payments/{id}",
        app: SHOP,
        key: Some(("fp-shop", "sh01")),
        key_state: KeyState::Valid,
        attributed_by: AttributedBy::Key,
        comm: "shop",
        cgroup: "/kubepods/burstable/pod-shop/app",
        src_ip: [10, 0, 0, 10],
    };
    vec![
        Flow { n: 120, ..base },
        Flow {
            n: 40,
            method: "POST",
            route: "/v1/payments",
            ..base
        },
        Flow {
            n: 80,
            api: ORDERS,
            host: "orders.internal",
            route: "/v1/orders/{id}",
            ..base
        },
        // The shop's old key, expired for the catalog.
        Flow {
            n: 15,
            api: CATALOG,
            host: "catalog.internal",
            route: "/v1/catalog/items",
            key: Some(("fp-old", "0ld1")),
            key_state: KeyState::Expired,
            ..base
        },
        // Billing: valid calls, then calls with the revoked key.
        Flow {
            n: 30,
            app: BILLING,
            key: Some(("fp-billing", "b1ll")),
            comm: "billing",
            cgroup: "/kubepods/pod-billing/app",
            src_ip: [10, 0, 1, 20],
            ..base
        },
        Flow {
            n: 25,
            app: BILLING,
            key: Some(("fp-billing", "b1ll")),
            key_state: KeyState::Revoked,
            comm: "billing",
            cgroup: "/kubepods/pod-billing/app",
            src_ip: [10, 0, 1, 20],
            ..base
        },
        // The batch job: by workload (no key) on the catalog, and with its catalog key on payments.
        Flow {
            n: 50,
            api: CATALOG,
            host: "catalog.internal",
            route: "/v1/catalog/items",
            app: BATCH,
            key: None,
            key_state: KeyState::None,
            attributed_by: AttributedBy::Workload,
            comm: "java",
            cgroup: "/kubepods/pod-batch/job",
            src_ip: [10, 0, 2, 30],
            ..base
        },
        Flow {
            n: 12,
            app: BATCH,
            key: Some(("fp-batch", "b4tc")),
            key_state: KeyState::NotGrantedForApi,
            comm: "java",
            cgroup: "/kubepods/pod-batch/job",
            src_ip: [10, 0, 2, 30],
            ..base
        },
        // Shadow consumers: no key, an unknown key, an API that is not in the registry.
        Flow {
            n: 20,
            api: ORDERS,
            host: "orders.internal",
            route: "/v1/orders/{id}",
            app: None,
            key: None,
            key_state: KeyState::None,
            attributed_by: AttributedBy::None,
            comm: "python3",
            cgroup: "/user.slice/user-1000.slice/session-3.scope",
            src_ip: [192, 168, 1, 77],
            ..base
        },
        Flow {
            n: 8,
            app: None,
            key: Some(("fp-unknown", "zz99")),
            key_state: KeyState::Unknown,
            attributed_by: AttributedBy::None,
            comm: "curl",
            cgroup: "/user.slice/user-1001.slice/session-9.scope",
            src_ip: [192, 168, 1, 78],
            ..base
        },
        Flow {
            n: 10,
            api: ("", ""),
            host: "legacy.internal",
            route: "/report/{id}",
            app: None,
            key: None,
            key_state: KeyState::None,
            attributed_by: AttributedBy::None,
            comm: "cron-report",
            cgroup: "/system.slice/cron.service",
            src_ip: [10, 0, 3, 40],
            ..base
        },
    ]
}

/// Mostly 2xx, some 4xx, 5xx and unanswered (status 0), deterministic in `i`.
fn status(i: u64) -> u16 {
    match i % 20 {
        3 => 404,
        7 => 503,
        11 if i % 40 == 11 => 0,
        13 => 201,
        _ => 200,
    }
}

fn fixture_events() -> Vec<Event> {
    let mut out = Vec::new();
    for (f_idx, f) in flows().iter().enumerate() {
        for i in 0..f.n {
            let ts_us = (T0_S * 1_000_000) + (i as i64 * SPAN_S * 1_000_000) / f.n as i64;
            let (app_id, app_name, team, lob) = f.app.unwrap_or_default();
            let (fp, suffix) = f.key.unwrap_or_default();
            out.push(Event {
                ts: Timestamp(ts_us + f_idx as i64 * 1_000),
                // 1 ms .. 100 ms
                duration_us: 1_000 + (i * 7_919 % 100) * 1_000,
                side: Side::Client,
                method: f.method.into(),
                host: f.host.into(),
                path: f.route.replace("{id}", &(1_000 + i).to_string()),
                query_keys: vec![],
                status: status(i),
                req_bytes: 200 + i % 50,
                resp_bytes: 1_000 + (i % 7) * 100,
                src_ip: IpAddr::from(f.src_ip),
                src_port: 40_000 + i as u16,
                dst_ip: IpAddr::from([10, 1, 0, 1]),
                dst_port: 8080,
                client_pid: 100 + f_idx as u32,
                client_comm: f.comm.into(),
                client_cgroup: f.cgroup.into(),
                server_pid: 9,
                server_comm: "envoy".into(),
                server_cgroup: "/kubepods/pod-gateway/envoy".into(),
                user_agent: "fixture/1.0".into(),
                request_id: format!("req-{f_idx}-{i}"),
                truncated: false,
                conn_id: ((f_idx as u64) << 32) | i,
                incomplete: false,
                framing_anomaly: Vec::new(),
                api_id: f.api.0.into(),
                api_name: f.api.1.into(),
                api_owner: if f.api.0.is_empty() { "" } else { "platform" }.into(),
                route: f.route.into(),
                app_id: app_id.into(),
                app_name: app_name.into(),
                app_team: team.into(),
                line_of_business: lob.into(),
                key_fingerprint: fp.into(),
                key_suffix: suffix.into(),
                key_state: f.key_state,
                attributed_by: f.attributed_by,
            });
        }
    }
    out
}

/// Registry version 1 (before the traffic) and version 2 (billing's key revoked by bob half an hour in).
fn fixture_registry() -> (RegistryRows, RegistryRows) {
    let v1_at = us(T0_S - 300);
    let api = |id: &str, name: &str, host: &str| ApiRow {
        api_id: id.into(),
        name: name.into(),
        owner: "platform".into(),
        line_of_business: "retail".into(),
        auth: "api_key".into(),
        hosts: vec![host.into()],
        base_path: "/v1".into(),
        version: 1,
        loaded_at: v1_at,
        deleted: false,
    };
    let app = |a: Option<(&str, &str, &str, &str)>, workloads: &[&str]| {
        let (id, name, team, lob) = a.expect("an application");
        ApplicationRow {
            app_id: id.into(),
            name: name.into(),
            team: team.into(),
            line_of_business: lob.into(),
            created_by: "registry-admin".into(),
            created_at: Some(us(T0_S - 86_400 * 100)),
            predecessor: String::new(),
            workloads: workloads.iter().map(|w| w.to_string()).collect(),
            version: 1,
            loaded_at: v1_at,
            deleted: false,
        }
    };
    let grant = |fp: &str, suffix: &str, api: &str, app: &str, by: &str| KeyGrantRow {
        key_fingerprint: fp.into(),
        api_id: api.into(),
        grant_seq: 0,
        key_id: format!("{app}-key-{suffix}"),
        key_suffix: suffix.into(),
        app_id: app.into(),
        granted_by: by.into(),
        valid_from: Some(us(T0_S - 86_400 * 30)),
        valid_until: None,
        revoked_at: None,
        revoked_by: String::new(),
        note: String::new(),
        version: 1,
        loaded_at: v1_at,
        deleted: false,
    };
    let team = |team: &str, name: &str, lob: &str| TeamRow {
        team: team.into(),
        name: name.into(),
        line_of_business: lob.into(),
        alert_contact: format!("{team}-oncall"),
        version: 1,
        loaded_at: v1_at,
        deleted: false,
    };
    let mut expired = grant("fp-old", "0ld1", "catalog", "shop", "dave");
    expired.valid_until = Some(us(T0_S - 86_400));
    let v1 = RegistryRows {
        apis: vec![
            api("pay", "Payments", "pay.internal"),
            api("orders", "Orders", "orders.internal"),
            api("catalog", "Catalog", "catalog.internal"),
        ],
        applications: vec![
            app(SHOP, &[]),
            app(BILLING, &[]),
            app(BATCH, &["cgroup=/kubepods/pod-batch/*"]),
        ],
        key_grants: vec![
            grant("fp-shop", "sh01", "pay", "shop", "alice"),
            grant("fp-shop", "sh01", "orders", "shop", "alice"),
            expired,
            grant("fp-billing", "b1ll", "pay", "billing", "carol"),
            grant("fp-batch", "b4tc", "catalog", "batch", "erin"),
        ],
        teams: vec![
            team("web", "Web shop", "retail"),
            team("finance", "Finance", "corporate"),
            team("data", "Data platform", "wholesale"),
        ],
    };
    let mut revoked = v1.key_grants[3].clone();
    revoked.revoked_at = Some(us(T0_S + 1800));
    revoked.revoked_by = "bob".into();
    revoked.note = "CHG-7 key leaked".into();
    revoked.version = 2;
    revoked.loaded_at = us(T0_S + 1800);
    let v2 = RegistryRows {
        key_grants: vec![revoked],
        ..RegistryRows::default()
    };
    (v1, v2)
}

// ------------------------------------------------------------------------------------------------------------------
// Running queries

/// Runs `sql` and returns its result rows in `format` (`JSONEachRow` or `JSONCompactEachRow`), one value per row.
async fn query_json(c: &clickhouse::Client, sql: &str, format: &str, what: &str) -> Vec<Value> {
    // The crate binds `?`; `??` is a literal question mark.
    let escaped = sql.replace('?', "??");
    let mut cursor = c
        .query(&escaped)
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .fetch_bytes(format)
        .unwrap_or_else(|e| panic!("{what}: cannot send query: {e}\n{sql}"));
    let bytes = cursor
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{what}: query failed: {e}\n--- SQL ---\n{sql}"));
    let text = std::str::from_utf8(&bytes).unwrap_or_else(|e| panic!("{what}: not UTF-8: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what}: bad {format} line {l:?}: {e}"))
        })
        .collect()
}

/// Result rows by column name.
async fn query_rows(c: &clickhouse::Client, sql: &str, what: &str) -> Vec<Row> {
    query_json(c, sql, "JSONEachRow", what)
        .await
        .into_iter()
        .map(|v| match v {
            Value::Object(m) => m,
            other => panic!("{what}: expected an object per row, found {other}"),
        })
        .collect()
}

/// Values of a query variable: the first column of its query (the second, if any, is the display text).
async fn variable_options(
    c: &clickhouse::Client,
    d: &Dashboard,
    v: &Value,
    values: &BTreeMap<String, Vec<String>>,
    t: TimeRange,
) -> Vec<String> {
    let what = format!("{}: variable {}", d.file, v["name"]);
    let sql = expand(v["query"].as_str().unwrap_or_default(), values, t);
    // Compact rows keep the column order: the first column is the value.
    let rows = query_json(c, &sql, "JSONCompactEachRow", &what).await;
    assert!(!rows.is_empty(), "{what}: query returned no options");
    rows.iter()
        .map(|r| match r.get(0) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => panic!("{what}: row without columns: {r}"),
        })
        .collect()
}

fn num(row: &Row, col: &str) -> f64 {
    match row.get(col) {
        Some(Value::Number(n)) => n.as_f64().expect("finite"),
        Some(Value::String(s)) => s
            .parse()
            .unwrap_or_else(|_| panic!("column {col} is not a number: {s:?} in {row:?}")),
        other => panic!("column {col}: expected a number, found {other:?} in {row:?}"),
    }
}

fn text<'a>(row: &'a Row, col: &str) -> &'a str {
    row.get(col)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("column {col}: expected a string in {row:?}"))
}

/// Runs every panel of `d` with `values`; returns the rows of each target by panel title.
async fn run_panels(
    c: &clickhouse::Client,
    d: &Dashboard,
    values: &BTreeMap<String, Vec<String>>,
    t: TimeRange,
    selection: &str,
) -> BTreeMap<String, Vec<Row>> {
    let mut out = BTreeMap::new();
    for p in d.query_panels() {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        let mut rows = Vec::new();
        for target in p["targets"].as_array().into_iter().flatten() {
            let what = format!(
                "{}: panel {title:?} target {} ({selection})",
                d.file, target["refId"]
            );
            let sql = expand(target["rawSql"].as_str().unwrap_or_default(), values, t);
            rows.extend(query_rows(c, &sql, &what).await);
        }
        out.insert(title, rows);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_runs() {
    let Some((py, script)) = devserver_paths("every_panel_query_runs") else {
        return;
    };
    let dashboards = load_dashboards();
    let _g = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = DevServer::start(&py, &script, &dir.path().join("ch"));
    let url = srv.url();
    apply(&url, None).await;

    // Fixtures: traffic through the real sink, the registry through write_registry.
    let events = fixture_events();
    insert_events(&url, &dir.path().join("spool"), &events).await;
    let c = client(&url).with_database("observer");
    let (v1, v2) = fixture_registry();
    write_registry(&c, &v1)
        .await
        .unwrap_or_else(|e| panic!("write registry v1: {e}"));
    write_registry(&c, &v2)
        .await
        .unwrap_or_else(|e| panic!("write registry v2: {e}"));
    for dict in [
        "apis_dict",
        "applications_dict",
        "key_grants_dict",
        "teams_dict",
    ] {
        c.query(&format!("SYSTEM RELOAD DICTIONARY observer.{dict}"))
            .execute()
            .await
            .unwrap_or_else(|e| panic!("reload {dict}: {e}"));
    }

    // The dashboard time range covers the fixtures with margin; one-minute interval.
    let t = TimeRange {
        from_ms: (T0_S - 600) * 1000,
        to_ms: (T0_S + SPAN_S + 3600) * 1000,
        interval_ms: 60_000,
    };
    let mut results = BTreeMap::new();
    for d in &dashboards {
        // "All" selected everywhere: each variable's options, as Grafana resolves them, in definition order.
        let mut all = BTreeMap::new();
        let mut first = BTreeMap::new();
        for v in d.variables() {
            let name = v["name"].as_str().unwrap_or_default().to_string();
            match v["type"].as_str() {
                Some("query") => {
                    let opts = variable_options(&c, d, v, &all, t).await;
                    first.insert(name.clone(), vec![opts[0].clone()]);
                    all.insert(name, opts);
                }
                Some("datasource") => {
                    all.insert(name.clone(), vec!["ClickHouse".into()]);
                    first.insert(name, vec!["ClickHouse".into()]);
                }
                other => panic!("{}: variable {name} of type {other:?}", d.file),
            }
        }
        let rows = run_panels(&c, d, &all, t, "All selected").await;
        for (title, r) in &rows {
            assert!(
                !r.is_empty(),
                "{}: panel {title:?} returned no rows on the fixture data with All selected",
                d.file
            );
        }
        // One value of each variable: the SQL must still be valid (rows may legitimately be empty).
        run_panels(&c, d, &first, t, "first option selected").await;
        // A five-minute interval buckets differently.
        let wide = TimeRange {
            interval_ms: 300_000,
            ..t
        };
        run_panels(&c, d, &all, wide, "5 min interval").await;
        results.insert(d.file.clone(), rows);
    }

    // Values the fixtures imply.
    let count = |pred: &dyn Fn(&Event) -> bool| events.iter().filter(|e| pred(e)).count() as f64;
    let panel = |file: &str, title: &str| -> &Vec<Row> {
        results
            .get(file)
            .and_then(|panels| panels.get(title))
            .unwrap_or_else(|| panic!("{file}: no panel titled {title:?}"))
    };
    let main = |title: &str| panel("api-consumption.json", title);
    assert_eq!(
        num(&main("Requests")[0], "requests"),
        events.len() as f64,
        "Requests stat"
    );

    let who = main("Who calls what");
    let shop_pay: f64 = who
        .iter()
        .filter(|r| text(r, "app_name") == "Shop" && text(r, "api_name") == "Payments")
        .map(|r| num(r, "requests"))
        .sum();
    assert_eq!(
        shop_pay,
        count(&|e| e.app_id == "shop" && e.api_id == "pay"),
        "Who calls what: Shop -> Payments requests; rows: {who:#?}"
    );
    let billing = who
        .iter()
        .find(|r| text(r, "app_name") == "Billing" && text(r, "key_state") == "revoked")
        .unwrap_or_else(|| panic!("Who calls what: no revoked row for Billing: {who:#?}"));
    assert_eq!(text(billing, "team"), "finance", "{billing:?}");
    assert_eq!(
        text(billing, "line_of_business"),
        "corporate",
        "{billing:?}"
    );
    let errors: f64 = who.iter().map(|r| num(r, "errors")).sum();
    assert_eq!(
        errors,
        count(&|e| e.status >= 500 || e.status == 0),
        "Who calls what: errors are 5xx and unanswered calls"
    );

    let bad = main("Calls with non-valid API keys");
    let revoked = bad
        .iter()
        .find(|r| text(r, "key_state") == "revoked")
        .unwrap_or_else(|| panic!("no revoked call listed: {bad:#?}"));
    assert_eq!(
        text(revoked, "revoked_by"),
        "bob",
        "the revoked call shows who revoked its grant: {revoked:?}"
    );
    assert_eq!(text(revoked, "granted_by"), "carol", "{revoked:?}");
    assert_eq!(text(revoked, "key_suffix"), "b1ll", "{revoked:?}");
    assert_eq!(
        num(revoked, "calls"),
        count(&|e| e.key_state == KeyState::Revoked)
    );
    let states: BTreeSet<&str> = bad.iter().map(|r| text(r, "key_state")).collect();
    assert_eq!(
        states,
        ["expired", "not_granted_for_api", "revoked", "unknown"]
            .into_iter()
            .collect(),
        "non-valid key states listed"
    );

    let shadow = main("Shadow consumers (unattributed calls)");
    let py3 = shadow
        .iter()
        .find(|r| text(r, "client_comm") == "python3")
        .unwrap_or_else(|| panic!("python3 is a shadow consumer: {shadow:#?}"));
    assert_eq!(text(py3, "source_ip"), "192.168.1.77");
    assert_eq!(text(py3, "apis"), "Orders");
    assert_eq!(num(py3, "requests"), count(&|e| e.client_comm == "python3"));
    assert_eq!(shadow.len(), 3, "three unattributed workloads: {shadow:#?}");
    assert_eq!(num(&main("Shadow consumer workloads")[0], "workloads"), 3.0);

    for r in main("Latency by route (p50 / p95 / p99)") {
        let (p50, p95, p99) = (num(r, "p50_ms"), num(r, "p95_ms"), num(r, "p99_ms"));
        assert!(
            1.0 <= p50 && p50 <= p95 && p95 <= p99 && p99 <= 100.0,
            "latency quantiles out of order or range: {r:?}"
        );
    }
    let bytes = main("Bytes in / out by API");
    let pay_bytes = bytes
        .iter()
        .find(|r| text(r, "api") == "Payments")
        .unwrap_or_else(|| panic!("no Payments bytes: {bytes:#?}"));
    let want_in: u64 = events
        .iter()
        .filter(|e| e.api_id == "pay")
        .map(|e| e.req_bytes)
        .sum();
    assert_eq!(num(pay_bytes, "bytes_in"), want_in as f64);

    let history = panel("key-audit.json", "Grant history");
    let billing_grant = history
        .iter()
        .find(|r| text(r, "key_suffix") == "b1ll")
        .unwrap_or_else(|| panic!("billing's grant in the history: {history:#?}"));
    assert_eq!(text(billing_grant, "revoked_by"), "bob");
    assert_eq!(text(billing_grant, "application"), "Billing");
    assert_eq!(
        history.len(),
        5,
        "one row per grant entry of the registry: {history:#?}"
    );
    let changes = panel("key-audit.json", "Grant changes loaded in the time range");
    assert_eq!(
        changes.len(),
        6,
        "five grants at version 1 and the revocation at version 2: {changes:#?}"
    );
}
