//! Findings in ClickHouse against the chdb dev server (see `common/mod.rs`): the findings writer's rows and
//! versions, `insights_latest`, and the fleet-wide runner (`observer insights run --once`) on a labelled scenario.
// Tests hold a process-wide lock across awaits on purpose: one dev server at a time.
#![allow(clippy::await_holding_lock)]
mod common;

use common::{apply, client, count, devserver_paths, serial, sink_config, DevServer};
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
    let Some((py, script)) =
        devserver_paths("finding_versions_are_stored_and_insights_latest_keeps_the_newest")
    else {
        return;
    };
    let _g = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = DevServer::start(&py, &script, &dir.path().join("ch"));
    let url = srv.url();
    apply(&url, None).await;

    let mut cfg = sink_config(&url, &dir.path().join("spool"));
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
        count(&url, "SELECT count() FROM observer.insights FINAL").await,
        4,
        "a, a v2, a v3 (twice, replaced), b"
    );
    let latest =
        list::rows(client(&url).query(&list::select("observer.insights_latest", "ORDER BY id")))
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
    let times: (i64, i64, i64) = client(&url)
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

    let Some((py, script)) =
        devserver_paths("fleet_runner_finds_the_scenarios_stored_in_clickhouse")
    else {
        return;
    };
    let _g = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = DevServer::start(&py, &script, &dir.path().join("ch"));
    let url = srv.url();
    apply(&url, None).await;

    // An hour of learning, then a window around each per-event (governance) scenario.
    let toml = dir.path().join("insights.toml");
    std::fs::write(&toml, "[general]\nlearning_hours = 1\n").expect("config");
    let cfg = Config::load(&toml).expect("config loads");
    let mut g = Generated::new(3);
    let governance: Vec<_> = g
        .labels
        .iter()
        .filter(|l| {
            l.kind
                .is_some_and(|k| k.per_event() && k != Kind::UndocumentedRoute)
        })
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
    write_registry(
        &client(&url).with_database("observer"),
        &from_registry(&g.registry, 1, Timestamp::now()),
    )
    .await
    .expect("registry rows");
    common::insert_events(&url, &dir.path().join("spool"), &events).await;

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_observer"))
        .args(["insights", "run", "--database=observer", "--once"])
        .arg(format!("--clickhouse-url={url}"))
        .arg(format!("--config={}", toml.display()))
        .arg(format!("--from={}", Timestamp(ORIGIN_US).to_rfc3339()))
        .arg("--page-rows=20000")
        .arg(format!(
            "--spool-dir={}",
            dir.path().join("fspool").display()
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
    let stored: Vec<(String, String, String, String)> = client(&url)
        .query("SELECT kind, api_id, app_id, source FROM observer.insights FINAL WHERE status = 'open'")
        .fetch_all()
        .await
        .expect("insights");
    assert!(stored.iter().all(|r| r.3 == "fleet"), "{stored:?}");
    let fleet: Seen = stored.into_iter().map(|r| (r.0, r.1, r.2)).collect();

    // The same engine on the same events, with the registry as the runner reads it.
    let registry =
        observer::insights::fleet::load_registry(&client(&url).with_database("observer"))
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
