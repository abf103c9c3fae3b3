//! The Grafana dashboards in `dashboards/` (for the ClickHouse data source plugin, `grafana-clickhouse-datasource`).
//!
//! `dashboards_are_well_formed` checks every dashboard file's structure without a server. `every_panel_query_runs`
//! inserts fixture traffic through the real sink and registry rows through `write_registry` into the ClickHouse dev
//! server (see `common/mod.rs`), expands each panel's SQL the way Grafana and the plugin do (template variables, then
//! the plugin's macros), runs it and checks that it returns rows, and for some panels the values the fixtures imply.
//! Panels read the rollups through the view `http_requests_rollup` (migration 16), which takes whole hours from the
//! hour rollup; `check_rollup_paths` runs each such panel both ways and compares with the minute rollup alone.
//!
// Tests hold a process-wide lock across awaits on purpose: one dev server at a time.
#![allow(clippy::await_holding_lock)]
mod common;
#[path = "fixtures/origin.rs"]
mod origin_fixture;
#[path = "fixtures/traffic.rs"]
mod traffic;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::{apply, client, dev_fixture};
use observer::event::{Event, KeyState};
use observer::sink::clickhouse::migrations::{ROLLUP_1H, ROLLUP_1M, ROLLUP_QUANTILES, ROLLUP_VIEW};
use serde_json::{Map, Value};
use traffic::{fixture_events, load_fixtures, SPAN_S, T0_S};

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

/// The byte index in `s` of the `)` closing a parenthesis opened just before `s`.
fn closing_paren(s: &str) -> Option<usize> {
    let mut depth = 1;
    s.char_indices()
        .find(|&(_, c)| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            depth == 0
        })
        .map(|(i, _)| i)
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
            let close = closing_paren(inner)
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

/// A call of the rollup view in a panel's SQL: where it is and its arguments by name.
struct RollupCall {
    start: usize,
    end: usize,
    args: BTreeMap<String, String>,
}

fn rollup_calls(sql: &str) -> Vec<RollupCall> {
    let head = format!("observer.{ROLLUP_VIEW}(");
    sql.match_indices(&head)
        .map(|(start, _)| {
            let open = start + head.len();
            let close = open
                + closing_paren(&sql[open..])
                    .unwrap_or_else(|| panic!("{ROLLUP_VIEW}: unbalanced parentheses in {sql}"));
            let args = split_args(&sql[open..close])
                .into_iter()
                .map(|a| {
                    let (k, v) = a.split_once('=').unwrap_or_else(|| {
                        panic!("{ROLLUP_VIEW}: argument {a:?} is not name = value")
                    });
                    (k.trim().to_string(), v.trim().to_string())
                })
                .collect();
            RollupCall {
                start,
                end: close + 1,
                args,
            }
        })
        .collect()
}

/// `sql` reading the minute rollup alone over the view call's range, as the panels did before the view.
fn minute_path(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut last = 0;
    for call in rollup_calls(sql) {
        let (b, table) = (ROLLUP_1M.bucket, ROLLUP_1M.table);
        out.push_str(&sql[last..call.start]);
        out.push_str(&format!(
            "(SELECT {b} AS bucket, * EXCEPT ({b}) FROM observer.{table} WHERE {b} >= {} AND {b} <= {})",
            call.args["from"], call.args["to"]
        ));
        last = call.end;
    }
    out.push_str(&sql[last..]);
    out
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
                Some("custom") => {
                    nonempty_str(
                        &v["query"],
                        &format!("{f}: values of custom variable {name}"),
                    );
                }
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
                // Values are strings: `:sqlstring` quotes each one and doubles its quotes, so a value holding a
                // quote (or an injection attempt) stays one SQL string literal.
                for r in var_refs(sql).iter().filter(|r| !r.name.starts_with("__")) {
                    assert_eq!(
                        r.format.as_deref(),
                        Some("sqlstring"),
                        "{what}: write ${{{}:sqlstring}}, not {:?}",
                        r.name,
                        &sql[r.start..r.end]
                    );
                }
                for r in var_refs(sql).iter().filter(|r| r.name.starts_with("__")) {
                    let m = &r.name[2..];
                    assert!(MACROS.contains(&m), "{what}: unknown macro $__{m}");
                }
                // The rollups through their view, which picks the table by the panel's resolution.
                for table in [ROLLUP_1M.table, ROLLUP_1H.table] {
                    assert!(
                        !sql.contains(&format!("observer.{table}")),
                        "{what}: read observer.{ROLLUP_VIEW}(...), not {table}: the view takes whole hours from \
                         the hour rollup"
                    );
                }
                for call in rollup_calls(sql) {
                    let step = if sql.contains("$__timeInterval") {
                        "$__interval_s"
                    } else {
                        "0"
                    };
                    assert_eq!(
                        call.args.keys().map(String::as_str).collect::<Vec<_>>(),
                        ["from", "step_s", "to"],
                        "{what}: {ROLLUP_VIEW} takes from, to and step_s"
                    );
                    assert_eq!(
                        call.args["step_s"], step,
                        "{what}: step_s is the width of the panel's time buckets ($__interval_s with \
                         $__timeInterval, 0 for one bucket over the whole range)"
                    );
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

/// The insights dashboard offers every kind of finding the detectors raise, by the names they are stored under.
#[test]
fn the_insights_kinds_are_the_detectors_kinds() {
    let d = load_dashboards()
        .into_iter()
        .find(|d| d.file == "insights.json")
        .expect("dashboards/insights.json");
    let kind = d
        .variables()
        .iter()
        .find(|v| v["name"] == "kind")
        .expect("a kind variable");
    let offered: Vec<&str> = kind["query"].as_str().unwrap().split(',').collect();
    let raised: Vec<&str> = observer::insights::Kind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(offered, raised);
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

/// Single-select variables have no "All": the value the fixture checks use, by dashboard and variable.
const SINGLE_DEFAULTS: &[(&str, &str, &str)] = &[
    ("application-detail.json", "app", "shop"),
    (ORIGIN_DASHBOARD, "app", "mobile"),
    (ORIGIN_DASHBOARD, "api", "storefront"),
];

/// One template variable and the values Grafana would offer for it.
struct VarChoice {
    name: String,
    multi: bool,
    options: Vec<String>,
    /// What a single-select variable holds when the others are at "All".
    default: String,
}

impl VarChoice {
    /// "All" for a multi-select variable (Grafana sends every option), the default for a single-select one.
    fn all(&self) -> Vec<String> {
        if self.multi {
            self.options.clone()
        } else {
            vec![self.default.clone()]
        }
    }

    /// The first `n` options (one for a single-select variable).
    fn first(&self, n: usize) -> Vec<String> {
        let n = if self.multi { n } else { 1 };
        self.options.iter().take(n).cloned().collect()
    }

    /// An option holding a single quote, if any.
    fn quoted(&self) -> Option<&str> {
        self.options
            .iter()
            .find(|o| o.contains('\''))
            .map(String::as_str)
    }
}

/// Every variable of `d` in definition order, its options resolved as Grafana does (query variables run with the
/// earlier ones at "All", custom ones split at commas, the data source as one name).
async fn variable_choices(c: &clickhouse::Client, d: &Dashboard, t: TimeRange) -> Vec<VarChoice> {
    let mut out: Vec<VarChoice> = Vec::new();
    for v in d.variables() {
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let options = match v["type"].as_str() {
            Some("query") => {
                let earlier = selection(&out, VarChoice::all);
                variable_options(c, d, v, &earlier, t).await
            }
            Some("custom") => v["query"]
                .as_str()
                .unwrap_or_default()
                .split(',')
                .map(|o| o.trim().to_string())
                .collect(),
            Some("datasource") => vec!["ClickHouse".into()],
            other => panic!("{}: variable {name} of type {other:?}", d.file),
        };
        let multi = v["multi"] == true;
        let default = SINGLE_DEFAULTS
            .iter()
            .find(|(f, n, _)| *f == d.file && *n == name)
            .map_or_else(|| options[0].clone(), |(_, _, val)| val.to_string());
        assert!(
            options.contains(&default),
            "{}: ${name} does not offer {default:?}: {options:?}",
            d.file
        );
        out.push(VarChoice {
            name,
            multi,
            options,
            default,
        });
    }
    out
}

/// Selected values of every variable, `pick` choosing each one's.
fn selection(
    vars: &[VarChoice],
    pick: impl Fn(&VarChoice) -> Vec<String>,
) -> BTreeMap<String, Vec<String>> {
    vars.iter().map(|v| (v.name.clone(), pick(v))).collect()
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
    let Some(fx) = dev_fixture("every_panel_query_runs") else {
        return;
    };
    let dashboards = load_dashboards();
    let url = &fx.url;
    apply(url, None).await;

    let events = fixture_events();
    load_fixtures(url, &fx.dir.path().join("spool"), &events).await;
    let c = client(url).with_database("observer");

    // The dashboard time range covers the fixtures with margin; one-minute interval.
    let t = TimeRange {
        from_ms: (T0_S - 600) * 1000,
        to_ms: (T0_S + SPAN_S + 3600) * 1000,
        interval_ms: 60_000,
    };
    let mut results = BTreeMap::new();
    let mut quoted_runs = Vec::new();
    for d in dashboards.iter().filter(|d| d.file != ORIGIN_DASHBOARD) {
        let vars = variable_choices(&c, d, t).await;
        let all = selection(&vars, |v| v.all());
        let rows = run_panels(&c, d, &all, t, "All selected").await;
        for (title, r) in &rows {
            assert!(
                !r.is_empty(),
                "{}: panel {title:?} returned no rows on the fixture data with All selected",
                d.file
            );
        }
        // One value, then two values of each variable: the SQL must still be valid (rows may be empty).
        run_panels(&c, d, &selection(&vars, |v| v.first(1)), t, "first option").await;
        run_panels(
            &c,
            d,
            &selection(&vars, |v| v.first(2)),
            t,
            "first two options",
        )
        .await;
        // A value holding a quote, alone and beside another, in each variable that offers one.
        for v in vars.iter().filter(|v| v.quoted().is_some()) {
            let q = v.quoted().unwrap().to_string();
            let mut one = all.clone();
            one.insert(v.name.clone(), vec![q.clone()]);
            let what = format!("${} = {q:?}", v.name);
            let r = run_panels(&c, d, &one, t, &what).await;
            if v.multi {
                let other = v.options.iter().find(|o| **o != q).expect("another option");
                one.insert(v.name.clone(), vec![other.clone(), q.clone()]);
                run_panels(&c, d, &one, t, &format!("{what} and {other:?}")).await;
            }
            quoted_runs.push((d.file.clone(), v.name.clone(), r));
        }
        // A five-minute interval buckets differently.
        let wide = TimeRange {
            interval_ms: 300_000,
            ..t
        };
        run_panels(&c, d, &all, wide, "5 min interval").await;
        results.insert(d.file.clone(), rows);
    }

    // Values the fixtures imply, from the events in the time range (the day-before traffic is outside it).
    let in_range: Vec<&Event> = events
        .iter()
        .filter(|e| e.ts.0 >= t.from_ms * 1000 && e.ts.0 <= t.to_ms * 1000)
        .collect();
    assert!(
        in_range.len() < events.len(),
        "some fixtures precede the range"
    );
    let count = |pred: &dyn Fn(&Event) -> bool| in_range.iter().filter(|e| pred(e)).count() as f64;
    let panel = |file: &str, title: &str| -> &Vec<Row> {
        results
            .get(file)
            .and_then(|panels| panels.get(title))
            .unwrap_or_else(|| panic!("{file}: no panel titled {title:?}"))
    };
    let main = |title: &str| panel("api-consumption.json", title);
    assert_eq!(
        num(&main("Requests")[0], "requests"),
        in_range.len() as f64,
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
    assert_eq!(
        text(revoked, "granted_by"),
        "carol",
        "the grant in force at the call, not frank's later re-grant: {revoked:?}"
    );
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
    let want_in: u64 = in_range
        .iter()
        .filter(|e| e.api_id == "pay")
        .map(|e| e.req_bytes)
        .sum();
    assert_eq!(num(pay_bytes, "bytes_in"), want_in as f64);

    let history = panel("key-audit.json", "Grant history");
    let billing_grant = history
        .iter()
        .find(|r| text(r, "key_suffix") == "b1ll" && text(r, "api") == "Payments")
        .unwrap_or_else(|| panic!("billing's grant in the history: {history:#?}"));
    assert_eq!(text(billing_grant, "revoked_by"), "bob");
    assert_eq!(text(billing_grant, "application"), "Billing");
    assert_eq!(
        history.len(),
        8,
        "one row per grant entry of the registry: {history:#?}"
    );
    let changes = panel("key-audit.json", "Grant changes loaded in the time range");
    assert_eq!(
        changes.len(),
        9,
        "seven grants at version 1, the revocation and the re-grant at version 2: {changes:#?}"
    );

    check_insights(&|title| panel("insights.json", title));
    check_application_detail(&|title| panel("application-detail.json", title), &count);
    check_governance(&|title| panel("governance-audit.json", title), &count);
    check_operations(
        &|title| panel("operations.json", title),
        &count,
        (t.to_ms - t.from_ms) as f64 / 1000.0,
    );

    // A quoted value selects its own rows: the shop's predecessor, whose id holds a quote.
    let old_shop = quoted_runs
        .iter()
        .find(|(f, v, _)| f == "application-detail.json" && v == "app")
        .map(|(_, _, rows)| rows)
        .expect("application-detail.json: $app offers \"bob's-shop\"");
    assert_eq!(
        num(&old_shop["Requests"][0], "requests"),
        count(&|e| e.app_id == "bob's-shop"),
        "application detail of bob's-shop"
    );
    let by_app = quoted_runs
        .iter()
        .find(|(f, v, _)| f == "api-consumption.json" && v == "app")
        .map(|(_, _, rows)| rows)
        .expect("api-consumption.json: $app offers \"bob's-shop\"");
    assert_eq!(
        num(&by_app["Requests"][0], "requests"),
        count(&|e| e.app_id == "bob's-shop"),
        "API consumption with $app = bob's-shop"
    );

    check_rollup_paths(&c, &dashboards).await;

    let origin = dashboards
        .iter()
        .find(|d| d.file == ORIGIN_DASHBOARD)
        .expect("dashboards/origin.json");
    check_origin(&c, url, &fx.dir.path().join("spool-origin"), origin).await;
}

const ORIGIN_DASHBOARD: &str = "origin.json";

/// The origin dashboard on its own fixtures (`fixtures/origin.rs`, a day after the other traffic so the other
/// dashboards' figures stay theirs), after the fleet-wide join: every panel returns rows, with the values the
/// chains imply.
async fn check_origin(c: &clickhouse::Client, url: &str, spool: &Path, d: &Dashboard) {
    use origin_fixture::{ledger_fails, origin_events, CALLS};
    let t0 = T0_S + SPAN_S + 86_400;
    let events = origin_events(t0, 3_600);
    common::insert_events(url, spool, &events).await;
    let joined = observer::origin_join::join_window(
        c,
        (t0 - 60) * 1_000_000,
        (t0 + 7_200) * 1_000_000,
        1_000_000,
    )
    .await
    .expect("origin join");
    assert_eq!(joined.filled, 2 * CALLS, "{joined:?}");
    let t = TimeRange {
        from_ms: (t0 - 600) * 1000,
        to_ms: (t0 + 7_200) * 1000,
        interval_ms: 60_000,
    };
    let vars = variable_choices(c, d, t).await;
    let all = selection(&vars, |v| v.all());
    let rows = run_panels(c, d, &all, t, "All selected").await;
    for (title, r) in &rows {
        assert!(
            !r.is_empty(),
            "{}: panel {title:?} returned no rows",
            d.file
        );
    }
    run_panels(c, d, &selection(&vars, |v| v.first(1)), t, "first option").await;
    let wide = TimeRange {
        interval_ms: 300_000,
        ..t
    };
    run_panels(c, d, &all, wide, "5 min interval").await;

    let failed = (0..CALLS).filter(|i| ledger_fails(*i)).count() as f64;
    let n = CALLS as f64;
    let panel = |title: &str| {
        rows.get(title)
            .unwrap_or_else(|| panic!("origin.json: no panel {title:?}"))
    };
    assert_eq!(
        num(
            &panel("Calls made on behalf of $app below the edge")[0],
            "calls"
        ),
        2.0 * n,
        "payments-internal and ledger; checkout is called directly too"
    );
    let cost = panel("Downstream cost of $app");
    let by: BTreeMap<&str, (f64, f64, f64)> = cost
        .iter()
        .map(|r| {
            (
                text(r, "service"),
                (num(r, "calls"), num(r, "errors"), num(r, "max_hop")),
            )
        })
        .collect();
    assert_eq!(
        by,
        BTreeMap::from([
            ("ledger", (n, failed, 3.0)),
            ("payments-internal", (n, 0.0, 2.0)),
        ]),
        "{cost:#?}"
    );
    assert_eq!(
        num(&panel("Exchanges joined across nodes")[0], "joined"),
        2.0 * n
    );
    assert_eq!(
        num(&panel("Fan-out per external call of $api")[0], "per_call"),
        3.0
    );
    let hops = panel("Composition of $api: calls per hop");
    let edges: Vec<(&str, &str, f64, f64, f64)> = hops
        .iter()
        .map(|r| {
            (
                text(r, "source"),
                text(r, "target"),
                num(r, "calls"),
                num(r, "per_external_call"),
                num(r, "errors"),
            )
        })
        .collect();
    assert_eq!(
        edges,
        vec![
            ("storefront", "checkout", n, 1.0, 0.0),
            ("checkout", "payments-internal", n, 1.0, 0.0),
            ("payments-internal", "ledger", n, 1.0, failed),
        ]
    );
    let graph = panel("Composition of $api");
    let nodes: BTreeSet<&str> = graph
        .iter()
        .filter(|r| r.contains_key("title"))
        .map(|r| text(r, "id"))
        .collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["checkout", "ledger", "payments-internal", "storefront"])
    );
    assert_eq!(graph.iter().filter(|r| r.contains_key("source")).count(), 3);
    let by_way: BTreeMap<&str, f64> = panel("How origins were decided")
        .iter()
        .map(|r| (text(r, "origin_by"), num(r, "exchanges")))
        .collect();
    assert_eq!(
        by_way.get("trace"),
        Some(&n),
        "node B's server side joined by trace: {by_way:?}"
    );
}

/// Every panel target reading the rollup view gives the same rows as it would from the minute rollup alone: on a
/// range whose ends are whole hours with a one-hour interval (the hour rollup answers all but the last bucket, the
/// minute at its end), on ranges with ends inside hours (the minutes of the partial hours from the minute rollup)
/// with one-hour and one-minute intervals.
async fn check_rollup_paths(c: &clickhouse::Client, dashboards: &[Dashboard]) {
    let hour = i64::from(ROLLUP_1H.seconds);
    let first_hour = T0_S - T0_S.rem_euclid(hour);
    let range = |from_s: i64, to_s: i64, interval_s: i64| TimeRange {
        from_ms: from_s * 1000,
        to_ms: to_s * 1000,
        interval_ms: interval_s * 1000,
    };
    // Each range's first and last hours hold fixture traffic (from T0_S, inside an hour, for SPAN_S).
    let end = T0_S + SPAN_S / 2 + 1_234;
    let ranges = [
        range(first_hour, first_hour + 2 * hour, hour),
        range(T0_S - 600, end, hour),
        range(T0_S - 600, end, 60),
    ];
    assert!(
        first_hour < T0_S && T0_S - 600 < first_hour + hour && end % hour != 0,
        "the ranges' ends lie inside hours"
    );
    assert!(first_hour + 2 * hour < T0_S + SPAN_S && end < T0_S + SPAN_S);
    // The aligned range reads fewer rows through the view: its whole hours come from the hour rollup.
    let t = ranges[0];
    let rows = |from: &str| format!("SELECT toString(count()) AS n FROM {from}");
    let view = format!(
        "observer.{ROLLUP_VIEW}(from = $__fromTime, to = $__toTime, step_s = $__interval_s)"
    );
    let via_view = query_rows(c, &expand(&rows(&view), &BTreeMap::new(), t), "view rows").await;
    let minutes = query_rows(
        c,
        &expand(&rows(&minute_path(&view)), &BTreeMap::new(), t),
        "minute rows",
    )
    .await;
    let (v, m) = (num(&via_view[0], "n"), num(&minutes[0], "n"));
    assert!(
        0.0 < v && v < m,
        "the view reads whole hours from {}: {v} rows against {m} minute rows",
        ROLLUP_1H.table
    );

    let mut compared = 0;
    let reads_rollups = |d: &&Dashboard| {
        d.query_panels().iter().any(|p| {
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| !rollup_calls(t["rawSql"].as_str().unwrap_or_default()).is_empty())
        })
    };
    for d in dashboards.iter().filter(reads_rollups) {
        for t in ranges {
            let vars = variable_choices(c, d, t).await;
            let values = selection(&vars, |v| v.all());
            for p in d.query_panels() {
                for target in p["targets"].as_array().into_iter().flatten() {
                    let raw = target["rawSql"].as_str().unwrap_or_default();
                    if rollup_calls(raw).is_empty() {
                        continue;
                    }
                    let what = format!(
                        "{}: panel {:?} target {} over {}..{} s, interval {} s",
                        d.file,
                        p["title"],
                        target["refId"],
                        t.from_ms / 1000,
                        t.to_ms / 1000,
                        t.interval_ms / 1000
                    );
                    let hours = query_rows(c, &expand(raw, &values, t), &what).await;
                    let mins = query_rows(c, &expand(&minute_path(raw), &values, t), &what).await;
                    // Rows in a stable order (the ORDER BY may tie), each as its column texts.
                    let sorted = |rows: Vec<Row>| {
                        let mut out: Vec<Vec<String>> = rows
                            .iter()
                            .map(|r| r.iter().map(|(k, v)| format!("{k}={v}")).collect())
                            .collect();
                        out.sort();
                        out
                    };
                    let (hours, mins) = (sorted(hours), sorted(mins));
                    assert_eq!(hours, mins, "{what}");
                    compared += hours.len();
                }
            }
        }
    }
    assert!(compared > 0, "no rollup panel rows compared");
}

type Panel<'a> = dyn Fn(&str) -> &'a Vec<Row> + 'a;

/// The insights dashboard on the fixture findings (`fixtures/traffic.rs`): at the end of the range f2, f3 and f6
/// are open; f1 and f4 closed in it; f5 ended the day before; f1's second version was written twice.
fn check_insights(panel: &Panel) {
    let one = |title: &str, col: &str| num(&panel(title)[0], col);
    assert_eq!(one("Open findings", "open_findings"), 3.0);
    assert_eq!(one("Critical open findings", "critical_open"), 1.0);
    assert_eq!(
        one("New findings", "new_findings"),
        4.0,
        "f1-f4 began in it"
    );
    assert_eq!(one("Closed findings", "closed_findings"), 2.0);
    let open = panel("Open findings with explanation and evidence");
    let ids: BTreeSet<&str> = open.iter().map(|r| text(r, "id")).collect();
    assert_eq!(ids, ["f2", "f3", "f6"].into_iter().collect(), "{open:#?}");
    assert_eq!(text(&open[0], "severity"), "critical", "severest first");
    let timeline = panel("Findings timeline");
    assert_eq!(
        timeline.len(),
        8,
        "every version in the range once (f1's duplicate row merged): {timeline:#?}"
    );
    let per_kind = panel("Findings per kind and team");
    let storm = per_kind
        .iter()
        .find(|r| text(r, "kind") == "retry_storm")
        .unwrap_or_else(|| panic!("retry_storm row: {per_kind:#?}"));
    assert_eq!(text(storm, "team_name"), "finance");
    assert_eq!((num(storm, "findings"), num(storm, "open")), (1.0, 0.0));
    assert_eq!(
        total(per_kind, "findings"),
        5.0,
        "f5 was not active in the range"
    );
    assert_eq!(total(panel("New findings by team"), "findings"), 4.0);
    assert_eq!(total(panel("New findings by kind"), "findings"), 4.0);
    assert_eq!(
        total(panel("Finding versions by severity"), "versions"),
        8.0,
        "versions written in the range, the duplicate row once"
    );
}
type Count<'a> = dyn Fn(&dyn Fn(&Event) -> bool) -> f64 + 'a;

/// Sum of `col` over `rows`.
fn total(rows: &[Row], col: &str) -> f64 {
    rows.iter()
        .filter(|r| r.contains_key(col))
        .map(|r| num(r, col))
        .sum()
}

/// The application detail of the shop (its default): its rate, baseline and predecessor, its keys.
fn check_application_detail(panel: &Panel, count: &Count) {
    let shop = |e: &Event| e.app_id == "shop";
    assert_eq!(num(&panel("Requests")[0], "requests"), count(&shop));
    assert_eq!(text(&panel("Predecessor")[0], "predecessor"), "Bob's shop");
    // One-minute buckets: requests per second times 60 is the bucket's count.
    let rate = panel("Rate vs baseline vs predecessor");
    let close = |a: f64, b: f64, what: &str| assert!((a - b).abs() < 1e-6, "{what}: {a} != {b}");
    close(total(rate, "this_app") * 60.0, count(&shop), "this_app");
    close(
        total(rate, "predecessor") * 60.0,
        count(&|e| e.app_id == "bob's-shop"),
        "predecessor",
    );
    // The day before is outside the range: 60 calls (the fixture flow starting a day before T0).
    close(
        total(rate, "baseline_day_before") * 60.0,
        60.0,
        "baseline_day_before",
    );
    let keys = panel("Keys and grants");
    let state = |suffix: &str, api: &str| -> (String, f64) {
        let r = keys
            .iter()
            .find(|r| text(r, "key_suffix") == suffix && text(r, "api") == api)
            .unwrap_or_else(|| panic!("no grant {suffix} for {api}: {keys:#?}"));
        (text(r, "state").to_string(), num(r, "calls"))
    };
    assert_eq!(keys.len(), 3, "the shop's three grants: {keys:#?}");
    assert_eq!(
        state("sh01", "Payments"),
        (
            "active".into(),
            count(&|e| e.key_fingerprint == "fp-shop" && e.api_id == "pay")
        )
    );
    assert_eq!(state("0ld1", "Catalog").0, "expired");
    let routes = panel("APIs and routes called");
    assert_eq!(total(routes, "requests"), count(&shop));
    assert_eq!(
        total(routes, "errors"),
        count(&|e| shop(e) && (e.status >= 500 || e.status == 0))
    );
}

/// Who can call what, unused and shared keys, calls outside the grant.
fn check_governance(panel: &Panel, count: &Count) {
    let grants = panel("Who can call what");
    assert_eq!(grants.len(), 7, "one row per key and API: {grants:#?}");
    let billing_pay = grants
        .iter()
        .find(|r| text(r, "key_suffix") == "b1ll" && text(r, "api") == "Payments")
        .unwrap_or_else(|| panic!("billing's payments grant: {grants:#?}"));
    // The newest entry: frank granted the API again after the traffic (carol's revoked grant is in the history).
    assert_eq!(text(billing_pay, "state"), "active");
    assert_eq!(text(billing_pay, "granted_by"), "frank");
    assert_eq!(text(billing_pay, "team"), "finance");
    assert_eq!(
        num(billing_pay, "calls"),
        count(&|e| e.key_fingerprint == "fp-billing")
    );
    let unused: BTreeSet<(&str, &str)> = panel("Grants unused in the time range")
        .iter()
        .map(|r| (text(r, "key_suffix"), text(r, "api")))
        .collect();
    assert_eq!(
        unused,
        [("b1ll", "Orders"), ("b4tc", "Catalog")]
            .into_iter()
            .collect(),
        "granted, active and never used in the range"
    );
    assert_eq!(num(&panel("Unused grants")[0], "unused_grants"), 2.0);
    let shared = panel("Shared keys");
    assert_eq!(
        shared.len(),
        1,
        "only the shop's key is shared: {shared:#?}"
    );
    assert_eq!(text(&shared[0], "key_suffix"), "sh01");
    assert_eq!(num(&shared[0], "workloads"), 2.0);
    assert_eq!(text(&shared[0], "processes"), "curl, shop");
    let outside = |e: &Event| {
        matches!(
            e.key_state,
            KeyState::Revoked
                | KeyState::Expired
                | KeyState::NotGrantedForApi
                | KeyState::NotYetValid
        )
    };
    assert_eq!(
        num(&panel("Calls outside their grant")[0], "calls"),
        count(&outside)
    );
    assert_eq!(
        total(panel("Keys used outside their grant"), "calls"),
        count(&outside)
    );
    assert_eq!(panel("Shadow consumers").len(), 3);
}

/// Rate, errors and latency per API, route and side.
fn check_operations(panel: &Panel, count: &Count, range_s: f64) {
    let all = count(&|_| true);
    let table = panel("By API, route and observed side");
    assert_eq!(total(table, "requests"), all);
    assert_eq!(
        total(table, "errors"),
        count(&|e| e.status >= 500 || e.status == 0)
    );
    for r in table {
        assert_eq!(
            text(r, "side"),
            "client",
            "the fixtures are client side: {r:?}"
        );
        let (p50, p95, p99) = (num(r, "p50_ms"), num(r, "p95_ms"), num(r, "p99_ms"));
        assert!(
            1.0 <= p50 && p50 <= p95 && p95 <= p99 && p99 <= 100.0,
            "latency quantiles out of order or range: {r:?}"
        );
    }
    let rps = num(&panel("Requests per second")[0], "rps");
    assert!(
        (rps - all / range_s).abs() < 1e-9,
        "{rps} vs {}",
        all / range_s
    );
    assert_eq!(
        total(panel("Status codes by API"), "requests"),
        all,
        "every exchange has one status"
    );
}
