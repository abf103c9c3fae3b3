//! The built-in web UI against the ClickHouse dev server loaded with the fixture traffic (`fixtures/traffic.rs`):
//! every JSON endpoint's values, the same pages from the in-memory store, the bearer token, and (when Debian's
//! `chromium` is installed) each page loaded in headless Chromium: a screenshot per page under
//! `target/ui-screenshots/`, charts drawn with non-empty series, tables holding the expected rows, no script errors.
// Tests hold a process-wide lock across awaits on purpose: one dev server at a time.
#![allow(clippy::await_holding_lock)]
mod common;
#[path = "fixtures/traffic.rs"]
mod traffic;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{apply, client, dev_fixture};
use observer::event::{Event, KeyState, Timestamp};
use observer::sink::clickhouse::registry_rows::RegistryRows;
use observer::ui::{self, memory::MemoryStore, model::Insight, Source, UiState};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use traffic::{fixture_events, fixture_insights, fixture_registry, load_fixtures, SPAN_S, T0_S};

/// The range every request asks for: the fixture traffic with margin.
const FROM: i64 = T0_S - 600;
const TO: i64 = T0_S + SPAN_S + 3600;

/// The registry as the agent holds it after the second load: version 1 with billing's payments grant revoked.
fn current_registry() -> RegistryRows {
    let (mut v1, v2) = fixture_registry();
    for g in v2.key_grants {
        match v1.key_grants.iter_mut().find(|o| {
            o.key_fingerprint == g.key_fingerprint
                && o.api_id == g.api_id
                && o.grant_seq == g.grant_seq
        }) {
            Some(old) => *old = g,
            None => v1.key_grants.push(g),
        }
    }
    v1
}

async fn start(source: Source, token: Option<&str>) -> SocketAddr {
    let reg = Arc::new(current_registry());
    let state = UiState {
        source,
        registry: Arc::new(move || reg.clone()),
        token: token.map(Arc::from),
    };
    let (addr, server) = ui::serve("127.0.0.1:0".parse().unwrap(), state)
        .await
        .expect("bind the UI");
    tokio::spawn(server);
    addr
}

/// GET `path` over HTTP/1.1; the status and the body.
async fn get_raw(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// GET a JSON endpoint over the fixture range; panics unless 200.
async fn get(addr: SocketAddr, path: &str, extra: &str) -> Value {
    let sep = if path.contains('?') { '&' } else { '?' };
    let url = format!("{path}{sep}from={FROM}&to={TO}&step=60{extra}");
    let (status, body) = get_raw(addr, &url, "").await;
    assert_eq!(status, 200, "GET {url}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

fn n(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn rows<'a>(v: &'a Value, field: &str) -> &'a Vec<Value> {
    v[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} is not an array in {v}"))
}

fn find<'a>(list: &'a [Value], pred: impl Fn(&Value) -> bool, what: &str) -> &'a Value {
    list.iter()
        .find(|r| pred(r))
        .unwrap_or_else(|| panic!("{what}: not in {list:#?}"))
}

/// Sum over a series' lines and buckets of rate × step: the requests it shows.
fn series_requests(s: &Value, step: f64, label: Option<&str>) -> f64 {
    rows(s, "lines")
        .iter()
        .filter(|l| label.is_none_or(|want| l["label"] == want))
        .flat_map(|l| rows(l, "values").iter().map(n))
        .sum::<f64>()
        * step
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() < 1e-6 * b.abs().max(1.0),
        "{what}: {a} != {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_and_pages_show_the_fixture_traffic() {
    let Some(fx) = dev_fixture("endpoints_and_pages_show_the_fixture_traffic") else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;
    let events = fixture_events();
    load_fixtures(url, &fx.dir.path().join("spool"), &events).await;
    let ch = Source::ClickHouse(ui::clickhouse::ClickHouseSource::new(
        client(url).with_database("observer"),
    ));
    let addr = start(ch, None).await;

    let in_range: Vec<&Event> = events
        .iter()
        .filter(|e| e.ts.0 >= FROM * 1_000_000 && e.ts.0 < TO * 1_000_000)
        .collect();
    let count = |pred: &dyn Fn(&Event) -> bool| in_range.iter().filter(|e| pred(e)).count() as f64;

    // Overview.
    let o = get(addr, "/api/overview", "").await;
    assert_eq!(o["source"], "clickhouse");
    assert_eq!(n(&o["totals"]["requests"]), in_range.len() as f64);
    close(
        series_requests(&o["consumption"], 60.0, None),
        in_range.len() as f64,
        "the stacked consumption adds up to every request",
    );
    let retail_shop = find(
        rows(&o["consumption"], "lines"),
        |l| l["label"] == "retail / Payments / Shop",
        "line of business / API / application line",
    );
    close(
        rows(retail_shop, "values").iter().map(n).sum::<f64>() * 60.0,
        count(&|e| e.app_id == "shop" && e.api_id == "pay"),
        "Shop on Payments",
    );
    let pay = find(rows(&o, "apis"), |a| a["api_id"] == "pay", "Payments");
    assert_eq!(n(&pay["requests"]), count(&|e| e.api_id == "pay"));
    assert_eq!(
        n(&pay["errors"]),
        count(&|e| e.api_id == "pay" && (e.status >= 500 || e.status == 0))
    );
    assert!(n(&pay["p95_ms"]) >= n(&pay["p50_ms"]) && n(&pay["p95_ms"]) <= 110.0);
    // The shop called the day before (inside the 7-day lookback): not new. The others are.
    let new_apps: BTreeSet<&str> = rows(&o, "new_apps")
        .iter()
        .map(|a| a["app_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        new_apps,
        ["batch", "billing", "bob's-shop"].into_iter().collect()
    );
    let new_consumers: BTreeSet<&str> = rows(&o, "new_consumers")
        .iter()
        .map(|a| a["name"].as_str().unwrap().split(' ').next().unwrap())
        .collect();
    assert_eq!(
        new_consumers,
        ["cron-report", "curl", "python3"].into_iter().collect()
    );
    // Open insights: the newest version of each finding, open at the end of the range.
    assert_eq!(ids(&o["insights"]), ["f2", "f3", "f6"]);

    // API page.
    let a = get(addr, "/api/apis/pay", "").await;
    assert_eq!(a["api_name"], "Payments");
    assert_eq!(a["owner"], "platform");
    let post = find(rows(&a, "routes"), |r| r["method"] == "POST", "POST route");
    assert_eq!(post["route"], "/v1/payments");
    assert_eq!(n(&post["requests"]), 40.0);
    let revoked = find(
        rows(&a, "consumers"),
        |c| c["app_id"] == "billing" && c["key_state"] == "revoked",
        "billing with its revoked key",
    );
    assert_eq!(n(&revoked["requests"]), 25.0);
    assert_eq!(revoked["key_suffix"], "b1ll");
    close(
        series_requests(&a["rate"], 60.0, Some("Shop")),
        count(&|e| e.app_id == "shop" && e.api_id == "pay"),
        "Shop's rate on Payments",
    );

    // Application page: against its predecessor, and its baseline over the hour before [T0+1h, T0+2h).
    let app = get(addr, "/api/apps/shop", "").await;
    assert_eq!(app["predecessor_id"], "bob's-shop");
    assert_eq!(app["predecessor_name"], "Bob's shop");
    assert_eq!(app["team"], "web");
    close(
        series_requests(&app["compare"], 60.0, Some("this_app")),
        count(&|e| e.app_id == "shop"),
        "this_app",
    );
    close(
        series_requests(&app["compare"], 60.0, Some("predecessor")),
        count(&|e| e.app_id == "bob's-shop"),
        "predecessor",
    );
    let keys = rows(&app, "keys");
    assert_eq!(keys.len(), 3, "{keys:#?}");
    let sh01 = find(
        keys,
        |k| k["key_suffix"] == "sh01" && k["api_id"] == "pay",
        "sh01 on pay",
    );
    assert_eq!(sh01["state"], "active");
    assert_eq!(
        n(&sh01["calls"]),
        count(&|e| e.key_fingerprint == "fp-shop" && e.api_id == "pay")
    );
    assert_eq!(
        find(keys, |k| k["key_suffix"] == "0ld1", "old key")["state"],
        "expired"
    );
    let errors = rows(&app, "errors");
    let e503 = find(errors, |e| e["status"] == 503, "503s");
    assert_eq!(
        n(&e503["requests"]),
        count(&|e| e.app_id == "shop" && e.status == 503)
    );
    let hour = T0_S + 3600;
    let (status, body) = get_raw(
        addr,
        &format!("/api/apps/shop?from={hour}&to={}&step=60", hour + 3600),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let later: Value = serde_json::from_str(&body).unwrap();
    // The range starts on a whole minute; the baseline covers the same length before it.
    let from = n(&later["range"]["from"]) as i64;
    let len = n(&later["range"]["to"]) as i64 - from;
    let before = events
        .iter()
        .filter(|e| {
            e.app_id == "shop" && e.ts.0 >= (from - len) * 1_000_000 && e.ts.0 < from * 1_000_000
        })
        .count() as f64;
    assert!(
        before > 100.0,
        "the shop called in the window before: {before}"
    );
    close(
        n(&later["baseline_rps"]),
        before / len as f64,
        "baseline: the window before",
    );
    let quoted = get(addr, "/api/apps/bob's-shop", "").await;
    assert_eq!(
        n(&quoted["totals"]["requests"]),
        count(&|e| e.app_id == "bob's-shop")
    );

    // Access and audit.
    let acc = get(addr, "/api/access", "").await;
    assert_eq!(rows(&acc, "grants").len(), 7);
    let billing = find(
        rows(&acc, "grants"),
        |g| g["key_suffix"] == "b1ll" && g["api_id"] == "pay",
        "billing's payments grant",
    );
    // At the end of the range frank's re-grant is in force; before it, carol's grant revoked by bob.
    assert_eq!(billing["state"], "active");
    assert_eq!(billing["granted_by"], "frank");
    assert_eq!(billing["team"], "finance");
    let (status, body) = get_raw(
        addr,
        &format!("/api/access?from={FROM}&to={}&step=60", T0_S + SPAN_S),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let earlier: Value = serde_json::from_str(&body).unwrap();
    let then = find(
        rows(&earlier, "grants"),
        |g| g["key_suffix"] == "b1ll" && g["api_id"] == "pay",
        "billing's payments grant before the re-grant",
    );
    assert_eq!(then["state"], "revoked");
    assert_eq!(then["revoked_by"], "bob");
    assert_eq!(then["granted_by"], "carol");
    assert_eq!(
        n(&billing["calls"]),
        count(&|e| e.key_fingerprint == "fp-billing")
    );
    let unused: BTreeSet<(&str, &str)> = rows(&acc, "unused")
        .iter()
        .map(|g| {
            (
                g["key_suffix"].as_str().unwrap(),
                g["api_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        unused,
        [("b1ll", "orders"), ("b4tc", "catalog")]
            .into_iter()
            .collect()
    );
    let shared = rows(&acc, "shared");
    assert_eq!(shared.len(), 1, "{shared:#?}");
    assert_eq!(shared[0]["key_suffix"], "sh01");
    assert_eq!(rows(&shared[0], "workloads").len(), 2);
    let outside: f64 = rows(&acc, "outside").iter().map(|r| n(&r["calls"])).sum();
    assert_eq!(
        outside,
        count(&|e| matches!(
            e.key_state,
            KeyState::Revoked
                | KeyState::Expired
                | KeyState::NotGrantedForApi
                | KeyState::NotYetValid
        ))
    );
    let revoked_use = find(
        rows(&acc, "outside"),
        |r| r["key_state"] == "revoked",
        "revoked use",
    );
    assert_eq!(revoked_use["revoked_by"], "bob");
    assert_eq!(revoked_use["granted_by"], "carol");
    assert_eq!(rows(&acc, "shadow").len(), 3);
    let py3 = find(
        rows(&acc, "shadow"),
        |s| s["client_comm"] == "python3",
        "python3",
    );
    assert_eq!(py3["src_ip"], "192.168.1.77");
    assert_eq!(n(&py3["calls"]), count(&|e| e.client_comm == "python3"));

    // Live tail, insights, meta.
    let t = get(addr, "/api/tail", "&limit=5").await;
    let ts: Vec<f64> = rows(&t, "rows").iter().map(|r| n(&r["ts"])).collect();
    assert_eq!(ts.len(), 5);
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "newest first: {ts:?}");
    let newest = in_range.iter().map(|e| e.ts.0).max().unwrap() as f64 / 1e6;
    close(ts[0], newest, "the newest exchange first");
    let py = get(addr, "/api/tail", "&limit=1000&q=python3").await;
    assert_eq!(
        rows(&py, "rows").len() as f64,
        count(&|e| e.client_comm == "python3")
    );
    check_insights(addr).await;
    let m = get(addr, "/api/meta", "").await;
    assert_eq!(rows(&m, "apps").len(), 4);

    // Bad input is a 400 naming the problem.
    let (status, body) = get_raw(addr, "/api/overview?range=soon", "").await;
    assert_eq!(status, 400);
    assert!(body.contains("range=\\\"soon\\\""), "{body}");

    // The in-memory store gives the same pages for its last hour.
    let mem = Arc::new(MemoryStore::new());
    mem.ingest(&events);
    for v in fixture_insights() {
        mem.push_insight(as_insight(&v));
    }
    let maddr = start(Source::Memory(mem), None).await;
    // 25 minutes, so the baseline window before them is still in the store's hour.
    let last_hour = format!("from={}&to={}&step=60", T0_S + SPAN_S - 1500, T0_S + SPAN_S);
    for path in [
        "/api/access",
        "/api/apps/shop",
        "/api/apis/pay",
        "/api/overview",
    ] {
        let url = format!("{path}?{last_hour}");
        let (s1, from_ch) = get_raw(addr, &url, "").await;
        let (s2, from_mem) = get_raw(maddr, &url, "").await;
        assert_eq!((s1, s2), (200, 200), "{url}");
        let mut a: Value = serde_json::from_str(&from_ch).unwrap();
        let mut b: Value = serde_json::from_str(&from_mem).unwrap();
        assert_eq!(b["source"], "memory");
        for v in [&mut a, &mut b] {
            v["source"] = Value::Null;
            // "New" looks back a week; the memory store holds an hour.
            v["new_apps"] = Value::Null;
            v["new_consumers"] = Value::Null;
        }
        assert_eq!(a, b, "{path}: ClickHouse and memory differ");
    }

    // A token guards every request.
    let token = "t0k3n-0123456789abcdef";
    let guarded = start(
        Source::ClickHouse(ui::clickhouse::ClickHouseSource::new(
            client(url).with_database("observer"),
        )),
        Some(token),
    )
    .await;
    assert_eq!(get_raw(guarded, "/api/meta", "").await.0, 401);
    assert_eq!(get_raw(guarded, "/", "").await.0, 401);
    assert_eq!(
        get_raw(
            guarded,
            "/api/meta",
            &format!("Authorization: Bearer {token}\r\n")
        )
        .await
        .0,
        200
    );
    assert_eq!(
        get_raw(
            guarded,
            "/api/meta",
            "Authorization: Bearer wrong-token-0123456\r\n"
        )
        .await
        .0,
        401
    );

    browse(addr, &in_range);
}

/// Ids of the findings of a list, in order.
fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .expect("a list of findings")
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect()
}

/// A fixture row of the `insights` table as the memory store holds a finding version.
fn as_insight(row: &Value) -> Insight {
    let secs = |f: &str| {
        let t = row[f].as_str().unwrap().replace(' ', "T") + "Z";
        Timestamp::parse_rfc3339(&t).unwrap().0 as f64 / 1e6
    };
    let mut v = row.clone();
    for f in ["ts", "first_seen", "last_seen"] {
        v[f] = secs(f).into();
    }
    serde_json::from_value(v).expect("a finding version")
}

/// `/api/insights` and the insights of the API and application pages, from the fixture findings (see
/// `fixtures/traffic.rs`): the newest version of each finding active in the range, newest first.
async fn check_insights(addr: SocketAddr) {
    let i = get(addr, "/api/insights", "").await;
    assert_eq!(
        ids(&i["items"]),
        ["f4", "f2", "f1", "f3", "f6"],
        "f5 ended before the range; f6 opened before it and is still open"
    );
    let f1 = &rows(&i, "items")[2];
    assert_eq!(
        (n(&f1["version"]), f1["status"].as_str()),
        (3.0, Some("closed"))
    );
    assert_eq!(f1["severity"], "critical");
    assert_eq!(f1["api_name"], "Payments", "names from the registry");
    assert_eq!(
        n(&f1["evidence"]["retry_share"]),
        0.35,
        "evidence is an object"
    );
    assert_eq!(f1["evidence"]["retrying_apps"][0], "billing");
    close(n(&f1["first_seen"]), (T0_S + 540) as f64, "first seen");
    close(n(&f1["last_seen"]), (T0_S + 2100) as f64, "last seen");
    assert_eq!(i["teams"], serde_json::json!(["data", "finance", "web"]));
    assert_eq!(rows(&i, "kinds").len(), 5);
    // The timeline: one line per kind, a finding counted in each bucket it was active in.
    let storm = find(
        rows(&i["timeline"], "lines"),
        |l| l["label"] == "retry_storm",
        "retry_storm line",
    );
    let active: Vec<f64> = rows(storm, "values").iter().map(n).collect();
    assert_eq!(
        active.iter().cloned().fold(0.0, f64::max),
        1.0,
        "{active:?}"
    );
    let step = n(&i["range"]["step"]);
    let buckets = active.iter().filter(|v| **v > 0.0).count() as f64;
    assert!(
        buckets * step >= 1560.0 && buckets * step <= 1560.0 + 2.0 * step,
        "active from T0+540 to T0+2100: {buckets} buckets of {step} s"
    );
    let finance = get(addr, "/api/insights", "&team=finance").await;
    assert_eq!(ids(&finance["items"]), ["f1", "f3"]);
    let storms = get(addr, "/api/insights", "&kind=retry_storm&team=finance").await;
    assert_eq!(ids(&storms["items"]), ["f1"]);
    assert_eq!(
        rows(&storms, "kinds").len(),
        5,
        "the pickers offer every kind"
    );

    let pay = get(addr, "/api/apis/pay", "").await;
    assert_eq!(ids(&pay["insights"]), ["f2", "f1", "f3"]);
    let billing = get(addr, "/api/apps/billing", "").await;
    assert_eq!(
        ids(&billing["insights"]),
        ["f1", "f3"],
        "its own finding, and the storm its retries are evidence of"
    );
    let shop = get(addr, "/api/apps/shop", "").await;
    assert_eq!(ids(&shop["insights"]), ["f2"]);
    assert_eq!(shop["insights"][0]["app_name"], "Shop");
}

// ------------------------------------------------------------------------------------------------------------------
// Headless Chromium

fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots")
}

/// Runs Debian's chromium headless on `url` with `extra` arguments; (stdout, stderr).
fn chromium(url: &str, extra: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-quic",
            "--no-first-run",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1440,1700",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The value of `attr` on the element carrying `marker` (e.g. `data-table="apis"`).
fn attr_near<'a>(dom: &'a str, marker: &str, attr: &str) -> Option<&'a str> {
    let at = dom.find(marker)?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..at + dom[at..].find('>')?];
    let v = tag.split(&format!("{attr}=\"")).nth(1)?;
    v.split('"').next()
}

/// Loads every page in headless Chromium: a screenshot each, then DOM checks on the rendered page.
fn browse(addr: SocketAddr, in_range: &[&Event]) {
    if Command::new("chromium").arg("--version").output().is_err() {
        let require = std::env::var("OBSERVER_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
        assert!(
            !require,
            "chromium is not installed and OBSERVER_REQUIRE_CHROMIUM=1"
        );
        println!("browser checks skipped: no chromium (cargo xtask test installs it)");
        return;
    }
    let dir = screenshots_dir();
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    // Page name, route, charts that must be drawn, (table, text it must hold).
    type Page<'a> = (&'a str, &'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);
    let pages: &[Page] = &[
        (
            "overview",
            "#/overview",
            &["consumption"],
            &[("apis", "Payments"), ("new-apps", "Bob's shop")],
        ),
        (
            "api",
            "#/api/pay",
            &["rate"],
            &[
                ("routes", "/v1/payments/{id}"),
                ("consumers", "revoked"),
                ("insights", "retry share"),
            ],
        ),
        (
            "application",
            "#/app/shop",
            &["compare"],
            &[
                ("calls", "Orders"),
                ("keys", "sh01"),
                ("errors", "503"),
                ("insights", "predecessor per min"),
            ],
        ),
        (
            "access",
            "#/access",
            &[],
            &[
                ("grants", "carol"),
                ("shared", "sh01"),
                ("shadow", "python3"),
                ("outside", "revoked"),
            ],
        ),
        (
            "insights",
            "#/insights",
            &["findings"],
            &[("insights", "python3"), ("insights", "retry share")],
        ),
        ("tail", "#/tail", &[], &[("tail", "Shop")]),
    ];
    for (name, hash, charts, tables) in pages {
        let url = format!("http://{addr}/?from={FROM}&to={TO}&refresh=0{hash}");
        let shot = dir.join(format!("{name}.png"));
        let (_, err) = chromium(&url, &[&format!("--screenshot={}", shot.display())]);
        assert!(
            shot.metadata().is_ok_and(|m| m.len() > 10_000),
            "{name}: no screenshot at {} ({err})",
            shot.display()
        );
        let (dom, err) = chromium(&url, &["--dump-dom"]);
        let console: Vec<&str> = err.lines().filter(|l| l.contains("CONSOLE")).collect();
        assert!(console.is_empty(), "{name}: console messages: {console:#?}");
        assert!(
            dom.contains("data-ready=\"1\""),
            "{name}: page did not finish rendering:\n{dom}"
        );
        assert!(
            !dom.contains("data-errors="),
            "{name}: script errors:\n{dom}"
        );
        for chart in *charts {
            let marker = format!("data-chart=\"{chart}\"");
            let nonempty: usize = attr_near(&dom, &marker, "data-nonempty")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name}: chart {chart} not drawn:\n{dom}"));
            let at = dom.find(&marker).unwrap();
            assert!(
                dom[at..].contains("<canvas"),
                "{name}: chart {chart} has no canvas"
            );
            assert!(
                nonempty > 0,
                "{name}: chart {chart} has no non-empty series"
            );
        }
        for (table, want) in *tables {
            let marker = format!("data-table=\"{table}\"");
            let at = dom
                .find(&marker)
                .unwrap_or_else(|| panic!("{name}: no table {table}:\n{dom}"));
            // The element carrying the marker (a table, or the findings' list) ends at its own closing tag.
            let tag_at = dom[..at].rfind('<').unwrap_or(at);
            let tag: String = dom[tag_at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            let end = dom[at..]
                .find(&format!("</{tag}>"))
                .map_or(dom.len(), |e| at + e);
            assert!(
                dom[at..end].contains(want),
                "{name}: table {table} lacks {want:?}:\n{}",
                &dom[at..end]
            );
        }
        if *name == "overview" {
            // The requests card shows the total, formatted.
            let total = in_range.len().to_string();
            let formatted = format!("{},{:03}", in_range.len() / 1000, in_range.len() % 1000);
            assert!(
                dom.contains(&format!(">{total}<")) || dom.contains(&format!(">{formatted}<")),
                "overview: total {total} not shown"
            );
        }
    }
}
