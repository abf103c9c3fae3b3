//! Findings in ClickHouse against the chdb dev server (see `common/mod.rs`): the findings writer's rows and
//! versions, `insights_latest`, and the fleet-wide runner (`observer insights run --once`) on a labelled scenario.
// Tests hold a process-wide lock across awaits on purpose: one dev server at a time.
#![allow(clippy::await_holding_lock)]
mod common;

use common::{apply, client, count, dev_fixture, sink_config};
use observer::event::Timestamp;
use observer::insights::finding::{Finding, Kind, Severity, Status};
use observer::insights::list;
use observer::sink::clickhouse::insights_rows::FindingsWriter;

fn finding(id: &str, version: u32, status: Status, kind: Kind, at_s: i64) -> Finding {
    let mut evidence = serde_json::Map::new();
    evidence.insert("ratio".into(), (version as f64 + 0.5).into());
    evidence.insert("baseline_per_min".into(), 180.into());
    Finding {
        id: id.into(),
        version,
        status,
        kind,
        severity: if version > 1 {
            Severity::Critical
        } else {
            Severity::Warning
        },
        api_id: "payments-api".into(),
        app_id: "checkout-v2".into(),
        key_id: String::new(),
        key_fingerprint: String::new(),
        workload: String::new(),
        route: String::new(),
        team: "payments".into(),
        detected_at: Timestamp(1_772_443_800_000_000 + at_s * 1_000_000),
        first_seen: Timestamp(1_772_443_800_000_000),
        last_seen: Timestamp(1_772_443_800_000_000 + at_s * 1_000_000),
        explanation: format!("checkout-v2 version {version}"),
        evidence,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_versions_are_stored_and_insights_latest_keeps_the_newest() {
    let Some(fx) = dev_fixture("finding_versions_are_stored_and_insights_latest_keeps_the_newest")
    else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;

    let mut cfg = sink_config(url, &fx.dir.path().join("spool"));
    cfg.database = "observer".into();
    let (writer, task) = FindingsWriter::start(cfg, "agent:node-1".into())
        .await
        .expect("writer");
    let a = "00000000000000aa";
    let b = "00000000000000bb";
    writer.offer(&[
        finding(a, 1, Status::Open, Kind::NewAppOutpacesPredecessor, 0),
        finding(b, 1, Status::Open, Kind::RetryStorm, 10),
    ]);
    writer.offer(&[finding(
        a,
        2,
        Status::Update,
        Kind::NewAppOutpacesPredecessor,
        60,
    )]);
    // The same version again (a replay after a restart) is one version in the table.
    writer.offer(&[
        finding(a, 3, Status::Closed, Kind::NewAppOutpacesPredecessor, 120),
        finding(a, 3, Status::Closed, Kind::NewAppOutpacesPredecessor, 120),
    ]);
    let probe = writer.stats();
    drop(writer);
    task.await.expect("writer task");
    assert_eq!(probe.written(), 5, "rows inserted");
    assert_eq!(probe.dropped(), 0);

    assert_eq!(
        count(url, "SELECT count() FROM observer.insights FINAL").await,
        4,
        "a, a v2, a v3 (twice, replaced), b"
    );
    let latest =
        list::rows(client(url).query(&list::select("observer.insights_latest", "ORDER BY id")))
            .await
            .expect("insights_latest");
    assert_eq!(latest.len(), 2, "{latest:?}");
    let l = &latest[0];
    assert_eq!(
        (
            l.id.as_str(),
            l.version,
            l.status.as_str(),
            l.severity.as_str()
        ),
        (a, 3, "closed", "critical")
    );
    assert_eq!(l.subject, "app checkout-v2 on payments-api");
    assert_eq!(
        l.title,
        "New application outpaces its predecessor: app checkout-v2 on payments-api (closed)"
    );
    assert_eq!(l.evidence["ratio"], 3.5, "evidence is a JSON object");
    assert_eq!(l.evidence["baseline_per_min"], 180);
    let f = finding(a, 3, Status::Closed, Kind::NewAppOutpacesPredecessor, 120);
    assert_eq!(
        (l.ts, l.first_seen, l.last_seen),
        (
            f.detected_at.0 as f64 / 1e6,
            f.first_seen.0 as f64 / 1e6,
            f.last_seen.0 as f64 / 1e6
        )
    );
    assert_eq!(l.source, "agent:node-1");
    assert_eq!(
        (
            latest[1].id.as_str(),
            latest[1].version,
            latest[1].status.as_str()
        ),
        (b, 1, "open")
    );
    let times: (i64, i64, i64) = client(url)
        .query(&format!(
            "SELECT toUnixTimestamp64Micro(ts), toUnixTimestamp64Micro(first_seen), \
             toUnixTimestamp64Micro(last_seen) FROM observer.insights_latest WHERE id = '{a}'"
        ))
        .fetch_one()
        .await
        .expect("times");
    let f = finding(a, 3, Status::Closed, Kind::NewAppOutpacesPredecessor, 120);
    assert_eq!(times, (f.detected_at.0, f.first_seen.0, f.last_seen.0));
}

/// `observer insights run --once` (the Helm chart's arguments) on labelled scenario traffic stored by the real sink:
/// the governance scenarios are found, written with source `fleet`, and they are the findings the same engine
/// raises on the same events read directly (one engine, the same findings for the same traffic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_runner_finds_the_scenarios_stored_in_clickhouse() {
    use observer::insights::scenarios::{Generated, MIN_US, ORIGIN_US};
    use observer::insights::{Config, Engine, Input};
    use observer::sink::clickhouse::registry_rows::from_registry;
    use observer::sink::clickhouse::write_registry;
    use std::collections::BTreeSet;

    let Some(fx) = dev_fixture("fleet_runner_finds_the_scenarios_stored_in_clickhouse") else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;

    // An hour of learning, then a window around each per-event (governance) scenario.
    let toml = fx.dir.path().join("insights.toml");
    std::fs::write(&toml, "[general]\nlearning_hours = 1\n").expect("config");
    let cfg = Config::load(&toml).expect("config loads");
    let mut g = Generated::new(3);
    let governance: Vec<_> = g
        .labels
        .iter()
        .filter(|l| l.kind.is_some_and(|k| k.per_event()))
        .cloned()
        .collect();
    assert!(governance.len() >= 3, "{:?}", g.labels);
    let keep = |t: i64| {
        t < ORIGIN_US + 70 * MIN_US
            || governance
                .iter()
                .any(|l| t >= l.start.0 - 5 * MIN_US && t < l.start.0 + 5 * MIN_US)
    };
    let mut events = Vec::new();
    g.for_each_event(|e| {
        if keep(e.ts.0) {
            events.push(e.clone());
        }
    });
    events.sort_by_key(|e| e.ts);
    // Every team's alert_webhook is a local receiver: the runner notifies as the agent does.
    let hooks = WebhookReceiver::start();
    let mut registry = g.registry.clone();
    for t in &mut registry.teams {
        t.alert_webhook = format!("{}/{}", hooks.url, t.id);
    }
    write_registry(
        &client(url).with_database("observer"),
        &from_registry(&registry, 1, Timestamp::now()),
    )
    .await
    .expect("registry rows");
    common::insert_events(url, &fx.dir.path().join("spool"), &events).await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_observer"))
        .args(["insights", "run", "--database=observer", "--once"])
        .arg(format!("--clickhouse-url={url}"))
        .arg(format!("--config={}", toml.display()))
        .arg(format!("--from={}", Timestamp(ORIGIN_US).to_rfc3339()))
        .arg("--page-rows=20000")
        .arg(format!(
            "--spool-dir={}",
            fx.dir.path().join("fspool").display()
        ))
        .env("RUST_LOG", "info")
        .output()
        .expect("observer insights run");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");

    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_observer"))
        .args(["insights", "list", "--since=5000d", "--json"])
        .arg(format!("--clickhouse-url={url}"))
        .output()
        .expect("observer insights list");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(!lines.is_empty());
    assert!(lines
        .iter()
        .all(|l| l["source"] == "fleet" && l["evidence"].is_object()));
    assert!(
        lines
            .windows(2)
            .all(|w| w[0]["ts"].as_str() >= w[1]["ts"].as_str()),
        "newest first"
    );

    type Seen = BTreeSet<(String, String, String)>;
    let stored: Vec<(String, String, String, String)> = client(url)
        .query("SELECT kind, api_id, app_id, source FROM observer.insights FINAL WHERE status = 'open'")
        .fetch_all()
        .await
        .expect("insights");
    assert!(stored.iter().all(|r| r.3 == "fleet"), "{stored:?}");
    let fleet: Seen = stored.into_iter().map(|r| (r.0, r.1, r.2)).collect();

    // The same engine on the same events, with the registry as the runner reads it.
    let registry = observer::insights::fleet::load_registry(&client(url).with_database("observer"))
        .await
        .expect("registry from ClickHouse");
    let mut engine = Engine::new(cfg, registry);
    for e in &events {
        engine.ingest(&Input::from_event(e));
    }
    let mut versions = Vec::new();
    engine.advance(Timestamp(events.last().expect("events").ts.0 + MIN_US));
    engine.drain(&mut versions);
    let direct: Seen = versions
        .iter()
        .filter(|f| f.status == Status::Open)
        .map(|f| {
            (
                f.kind.as_str().to_string(),
                f.api_id.clone(),
                f.app_id.clone(),
            )
        })
        .collect();
    assert_eq!(
        fleet, direct,
        "fleet runner vs. the engine on the same events"
    );
    // Each new finding was POSTed to its team's webhook (the runner waits for its deliveries before exiting).
    let posted: Seen = hooks
        .bodies()
        .iter()
        .filter(|(_, b)| b["reason"] == "new")
        .map(|(path, b)| {
            let f = &b["finding"];
            assert_eq!(
                path,
                &format!("/{}", f["team"].as_str().unwrap_or_default())
            );
            (
                f["kind"].as_str().unwrap_or_default().to_string(),
                f["api_id"].as_str().unwrap_or_default().to_string(),
                f["app_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let with_team: Seen = versions
        .iter()
        .filter(|f| f.status == Status::Open && !f.team.is_empty())
        .map(|f| {
            (
                f.kind.as_str().to_string(),
                f.api_id.clone(),
                f.app_id.clone(),
            )
        })
        .collect();
    assert!(!posted.is_empty());
    assert_eq!(
        posted, with_team,
        "webhook deliveries vs. new findings with a team"
    );
    for l in &governance {
        let kind = l.kind.expect("labelled").as_str();
        assert!(
            fleet.iter().any(|(k, api, _)| k == kind && api == l.api_id),
            "scenario {} ({kind} on {}) not found; fleet found {fleet:?}",
            l.scenario,
            l.api_id
        );
    }
}

/// Registry rows for the tests below: team `pay-team` owns API `pay` (keyed unless `anonymous`), applications
/// `shop` (team web) and `rogue` (team ops), and `grants`: (fingerprint, key id, granted days ago) on `pay`.
fn small_registry(
    anonymous: bool,
    grants: &[(&str, &str, i64)],
) -> observer::sink::clickhouse::registry_rows::RegistryRows {
    use observer::sink::clickhouse::registry_rows::{
        ApiRow, ApplicationRow, KeyGrantRow, RegistryRows, TeamRow,
    };
    let now = Timestamp::now();
    let team = |id: &str| TeamRow {
        team: id.into(),
        name: id.into(),
        version: 1,
        loaded_at: now,
        ..Default::default()
    };
    let app = |id: &str, team: &str| ApplicationRow {
        app_id: id.into(),
        name: id.into(),
        team: team.into(),
        version: 1,
        loaded_at: now,
        ..Default::default()
    };
    RegistryRows {
        teams: vec![team("pay-team"), team("web"), team("ops")],
        apis: vec![ApiRow {
            api_id: "pay".into(),
            name: "Payments API".into(),
            owner: "pay-team".into(),
            auth: if anonymous { "anonymous" } else { "api_key" }.into(),
            hosts: vec!["pay.example".into()],
            version: 1,
            loaded_at: now,
            ..Default::default()
        }],
        applications: vec![app("shop", "web"), app("rogue", "ops")],
        key_grants: grants
            .iter()
            .map(|(fp, id, days)| KeyGrantRow {
                key_fingerprint: fp.to_string(),
                api_id: "pay".into(),
                key_id: id.to_string(),
                app_id: "shop".into(),
                granted_by: "alice".into(),
                valid_from: Some(Timestamp(now.0 - days * 86_400_000_000)),
                version: 1,
                loaded_at: now,
                ..Default::default()
            })
            .collect(),
    }
}

/// A call of `app` to `pay` at `ts`, with `key` (a fingerprint) when not empty.
fn call(ts: Timestamp, app: &str, key: &str) -> observer::event::Event {
    use observer::event::{AttributedBy, Event, KeyState};
    Event {
        ts,
        method: "GET".into(),
        host: "pay.example".into(),
        path: "/v1/pay".into(),
        route: "/v1/pay".into(),
        status: 200,
        api_id: "pay".into(),
        app_id: app.into(),
        client_comm: app.into(),
        key_fingerprint: key.into(),
        key_state: if key.is_empty() {
            KeyState::None
        } else {
            KeyState::Valid
        },
        attributed_by: if key.is_empty() {
            AttributedBy::Workload
        } else {
            AttributedBy::Key
        },
        ..Event::default()
    }
}

/// Runs `observer insights run --once` with `args` and the config `toml`; panics with its log when it fails.
fn run_fleet(url: &str, dir: &std::path::Path, toml: &str, args: &[String]) {
    let config = dir.join("fleet.toml");
    std::fs::write(&config, toml).expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_observer"))
        .args(["insights", "run", "--database=observer", "--once"])
        .arg(format!("--clickhouse-url={url}"))
        .arg(format!("--config={}", config.display()))
        .arg(format!("--spool-dir={}", dir.join("fspool").display()))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("observer insights run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Findings the fleet runner stored: (kind, app_id, key_id, evidence) of each finding's newest version.
async fn stored(url: &str) -> Vec<(String, String, String, serde_json::Value)> {
    let rows = list::rows(client(url).query(&list::select(
        "observer.insights_latest",
        "ORDER BY kind, app_id, key_id",
    )))
    .await
    .expect("insights_latest");
    rows.into_iter()
        .map(|r| {
            (
                r.kind,
                r.app_id,
                r.key_id,
                serde_json::Value::Object(r.evidence),
            )
        })
        .collect()
}

/// `unused_grant` from ClickHouse alone: grants in force from `key_grants_in_force`, last calls from `key_use_1d`
/// (calls older than the runner's window, which it never reads). A grant unused for `unused_grant_days` is found
/// with its last call; a grant used within them, or granted more recently, is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_runner_finds_unused_grants_from_key_use_history() {
    use observer::sink::clickhouse::write_registry;
    let Some(fx) = dev_fixture("fleet_runner_finds_unused_grants_from_key_use_history") else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;

    const DAY: i64 = 86_400_000_000;
    let now = Timestamp::now();
    // fp-old: last call 30 days ago; fp-used: 5 days ago; fp-never: no call, granted 60 days ago; fp-new: no call,
    // granted 10 days ago (not yet judged).
    let registry = small_registry(
        false,
        &[
            ("fp-old", "shop-old", 60),
            ("fp-used", "shop-used", 60),
            ("fp-never", "shop-never", 60),
            ("fp-new", "shop-new", 10),
        ],
    );
    write_registry(&client(url).with_database("observer"), &registry)
        .await
        .expect("registry rows");
    let old_call = Timestamp(now.0 - 30 * DAY);
    let events = vec![
        call(Timestamp(old_call.0 - 3_600_000_000), "shop", "fp-old"),
        call(old_call, "shop", "fp-old"),
        call(Timestamp(now.0 - 5 * DAY), "shop", "fp-used"),
    ];
    common::insert_events(url, &fx.dir.path().join("spool"), &events).await;
    assert_eq!(
        count(url, "SELECT sum(calls) FROM observer.key_use_1d").await,
        3
    );

    run_fleet(
        url,
        fx.dir.path(),
        "[governance]\nunused_grant_days = 20\n",
        &[format!(
            "--from={}",
            Timestamp(now.0 - 300_000_000).to_rfc3339()
        )],
    );
    let found = stored(url).await;
    let unused: Vec<_> = found.iter().filter(|f| f.0 == "unused_grant").collect();
    let keys: Vec<&str> = unused.iter().map(|f| f.2.as_str()).collect();
    assert_eq!(keys, vec!["shop-never", "shop-old"], "{found:?}");
    let old = unused.iter().find(|f| f.2 == "shop-old").expect("shop-old");
    assert_eq!(old.1, "shop");
    let last = old.3["last_used"].as_str().expect("last_used");
    let last = observer::insights::input::parse_ts(last).expect("a time");
    assert_eq!(last, old_call, "the last call, from key_use_1d");
    let never = unused
        .iter()
        .find(|f| f.2 == "shop-never")
        .expect("shop-never");
    assert!(never.3["last_used"].is_null(), "{:?}", never.3);
}

/// The fleet runner's warm-up from the 1h rollup: two days of `shop` calling `pay`, stored as events, reach the
/// runner only through `http_requests_1h`. Without warm-up the runner is still learning when the window starts and
/// raises nothing; with it, `shop` is a known consumer (no finding) and `rogue`, which never called before, is a
/// new consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_runner_warm_up_from_the_hourly_rollup_decides_what_is_new() {
    use observer::sink::clickhouse::write_registry;
    let Some(fx) = dev_fixture("fleet_runner_warm_up_from_the_hourly_rollup_decides_what_is_new")
    else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;

    const MIN: i64 = 60_000_000;
    let now = Timestamp::now();
    write_registry(
        &client(url).with_database("observer"),
        &small_registry(true, &[]),
    )
    .await
    .expect("registry rows");
    // History: two days, three calls an hour, ending two hours ago (whole hours in the rollup).
    let hour_start = now.0 - now.0.rem_euclid(60 * MIN) - 120 * MIN;
    let mut events: Vec<_> = (0..48 * 3)
        .map(|i| call(Timestamp(hour_start - i * 20 * MIN), "shop", ""))
        .collect();
    // The window: shop as usual, and rogue for the first time.
    let from = Timestamp(now.0 - 15 * MIN);
    for i in 0..5 {
        events.push(call(Timestamp(from.0 + (i + 1) * MIN), "shop", ""));
    }
    for i in 0..3 {
        events.push(call(
            Timestamp(from.0 + (i + 2) * MIN + 7_000_000),
            "rogue",
            "",
        ));
    }
    events.sort_by_key(|e| e.ts);
    common::insert_events(url, &fx.dir.path().join("spool"), &events).await;
    assert_eq!(
        count(
            url,
            "SELECT sum(requests) FROM observer.http_requests_1h WHERE app_id = 'shop'"
        )
        .await,
        48 * 3 + 5
    );
    let toml = "[general]\nlearning_hours = 24\n";
    let window = [
        format!("--from={}", from.to_rfc3339()),
        "--lag=0s".to_string(),
    ];

    let mut args = window.to_vec();
    args.push("--warmup-days=0".into());
    run_fleet(url, fx.dir.path(), toml, &args);
    assert_eq!(
        stored(url).await,
        vec![],
        "without history the runner is learning"
    );

    let mut args = window.to_vec();
    args.push("--warmup-days=3".into());
    run_fleet(url, fx.dir.path(), toml, &args);
    let found = stored(url).await;
    let new: Vec<&str> = found
        .iter()
        .filter(|f| f.0 == "new_consumer")
        .map(|f| f.1.as_str())
        .collect();
    assert_eq!(new, vec!["rogue"], "{found:?}");
}

/// A local HTTP endpoint recording each POST (path, JSON body) and answering 200.
struct WebhookReceiver {
    url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
}

impl WebhookReceiver {
    fn start() -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                let mut start = String::new();
                if r.read_line(&mut start).is_err() {
                    continue;
                }
                let path = start.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_ok() {
                    if let Ok(v) = serde_json::from_slice(&body) {
                        sink.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((path, v));
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        WebhookReceiver { url, got }
    }

    fn bodies(&self) -> Vec<(String, serde_json::Value)> {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
