//! Findings in ClickHouse against the chdb dev server (see `common/mod.rs`): the findings writer's rows and
//! versions, `insights_latest`, and the fleet-wide runner (`observer insights run --once`) on a labelled scenario.
// Tests hold a process-wide lock across awaits on purpose: one dev server at a time.
#![allow(clippy::await_holding_lock)]
mod common;

use common::{apply, client, count, devserver_paths, serial, sink_config, DevServer};
use observer::event::Timestamp;
use observer::insights::finding::{Finding, Kind, Severity, Status};
use observer::insights::list::Listed;
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
    let latest: Vec<Listed> = client(&url)
        .query("SELECT ?fields FROM observer.insights_latest ORDER BY id")
        .fetch_all()
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
    let ev: serde_json::Value = serde_json::from_str(&l.evidence).expect("evidence is JSON");
    assert_eq!(ev["ratio"], 3.5);
    assert_eq!(ev["baseline_per_min"], 180);
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
