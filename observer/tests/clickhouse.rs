//! Integration tests of the ClickHouse schema and sink against the chdb dev server (`xtask/clickhouse/devserver.py`).
//!
//! See `common/mod.rs` for how the server is found (`OBSERVER_CLICKHOUSE_PYTHON`, `OBSERVER_CLICKHOUSE_DEVSERVER`,
//! `OBSERVER_REQUIRE_CLICKHOUSE`). Every test starts its own server on a free port with a temporary data directory;
//! tests run one at a time (the engine is memory-hungry).
//!
// Tests hold a process-wide lock across awaits on purpose: one dev server at a time.
#![allow(clippy::await_holding_lock)]
mod common;
#[path = "fixtures/realistic.rs"]
mod realistic;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{apply, client, count, dev_fixture, insert_events, sink_config, wait_for};
use observer::event::{AttributedBy, Event, KeyState, OriginBy, Side, Timestamp};
use observer::sink;
use observer::sink::clickhouse::migrations;
use observer::sink::clickhouse::registry_rows::{
    ApiRow, ApplicationRow, KeyGrantRow, RegistryRows, TeamRow,
};
use observer::sink::clickhouse::rowbinary::{
    column_list, encode_event, from_ipv6, rbwnat_header, to_ipv6,
};
use observer::sink::clickhouse::schema::{self, Retention, SchemaConfig, SchemaError};
use observer::sink::clickhouse::spool::{BatchId, Spool, SpooledBatch};
use observer::sink::clickhouse::{write_registry, TABLE};
use realistic::{realistic, IdFormat, Lcg, Traffic};

// ------------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_empty_reapply_and_newer_version() {
    let Some(fx) = dev_fixture("migrations_from_empty_reapply_and_newer_version") else {
        return;
    };
    let url = &fx.url;

    let r = apply(url, None).await;
    assert_eq!(r.from, None, "empty server has no schema");
    let all: Vec<u32> = (1..=migrations::latest_version()).collect();
    assert_eq!(r.applied, all, "{r}");

    let snapshot = || async {
        let c = client(url);
        let tables: Vec<(String, String)> = c
            .query("SELECT name, create_table_query FROM system.tables WHERE database = 'observer' ORDER BY name")
            .fetch_all()
            .await
            .expect("list tables");
        let migrations = count(url, "SELECT count() FROM observer.schema_migrations").await;
        (tables, migrations)
    };
    let before = snapshot().await;
    assert!(
        before.0.iter().any(|(n, _)| n == "http_requests_1h_mv"),
        "{:?}",
        before.0
    );
    assert_eq!(before.1, u64::from(migrations::latest_version()));

    let again = apply(url, None).await;
    assert!(
        again.applied.is_empty(),
        "re-apply must do nothing: {again}"
    );
    assert_eq!(snapshot().await, before, "re-applying changed the schema");

    client(url)
        .query("INSERT INTO observer.schema_migrations (version, name, observer_version) VALUES (99, 'future', '9.9')")
        .execute()
        .await
        .expect("record a future version");
    let cfg = SchemaConfig::new("observer", None, Retention::days(30)).expect("config");
    match schema::apply(&client(url), url, &cfg, None).await {
        Err(e @ SchemaError::NewerThanBinary { found: 99, .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("99") && msg.contains("observer"), "{msg}");
        }
        other => panic!("expected NewerThanBinary, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_from_previous_version_keeps_data() {
    let Some(fx) = dev_fixture("upgrade_from_previous_version_keeps_data") else {
        return;
    };
    let url = &fx.url;

    let prev = migrations::latest_version() - 1;
    let r = apply(url, Some(prev)).await;
    assert_eq!(r.to, prev);
    // Rows as the previous version's agents wrote them: that version's columns only (this binary's events may
    // carry columns the newest migration adds).
    client(url)
        .query(
            "INSERT INTO observer.http_requests (ts, method, path, status) \
             SELECT now64(6) - number, 'GET', concat('/v1/items/', toString(number)), 200 FROM numbers(500)",
        )
        .execute()
        .await
        .expect("insert rows of the previous version");

    let r = apply(url, None).await;
    assert_eq!(r.from, Some(prev));
    assert_eq!(r.applied, vec![migrations::latest_version()], "{r}");
    assert_eq!(
        count(url, "SELECT count() FROM observer.http_requests").await,
        500
    );
    // The codecs of versions 13 and 17 and 13's compression blocks, on the table that already held rows; the rows
    // read back after a merge rewrote them with the new codecs.
    assert_eq!(
        count(
            url,
            "SELECT count() FROM system.columns WHERE database = 'observer' AND table = 'http_requests' \
             AND ((name = 'conn_id' AND compression_codec = 'CODEC(ZSTD(3))') \
               OR (name = 'ts' AND compression_codec = 'CODEC(Delta(8), T64, ZSTD(1))') \
               OR (name = 'method' AND compression_codec = 'CODEC(ZSTD(1))'))"
        )
        .await,
        3,
        "codecs of versions 13 and 17"
    );
    client(url)
        .query("OPTIMIZE TABLE observer.http_requests FINAL")
        .execute()
        .await
        .expect("merge with the new codecs");
    assert_eq!(
        count(
            url,
            "SELECT count() FROM observer.http_requests WHERE path LIKE '/v1/items/%' AND status = 200"
        )
        .await,
        500
    );
    assert_eq!(
        count(
            url,
            "SELECT count() FROM system.tables WHERE database = 'observer' AND name = 'http_requests' \
             AND create_table_query LIKE '%min_compress_block_size = 1048576%'"
        )
        .await,
        1,
        "compression blocks of version 13"
    );
    assert_eq!(
        count(
            url,
            "SELECT count() FROM system.dictionaries WHERE database = 'observer'"
        )
        .await,
        5,
        "the upgrade adds key_grants_at_dict to the registry's four dictionaries"
    );
    assert_eq!(
        schema::current_version(&client(url), url, "observer")
            .await
            .expect("version"),
        Some(migrations::latest_version())
    );
}

fn edge_events() -> Vec<Event> {
    let full = Event {
        ts: Timestamp(1_767_225_599_999_999),
        duration_us: u64::MAX,
        side: Side::Both,
        method: "PROPFIND".into(),
        host: "пример.испытание".into(),
        path: "/ünïcödé/路径/😀".into(),
        query_keys: vec!["a".into(), "".into(), "ключ".into()],
        status: u16::MAX,
        req_bytes: u64::MAX,
        resp_bytes: u64::MAX - 1,
        src_ip: "192.0.2.1".parse().expect("ip"),
        src_port: u16::MAX,
        dst_ip: "2001:db8::ff00:42:8329".parse().expect("ip"),
        dst_port: 1,
        client_pid: u32::MAX,
        client_comm: "curl".into(),
        client_cgroup: "/sys/fs/cgroup/a b/c".into(),
        server_pid: 1,
        server_comm: "nginx: worker".into(),
        server_cgroup: "/".into(),
        user_agent: "Mozilla/5.0 \"quoted\"\ttab\nnewline".into(),
        request_id: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        truncated: true,
        conn_id: u64::MAX,
        incomplete: true,
        framing_anomaly: vec!["cl_and_te".into(), "follows_anomaly".into()],
        api_id: "api-1".into(),
        api_name: "Payments API".into(),
        api_owner: "team-pay".into(),
        route: "/v1/{id}".into(),
        app_id: "app-1".into(),
        app_name: "Shop".into(),
        app_team: "web".into(),
        line_of_business: "retail".into(),
        key_fingerprint: "sha256:abcdef".into(),
        key_suffix: "x9z1".into(),
        key_state: KeyState::NotGrantedForApi,
        attributed_by: AttributedBy::Workload,
        client_pod: "checkout-7d9f8b6c5d-x2x9z".into(),
        client_namespace: "shop".into(),
        client_workload: "Deployment/checkout".into(),
        client_labels: vec!["app=checkout".into(), "team=payments".into()],
        server_pod: "db-0".into(),
        server_namespace: "shop".into(),
        server_workload: "StatefulSet/db".into(),
        server_labels: vec!["app=db".into()],
        request_hash: u64::MAX,
        origin_app_id: "partner-portal".into(),
        origin_key_fingerprint: "ef".repeat(32).into(),
        origin_api_id: "payments-api".into(),
        parent_conn_id: 1 << 62,
        parent_ts: Timestamp(1_767_225_599_998_499),
        hop: 2,
        origin_by: OriginBy::Trace,
        trace_id_hash: u64::MAX,
        request_id_hash: 1 << 63,
    };
    // Retention TTLs drop rows older than the retention at insert, so edge rows carry recent times.
    let empty = Event {
        conn_id: 0,
        ts: Timestamp(1_760_000_000_000_000),
        ..Event::default()
    };
    let mut out = vec![full, empty];
    for (i, (ks, ab, side)) in [
        (KeyState::Valid, AttributedBy::Key, Side::Client),
        (KeyState::Unknown, AttributedBy::None, Side::Server),
        (KeyState::Expired, AttributedBy::Key, Side::Both),
        (KeyState::Revoked, AttributedBy::Key, Side::Client),
        (KeyState::NotYetValid, AttributedBy::Workload, Side::Server),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(Event {
            conn_id: i as u64 + 1,
            key_state: ks,
            attributed_by: ab,
            side,
            src_ip: "::ffff:127.0.0.1"
                .parse::<std::net::Ipv6Addr>()
                .expect("ip")
                .into(),
            dst_ip: "::".parse().expect("ip"),
            ts: Timestamp(1_760_000_000_000_000 + i as i64),
            ..Event::default()
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_every_column_with_edge_values() {
    let Some(fx) = dev_fixture("round_trip_every_column_with_edge_values") else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;

    let events = edge_events();
    insert_events(url, &fx.dir.path().join("spool"), &events).await;

    let c = client(url).with_database("observer");
    let bytes = c
        .query(&format!(
            "SELECT {} FROM http_requests ORDER BY conn_id",
            column_list()
        ))
        .fetch_bytes("RowBinary")
        .expect("query")
        .collect()
        .await
        .expect("read back as RowBinary");
    let got = common::rowbinary::decode_events(&bytes);
    let mut want = events.clone();
    want.sort_by_key(|e| e.conn_id);
    // IPv4-mapped IPv6 reads back as IPv4, by design.
    for e in want.iter_mut() {
        e.src_ip = from_ipv6(to_ipv6(e.src_ip));
    }
    assert_eq!(
        got.iter().map(|e| e.conn_id).collect::<Vec<_>>(),
        want.iter().map(|e| e.conn_id).collect::<Vec<_>>()
    );
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "row differs after round trip");
    }
    let text: String = c
        .query("SELECT concat(IPv6NumToString(src_ip), ' ', toString(key_state), ' ', toString(ts)) FROM http_requests WHERE conn_id = ?")
        .bind(u64::MAX)
        .fetch_one()
        .await
        .expect("text view");
    assert_eq!(
        text,
        "::ffff:192.0.2.1 not_granted_for_api 2025-12-31 23:59:59.999999"
    );

    // The two encoders generated from the event table agree: the same events as NDJSON (JSONEachRow, parsed by
    // the server) are the same rows as the sink's RowBinary.
    let mut body = Vec::new();
    for e in &events {
        observer::sink::ndjson::write_event(e, &mut body);
        body.push(b'\n');
    }
    let mut ins = c
        .insert_formatted_with("INSERT INTO http_requests FORMAT JSONEachRow")
        .with_setting("date_time_input_format", "best_effort");
    ins.send(body.into()).await.expect("send NDJSON");
    ins.end().await.expect("insert NDJSON");
    let distinct = count(
        url,
        "SELECT count() FROM (SELECT DISTINCT * FROM observer.http_requests)",
    )
    .await;
    assert_eq!(
        distinct,
        events.len() as u64,
        "NDJSON and RowBinary encodings differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_rows_and_dictionaries() {
    let Some(fx) = dev_fixture("registry_rows_and_dictionaries") else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;
    let c = client(url).with_database("observer");
    let v1 = RegistryRows {
        apis: vec![ApiRow {
            api_id: "pay".into(),
            name: "Payments".into(),
            owner: "team-pay".into(),
            line_of_business: "retail".into(),
            auth: "api_key".into(),
            hosts: vec!["pay.example.com".into()],
            base_path: "/v1".into(),
            routes: Vec::new(),
            version: 1,
            loaded_at: Timestamp(1_000_000),
            deleted: false,
        }],
        applications: vec![ApplicationRow {
            app_id: "shop".into(),
            name: "Shop".into(),
            team: "web".into(),
            line_of_business: "retail".into(),
            created_by: "alice".into(),
            created_at: Some(Timestamp(500_000)),
            predecessor: "old-shop".into(),
            workloads: vec!["/kubepods/*shop*".into()],
            version: 1,
            loaded_at: Timestamp(1_000_000),
            deleted: false,
        }],
        key_grants: vec![KeyGrantRow {
            key_fingerprint: "fp1".into(),
            api_id: "pay".into(),
            grant_seq: 0,
            key_id: "shop-prod".into(),
            key_suffix: "ab12".into(),
            app_id: "shop".into(),
            granted_by: "alice".into(),
            valid_from: Some(Timestamp(0)),
            valid_until: None,
            revoked_at: None,
            revoked_by: String::new(),
            note: "CHG-1".into(),
            version: 1,
            loaded_at: Timestamp(1_000_000),
            deleted: false,
        }],
        teams: vec![TeamRow {
            team: "web".into(),
            name: "Web".into(),
            line_of_business: "retail".into(),
            alert_contact: "alice".into(),
            alert_webhook: String::new(),
            version: 1,
            loaded_at: Timestamp(1_000_000),
            deleted: false,
        }],
    };
    write_registry(&c, &v1)
        .await
        .unwrap_or_else(|e| panic!("write v1: {e}"));
    // Version 2: the API is renamed and the grant revoked; history keeps both versions.
    let mut v2 = v1.clone();
    v2.apis[0].name = "Payments v2".into();
    v2.key_grants[0].revoked_at = Some(Timestamp(2_000_000));
    v2.key_grants[0].revoked_by = "bob".into();
    for r in &mut v2.apis {
        r.version = 2;
    }
    for r in &mut v2.key_grants {
        r.version = 2;
    }
    v2.applications.clear();
    v2.teams.clear();
    write_registry(&c, &v2)
        .await
        .unwrap_or_else(|e| panic!("write v2: {e}"));
    // Writing the same version again replaces instead of duplicating (after merges / FINAL).
    write_registry(&c, &v2)
        .await
        .unwrap_or_else(|e| panic!("rewrite v2: {e}"));

    assert_eq!(
        count(url, "SELECT count() FROM observer.apis FINAL").await,
        2,
        "dated history kept"
    );
    let name: String = c
        .query("SELECT dictGet('observer.apis_dict', 'name', tuple('pay'))")
        .fetch_one()
        .await
        .unwrap_or_else(|e| panic!("dictGet apis: {e}"));
    assert_eq!(name, "Payments v2");
    let revoked: Option<i64> = c
        .query("SELECT toUnixTimestamp64Micro(dictGet('observer.key_grants_dict', 'revoked_at', tuple('fp1', 'pay')))")
        .fetch_one()
        .await
        .unwrap_or_else(|e| panic!("dictGet key_grants: {e}"));
    assert_eq!(revoked, Some(2_000_000));
    let revoked_by: String = c
        .query("SELECT dictGet('observer.key_grants_dict', 'revoked_by', tuple('fp1', 'pay'))")
        .fetch_one()
        .await
        .unwrap_or_else(|e| panic!("dictGet key_grants: {e}"));
    assert_eq!(revoked_by, "bob");

    // Version 3: the key is granted the API again, a second dated entry; the first stays in the history and the
    // dictionary answers with the current (newest) entry.
    let mut regrant = v2.key_grants[0].clone();
    regrant.grant_seq = 1;
    regrant.granted_by = "carol".into();
    regrant.valid_from = Some(Timestamp(3_000_000));
    regrant.revoked_at = None;
    regrant.revoked_by = String::new();
    regrant.note = "CHG-2 re-enabled".into();
    let mut v3g = RegistryRows {
        key_grants: vec![v2.key_grants[0].clone(), regrant],
        ..RegistryRows::default()
    };
    for r in &mut v3g.key_grants {
        r.version = 3;
    }
    write_registry(&c, &v3g)
        .await
        .unwrap_or_else(|e| panic!("write v3: {e}"));
    c.query("SYSTEM RELOAD DICTIONARY observer.key_grants_dict")
        .execute()
        .await
        .unwrap_or_else(|e| panic!("reload dictionary: {e}"));
    let current: (String, Option<i64>, String) = c
        .query(
            "SELECT dictGet('observer.key_grants_dict', 'granted_by', tuple('fp1', 'pay')), \
             toUnixTimestamp64Micro(dictGet('observer.key_grants_dict', 'revoked_at', tuple('fp1', 'pay'))), \
             dictGet('observer.key_grants_dict', 'note', tuple('fp1', 'pay'))",
        )
        .fetch_one()
        .await
        .unwrap_or_else(|e| panic!("dictGet current grant: {e}"));
    assert_eq!(
        current,
        ("carol".to_string(), None, "CHG-2 re-enabled".to_string())
    );
    // Audit views ask for the entry in force at the call's time: before the re-grant (at 3 s) it is alice's
    // (revoked by bob at 2 s), after it carol's.
    c.query("SYSTEM RELOAD DICTIONARY observer.key_grants_at_dict")
        .execute()
        .await
        .unwrap_or_else(|e| panic!("reload dictionary: {e}"));
    let at = |micros: i64| {
        format!(
            "SELECT dictGet('observer.key_grants_at_dict', 'granted_by', tuple('fp1', 'pay'), fromUnixTimestamp64Micro({micros}, 'UTC')), \
             dictGet('observer.key_grants_at_dict', 'revoked_by', tuple('fp1', 'pay'), fromUnixTimestamp64Micro({micros}, 'UTC'))"
        )
    };
    for (micros, want) in [
        (2_500_000, ("alice", "bob")),
        (3_000_000, ("carol", "")),
        (9_000_000, ("carol", "")),
    ] {
        let got: (String, String) = c
            .query(&at(micros))
            .fetch_one()
            .await
            .unwrap_or_else(|e| panic!("dictGet grant in force: {e}"));
        assert_eq!(
            got,
            (want.0.to_string(), want.1.to_string()),
            "grant in force at {micros} µs"
        );
    }
    let history: Vec<(u32, String, String)> = c
        .query(
            "SELECT grant_seq, granted_by, revoked_by FROM observer.key_grants_latest \
             WHERE key_fingerprint = 'fp1' AND api_id = 'pay' ORDER BY grant_seq",
        )
        .fetch_all()
        .await
        .unwrap_or_else(|e| panic!("grant history: {e}"));
    assert_eq!(
        history,
        vec![
            (0, "alice".to_string(), "bob".to_string()),
            (1, "carol".to_string(), String::new())
        ]
    );
    let team: String = c
        .query("SELECT dictGet('observer.applications_dict', 'team', tuple('shop'))")
        .fetch_one()
        .await
        .unwrap_or_else(|e| panic!("dictGet applications: {e}"));
    assert_eq!(team, "web");

    // Through the handle: written in the background.
    let sink = sink::build_clickhouse(sink_config(url, &fx.dir.path().join("spool")), 16)
        .await
        .expect("sink");
    let mut v3 = v1.clone();
    v3.teams[0].alert_contact = "bob".into();
    v3.teams[0].version = 3;
    sink.write_registry(RegistryRows {
        teams: v3.teams.clone(),
        ..RegistryRows::default()
    });
    wait_for(
        "registry write through the handle",
        Duration::from_secs(20),
        async || sink.metrics().registry_writes >= 1,
    )
    .await;
    sink.shutdown().await.expect("shutdown");
    assert_eq!(
        count(
            url,
            "SELECT count() FROM observer.teams_latest WHERE alert_contact = 'bob' AND version = 3"
        )
        .await,
        1
    );
}

/// Sends `events` at a steady pace, calling `at_half` once half are sent.
async fn stream(sink: &sink::SinkHandle, events: &[Event], mut at_half: impl FnMut()) {
    for (i, e) in events.iter().enumerate() {
        if i == events.len() / 2 {
            at_half();
        }
        sink.send(e.clone());
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn events(n: u64, seed: u64) -> Vec<Event> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|i| realistic(i, 1_760_000_000_000_000, &mut rng))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_mid_stream_loses_nothing_and_duplicates_nothing() {
    let Some(mut fx) = dev_fixture("outage_mid_stream_loses_nothing_and_duplicates_nothing") else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;
    const N: u64 = 3000;
    let evs = events(N, 7);
    let sink = sink::build_clickhouse(sink_config(url, &fx.dir.path().join("spool")), 100_000)
        .await
        .expect("sink");
    // An orderly stop mid-stream (the SIGKILL cases are the agent's, below): nothing may be lost or doubled, in the
    // table or in its rollups.
    stream(&sink, &evs, || fx.server.stop()).await;
    wait_for(
        "batches to be spooled during the outage",
        Duration::from_secs(30),
        async || {
            let m = sink.metrics();
            m.spooled_rows > 0 && m.rows_sent + m.spooled_rows >= N
        },
    )
    .await;
    let during = sink.metrics();
    assert!(during.spool_bytes > 0, "{during:?}");
    fx.server.restart();
    wait_for(
        "the spool to drain after ClickHouse is back",
        Duration::from_secs(60),
        async || sink.metrics().spool_batches == 0,
    )
    .await;
    let m = sink.shutdown().await.expect("shutdown");
    assert_eq!(m.dropped_total(), 0, "{m:?}");
    assert!(m.replayed_rows > 0, "{m:?}");
    assert_eq!(
        count(url, "SELECT count() FROM observer.http_requests").await,
        N,
        "{m:?}"
    );
    assert_eq!(
        count(url, "SELECT uniqExact(conn_id) FROM observer.http_requests").await,
        N
    );
    assert_eq!(
        count(url, "SELECT sum(requests) FROM observer.http_requests_1m").await,
        N,
        "rollup"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_agent_spool_is_replayed_by_its_successor() {
    let Some(mut fx) = dev_fixture("crashed_agent_spool_is_replayed_by_its_successor") else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;
    let spool = fx.dir.path().join("spool");
    const N: u64 = 2000;
    let evs = events(N, 11);
    let first = sink::build_clickhouse(sink_config(url, &spool), 100_000)
        .await
        .expect("first agent");
    stream(&first, &evs, || fx.server.kill()).await;
    wait_for(
        "every row inserted or spooled",
        Duration::from_secs(30),
        async || {
            let m = first.metrics();
            m.rows_sent + m.spooled_rows >= N
        },
    )
    .await;
    // The predecessor may have replayed part of its spool itself before it dies: counted in `before`.
    let before = first.metrics();
    first.abort(); // crash: no shutdown, no flush
    assert!(before.spooled_rows > 0, "{before:?}");
    fx.server.restart();
    let second = sink::build_clickhouse(sink_config(url, &spool), 1024)
        .await
        .expect("second agent");
    wait_for(
        "the predecessor's spool to be replayed",
        Duration::from_secs(60),
        async || second.metrics().spool_batches == 0,
    )
    .await;
    let m = second.shutdown().await.expect("shutdown");
    assert!(
        before.replayed_rows + m.replayed_rows >= before.spooled_rows,
        "what the successor replayed and what the predecessor had replayed cover the spool: {m:?} vs {before:?}"
    );
    assert_eq!(
        count(url, "SELECT count() FROM observer.http_requests").await,
        N
    );
    assert_eq!(
        count(url, "SELECT uniqExact(conn_id) FROM observer.http_requests").await,
        N
    );
}

/// Child-process agent for `sigkilled_agent_spool_is_replayed`: runs only when `OBSERVER_SINK_CHILD_URL` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_child_process() {
    let (Ok(url), Ok(spool)) = (
        std::env::var("OBSERVER_SINK_CHILD_URL"),
        std::env::var("OBSERVER_SINK_CHILD_SPOOL"),
    ) else {
        return;
    };
    let n: u64 = std::env::var("OBSERVER_SINK_CHILD_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("OBSERVER_SINK_CHILD_N");
    let sink = sink::build_clickhouse(sink_config(&url, Path::new(&spool)), 100_000)
        .await
        .expect("child sink");
    let evs = events(n, 13);
    stream(&sink, &evs, || println!("CHILD HALF")).await;
    wait_for("child durability", Duration::from_secs(60), async || {
        let m = sink.metrics();
        m.rows_sent + m.spooled_rows >= n
    })
    .await;
    println!("CHILD DURABLE {:?}", sink.metrics());
    tokio::time::sleep(Duration::from_secs(600)).await;
    panic!("child agent was not killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_agent_spool_is_replayed() {
    let Some(mut fx) = dev_fixture("sigkilled_agent_spool_is_replayed") else {
        return;
    };
    if std::env::var_os("OBSERVER_SINK_CHILD_URL").is_some() {
        return;
    }
    let url = &fx.url;
    apply(url, None).await;
    let spool = fx.dir.path().join("spool");
    const N: u64 = 2000;
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "agent_child_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("OBSERVER_SINK_CHILD_URL", url)
        .env("OBSERVER_SINK_CHILD_SPOOL", &spool)
        .env("OBSERVER_SINK_CHILD_N", N.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child agent");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let wait_line = |prefix: &str| loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) if l.contains(prefix) => return l,
            Ok(_) => continue,
            Err(e) => panic!("child agent never printed {prefix:?}: {e}"),
        }
    };
    wait_line("CHILD HALF");
    fx.server.kill();
    let durable = wait_line("CHILD DURABLE");
    // SAFETY: plain kill(2) of our own child.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "SIGKILL the child agent");
    let status = child.wait().expect("wait child");
    assert!(
        !status.success(),
        "child was killed, not finished: {status:?}"
    );

    fx.server.restart();
    let next = sink::build_clickhouse(sink_config(url, &spool), 1024)
        .await
        .expect("successor agent");
    wait_for(
        "successor to replay the spool",
        Duration::from_secs(60),
        async || next.metrics().spool_batches == 0,
    )
    .await;
    let m = next.shutdown().await.expect("shutdown");
    assert!(
        m.replayed_rows > 0,
        "nothing replayed: {m:?}; child said {durable}"
    );
    assert_eq!(
        count(url, "SELECT count() FROM observer.http_requests").await,
        N,
        "child said {durable}"
    );
    assert_eq!(
        count(url, "SELECT uniqExact(conn_id) FROM observer.http_requests").await,
        N
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_batch_is_stored_once_in_table_and_rollups() {
    let Some(fx) = dev_fixture("retried_batch_is_stored_once_in_table_and_rollups") else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;
    let spool_dir = fx.dir.path().join("spool");
    // The same batch (same token) spooled three times, as after lost acknowledgements.
    let mut payload = rbwnat_header();
    let evs = events(100, 3);
    for e in &evs {
        encode_event(&mut payload, e);
    }
    {
        let mut spool = Spool::open(&spool_dir, 1 << 30).expect("spool");
        for seq in 0..3 {
            spool
                .push(&SpooledBatch {
                    id: BatchId { run_id: 1, seq },
                    rows: 100,
                    created_us: 0,
                    token: "itest:retry:0".into(),
                    table: TABLE.into(),
                    columns: column_list(),
                    payload: payload.clone().into(),
                })
                .expect("push");
        }
    }
    let sink = sink::build_clickhouse(sink_config(url, &spool_dir), 16)
        .await
        .expect("sink");
    wait_for("replay", Duration::from_secs(30), async || {
        sink.metrics().spool_batches == 0
    })
    .await;
    let m = sink.shutdown().await.expect("shutdown");
    assert_eq!(m.replayed_batches, 3, "{m:?}");
    assert_eq!(
        count(url, "SELECT count() FROM observer.http_requests").await,
        100
    );
    assert_eq!(
        count(url, "SELECT sum(requests) FROM observer.http_requests_1m").await,
        100
    );
    assert_eq!(
        count(url, "SELECT sum(requests) FROM observer.http_requests_1h").await,
        100
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_agree_with_raw_table() {
    let Some(fx) = dev_fixture("rollups_agree_with_raw_table") else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;
    let mut cfg = sink_config(url, &fx.dir.path().join("spool"));
    cfg.batch_rows = 1000;
    let sink = sink::build_clickhouse(cfg, 100_000).await.expect("sink");
    // ~2.8 hours of traffic: 10_000 events 1 s apart (spreads over minutes and hours).
    let mut rng = Lcg(5);
    for i in 0..10_000u64 {
        let mut e = realistic(i, 1_760_000_000_000_000, &mut rng);
        e.ts = Timestamp(1_760_000_000_000_000 + i as i64 * 1_000_000);
        sink.send(e);
        if i % 1000 == 999 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let m = sink.shutdown().await.expect("shutdown");
    assert_eq!(m.rows_sent, 10_000, "{m:?}");
    let c = client(url).with_database("observer");
    for (table, bucket, expr) in [
        (
            "http_requests_1m",
            "minute",
            "toStartOfMinute(toDateTime(ts, 'UTC'))",
        ),
        (
            "http_requests_1h",
            "hour",
            "toStartOfHour(toDateTime(ts, 'UTC'))",
        ),
    ] {
        let keys = "api_id, route, method, app_id, toString(key_state) AS ks, status_class";
        let raw = format!(
            "SELECT {expr} AS b, {keys}, count() AS n, countIf(status >= 500 OR status = 0) AS err, \
             sum(req_bytes) + sum(resp_bytes) AS bytes, uniq(src_ip, client_cgroup, client_comm) AS w \
             FROM (SELECT *, toUInt8(intDiv(status, 100)) AS status_class FROM observer.http_requests) \
             GROUP BY b, api_id, route, method, app_id, ks, status_class"
        );
        let roll = format!(
            "SELECT {bucket} AS b, {keys}, sum(requests) AS n, sum(errors) AS err, \
             sum(req_bytes) + sum(resp_bytes) AS bytes, uniqMerge(client_workloads) AS w \
             FROM observer.{table} GROUP BY b, api_id, route, method, app_id, ks, status_class"
        );
        let diff = count(
            url,
            &format!(
                "SELECT count() FROM (({raw}) EXCEPT ({roll}) UNION ALL (({roll}) EXCEPT ({raw})))"
            ),
        )
        .await;
        assert_eq!(diff, 0, "{table} disagrees with the raw table");
        let groups = count(url, &format!("SELECT count() FROM ({roll})")).await;
        assert!(
            groups > 100,
            "{table}: only {groups} groups, test data too uniform"
        );
        // Quantiles from merged states are close to the exact ones over the whole range.
        let (p50_roll, p50_raw): (f64, f64) = c
            .query(&format!(
                "SELECT toFloat64(assumeNotNull((SELECT quantilesTDigestMerge(0.5, 0.9, 0.95, 0.99)(duration_quantiles)[1] \
                 FROM observer.{table}))), toFloat64(assumeNotNull((SELECT quantileExact(0.5)(duration_us) \
                 FROM observer.http_requests)))"
            ))
            .fetch_one()
            .await
            .unwrap_or_else(|e| panic!("quantiles on {table}: {e}"));
        assert!(
            (p50_roll - p50_raw).abs() / p50_raw < 0.05,
            "{table}: p50 {p50_roll} vs exact {p50_raw}"
        );
    }
}

/// `ml_features_1m`: one row per minute and (api_id, app_id), each documented column computed as documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_feature_view_computes_each_documented_column() {
    let Some(fx) = dev_fixture("ml_feature_view_computes_each_documented_column") else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;
    let c = client(url).with_database("observer");
    let names: Vec<String> = c
        .query("SELECT name FROM system.columns WHERE database = 'observer' AND table = 'ml_features_1m' ORDER BY position")
        .fetch_all()
        .await
        .expect("columns");
    let documented: Vec<&str> = migrations::ML_FEATURE_COLUMNS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        names, documented,
        "the view's columns are the documented ones, in order"
    );

    let m0 = 1_760_000_040_000_000i64; // a minute boundary
    let ev =
        |sec: i64, app: &str, status: u16, dur: u64, src: &str, hash: u64, ks: KeyState| Event {
            ts: Timestamp(m0 + sec * 1_000_000),
            api_id: "pay".into(),
            app_id: app.into(),
            route: if hash.is_multiple_of(2) {
                "/a".into()
            } else {
                "/b".into()
            },
            status,
            duration_us: dur,
            src_ip: src.parse().expect("ip"),
            request_hash: hash,
            key_state: ks,
            ..Event::default()
        };
    let v = KeyState::Valid;
    let events = vec![
        // Minute 0, app x: 4 exchanges, one 404, one 503, the same request (hash 2) twice, 2 sources.
        ev(1, "x", 200, 100, "10.0.0.1", 2, v),
        ev(2, "x", 404, 200, "10.0.0.1", 2, v),
        ev(3, "x", 503, 300, "10.0.0.2", 3, KeyState::None),
        ev(4, "x", 200, 400, "10.0.0.2", 4, v),
        // Minute 1, app x: one exchange without response and without a hash (an older agent's row).
        ev(61, "x", 0, 0, "10.0.0.1", 0, v),
        ev(62, "x", 200, 1000, "10.0.0.1", 6, v),
        // Minute 1, app y: its first minute on the API.
        ev(63, "y", 200, 50, "10.0.0.9", 8, KeyState::Unknown),
    ];
    insert_events(url, &fx.dir.path().join("spool"), &events).await;
    #[derive(Debug, clickhouse::Row, serde::Deserialize)]
    struct Row {
        app_id: String,
        requests: u64,
        rate_per_s: f64,
        error_ratio_4xx: f64,
        error_ratio_5xx: f64,
        no_response_ratio: f64,
        latency_p50_us: f64,
        distinct_sources: u64,
        distinct_routes: u64,
        keyless_ratio: f64,
        repeat_ratio: Option<f64>,
        new_pair: u8,
    }
    let rows: Vec<Row> = c
        .query(
            "SELECT app_id, requests, rate_per_s, error_ratio_4xx, error_ratio_5xx, no_response_ratio, \
             toFloat64(latency_p50_us) AS latency_p50_us, distinct_sources, distinct_routes, keyless_ratio, \
             repeat_ratio, new_pair FROM ml_features_1m WHERE api_id = 'pay' ORDER BY minute, app_id",
        )
        .fetch_all()
        .await
        .expect("features");
    assert_eq!(rows.len(), 3, "{rows:?}");
    let r = &rows[0];
    assert_eq!(
        (
            r.app_id.as_str(),
            r.requests,
            r.distinct_sources,
            r.distinct_routes,
            r.new_pair
        ),
        ("x", 4, 2, 2, 1),
        "{r:?}"
    );
    assert_eq!(
        (
            r.error_ratio_4xx,
            r.error_ratio_5xx,
            r.no_response_ratio,
            r.keyless_ratio
        ),
        (0.25, 0.25, 0.0, 0.25)
    );
    assert!((r.rate_per_s - 4.0 / 60.0).abs() < 1e-9);
    assert_eq!(
        r.repeat_ratio,
        Some(0.25),
        "one of four is the same request again"
    );
    let r = &rows[1];
    assert_eq!(
        (
            r.app_id.as_str(),
            r.requests,
            r.distinct_sources,
            r.new_pair
        ),
        ("x", 2, 1, 0),
        "{r:?}"
    );
    assert_eq!(r.no_response_ratio, 0.5);
    assert_eq!(
        r.latency_p50_us, 1000.0,
        "latency only of answered exchanges"
    );
    assert_eq!(
        r.repeat_ratio,
        Some(0.0),
        "rows without a hash are not counted"
    );
    let r = &rows[2];
    assert_eq!(
        (r.app_id.as_str(), r.keyless_ratio, r.new_pair),
        ("y", 1.0, 1),
        "a new pair"
    );
    // Filtering on the minute keeps the novelty flag relative to the whole table.
    let flagged = count(
        url,
        &format!(
            "SELECT sum(new_pair) FROM observer.ml_features_1m WHERE minute >= toDateTime({}, 'UTC')",
            (m0 / 1_000_000) + 60
        ),
    )
    .await;
    assert_eq!(flagged, 1, "only y is new in minute 1");
}

/// Migration 14 on a table that already holds rows: rows older than the raw id's retention lose `request_id` (and
/// their part its file) at the next merge, keep `request_id_hash` and every other column; younger rows keep both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_id_ttl_applies_to_existing_rows() {
    let Some(fx) = dev_fixture("request_id_ttl_applies_to_existing_rows") else {
        return;
    };
    let url = &fx.url;
    apply(url, Some(13)).await;
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64;
    const DAY_US: i64 = 86_400_000_000;
    let mut rng = Lcg(3);
    let n = 5_000u64;
    let events: Vec<Event> = (0..2 * n)
        .map(|i| {
            let age = if i < n { 2 } else { 9 };
            let mut e = realistic(i, 0, &mut rng);
            e.ts = Timestamp(now_us - age * DAY_US + (i % n) as i64 * 1_000);
            e
        })
        .collect();
    insert_events(url, &fx.dir.path().join("spool"), &events).await;
    let sum_q = |col: &str| {
        format!(
            "SELECT toUInt64(sum(cityHash64({col})) % 1000000007) FROM observer.http_requests WHERE request_id_hash != 0"
        )
    };
    let (hashes_before, paths_before) = (
        count(url, &sum_q("request_id_hash")).await,
        count(url, &sum_q("path")).await,
    );
    // Parts this small are compact (one file for every column): the old day's whole part is compared.
    let old_bytes = "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = 'observer' AND \
                     table = 'http_requests' AND active AND \
                     partition = (SELECT toString(min(toDate(ts))) FROM observer.http_requests)";
    let optimize = || async {
        client(url)
            .query("OPTIMIZE TABLE observer.http_requests FINAL")
            .execute()
            .await
            .expect("optimize")
    };
    optimize().await;
    let before = count(url, old_bytes).await;

    let cfg = SchemaConfig::new("observer", None, Retention::days(3650))
        .expect("config")
        .with_request_id_retention(Retention::days(7));
    let r = schema::apply(&client(url), url, &cfg, Some(14))
        .await
        .expect("apply 14");
    assert_eq!(r.applied, vec![14], "{r}");
    optimize().await;
    assert_eq!(
        count(url, "SELECT count() FROM observer.http_requests").await,
        2 * n
    );
    let raw = |age: &str| {
        format!(
            "SELECT countIf(request_id != '') FROM observer.http_requests WHERE ts {age} now64() - INTERVAL 7 DAY"
        )
    };
    assert_eq!(
        count(url, &raw("<")).await,
        0,
        "older than 7 days: raw id gone"
    );
    assert_eq!(count(url, &raw(">")).await, n, "younger: raw id kept");
    assert_eq!(
        (
            count(url, &sum_q("request_id_hash")).await,
            count(url, &sum_q("path")).await
        ),
        (hashes_before, paths_before),
        "every other column as it was"
    );
    let after = count(url, old_bytes).await;
    // A random 32-hex-digit id is about a third of such a row.
    assert!(
        after * 10 < before * 8,
        "the merge dropped the expired column's data: {before} -> {after} bytes"
    );
    let create: String = client(url)
        .query("SELECT create_table_query FROM system.tables WHERE database = 'observer' AND name = 'http_requests'")
        .fetch_one()
        .await
        .expect("create_table_query");
    assert!(
        create.contains("`request_id` String CODEC(ZSTD(3)) TTL toDateTime(ts) + toIntervalDay(7)"),
        "{create}"
    );
}

/// Bytes per row on disk of [`Traffic`] (connections reused, request ids in their applications' formats), per
/// column, for rows younger than `--request-id-retention` (raw `request_id` kept) and for older ones (its column TTL
/// has emptied it), and their mean over a 30-day retention. `OBSERVER_BYTES_SEED` picks the generator's seed
/// (default 9); `OBSERVER_BYTES_ID_FORMAT` (`hex32`, `uuid4`, `uuid7`, `ulid`, `snowflake`) gives every request id
/// that format; `OBSERVER_BYTES_EXPORT=FILE` writes the rows to FILE (ClickHouse Native format) for trying other
/// codecs on the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_per_row_on_disk() {
    let Some(fx) = dev_fixture("bytes_per_row_on_disk") else {
        return;
    };
    let url = &fx.url;
    // The defaults of `observer schema apply`: 30 days of rows, the raw request_id for 7.
    let cfg = SchemaConfig::new("observer", None, Retention::days(30)).expect("config");
    schema::apply(&client(url), url, &cfg, None)
        .await
        .expect("schema apply");
    let mut sink_cfg = sink_config(url, &fx.dir.path().join("spool"));
    sink_cfg.batch_rows = 100_000;
    sink_cfg.batch_interval = Duration::from_secs(1);
    // 100k-row inserts on a busy machine: time enough that they are not spooled and retried.
    sink_cfg.insert_timeout = Duration::from_secs(60);
    sink_cfg.shutdown_grace = Duration::from_secs(120);
    let sink = sink::build_clickhouse(sink_cfg, 300_000)
        .await
        .expect("sink");
    const N: u64 = 200_000;
    let seed = std::env::var("OBSERVER_BYTES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let mut traffic = Traffic::new(seed);
    let id_format = std::env::var("OBSERVER_BYTES_ID_FORMAT").ok().map(|f| {
        *IdFormat::ALL
            .iter()
            .find(|x| x.name() == f)
            .unwrap_or_else(|| {
                panic!(
                    "OBSERVER_BYTES_ID_FORMAT={f}: not one of {:?}",
                    IdFormat::ALL
                )
            })
    });
    traffic.id_format = id_format;
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64;
    const DAY_US: i64 = 86_400_000_000;
    // 200k events at ~1000/s from one agent (a bit over three minutes of traffic) a day ago, and as many ten days
    // ago, past the raw request_id's 7 days: each in its own day's partition.
    for (age_days, phase) in [(1, 0), (10, 1)] {
        let base = (now_us - age_days * DAY_US) / DAY_US * DAY_US + 3_600_000_000;
        for i in 0..N {
            sink.send(traffic.exchange(phase * N + i, base - (phase * N) as i64 * 1_000));
            if i % 20_000 == 19_999 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let m = sink.shutdown().await.expect("shutdown");
    assert_eq!(m.rows_sent, 2 * N, "{m:?}");
    let c = client(url);
    c.query("OPTIMIZE TABLE observer.http_requests FINAL")
        .execute()
        .await
        .expect("optimize");
    if let Ok(file) = std::env::var("OBSERVER_BYTES_EXPORT") {
        c.query("INSERT INTO FUNCTION file(?, 'Native') SELECT * FROM observer.http_requests")
            .bind(file.as_str())
            .execute()
            .await
            .expect("export the rows");
    }
    let parts: Vec<(String, u64, u64, u64)> = c
        .query(
            "SELECT partition, sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes) FROM system.parts \
             WHERE database = 'observer' AND table = 'http_requests' AND active GROUP BY partition \
             ORDER BY partition DESC",
        )
        .fetch_all()
        .await
        .expect("system.parts");
    assert_eq!(parts.len(), 2, "one partition per day: {parts:?}");
    let mut per_row = Vec::new();
    for ((partition, rows, bytes, uncompressed), what) in parts.iter().zip([
        "rows with their raw request_id (younger than 7 days)",
        "rows past 7 days (request_id emptied by its TTL)",
    ]) {
        assert_eq!(*rows, N, "{partition}");
        let r = *bytes as f64 / *rows as f64;
        per_row.push(r);
        println!(
            "{what}, seed {seed}: {r:.1} bytes per row on disk ({bytes} bytes for {rows} rows; uncompressed {:.1} \
             B/row)",
            *uncompressed as f64 / *rows as f64
        );
        let cols: Vec<(String, u64)> = c
            .query(
                "SELECT column, sum(column_data_compressed_bytes) AS b FROM system.parts_columns \
                 WHERE database = 'observer' AND table = 'http_requests' AND active AND partition = ? \
                 GROUP BY column ORDER BY b DESC",
            )
            .bind(partition.as_str())
            .fetch_all()
            .await
            .expect("system.parts_columns");
        for (name, b) in cols.iter().filter(|(_, b)| *b * 10 >= N) {
            println!("  {name}: {:.1} B/row", *b as f64 / N as f64);
        }
    }
    let (fresh, old) = (per_row[0], per_row[1]);
    println!(
        "mean over a 30-day retention (7 days with the raw id, 23 without), seed {seed}: {:.1} bytes per row",
        (7.0 * fresh + 23.0 * old) / 30.0
    );
    // The TTL emptied the old rows' raw ids and kept their hashes; the fresh rows keep both.
    let old_day = "toDate(ts) = (SELECT min(toDate(ts)) FROM observer.http_requests)";
    let in_old =
        |what: &str| format!("SELECT countIf({what}) FROM observer.http_requests WHERE {old_day}");
    assert_eq!(count(url, &in_old("request_id != ''")).await, 0);
    assert_eq!(count(url, &in_old("request_id_hash != 0")).await, N);
    assert_eq!(
        count(
            url,
            "SELECT countIf(request_id != '') FROM observer.http_requests"
        )
        .await,
        N,
        "the fresh day's raw ids are kept"
    );
    // Schema 17 with 56-bit id hashes: 42.7 and 26.1 (README "Storage in ClickHouse"); 43.7 and 27.1 with 64-bit
    // ones, 45.3 and 28.8 with version 16's codecs. The raw ids' format moves the fresh rows' figure (2.5 more when every
    // id is a UUIDv4), not the old rows'.
    assert!(
        fresh < 47.0,
        "{fresh:.1} bytes per row is more than expected"
    );
    assert!(
        old < 26.8,
        "{old:.1} bytes per row past the raw id's retention is more than expected"
    );
    assert!(
        old < fresh - 12.0,
        "the raw request_id's column is gone from old parts: {old:.1} against {fresh:.1}"
    );
}

/// Migration 17 on a table that already holds rows of reused connections ([`Traffic`]): every row reads back as it
/// was, the columns take their new codecs (in `origin_fleet` too), and once merged `ts`, `conn_id` and `src_port`
/// take fewer bytes than under version 16's codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codecs_of_17_carry_existing_rows_over() {
    let Some(fx) = dev_fixture("codecs_of_17_carry_existing_rows_over") else {
        return;
    };
    let url = &fx.url;
    apply(url, Some(16)).await;
    // The table as a version-16 binary created it: this binary's version 1 already has 17's codecs.
    for (name, ty, codec) in [
        ("ts", "DateTime64(6, 'UTC')", "Delta(8), ZSTD(1)"),
        ("src_port", "UInt16", "T64, ZSTD(1)"),
        ("truncated", "Bool", "ZSTD(1)"),
        ("conn_id", "UInt64", "Delta(8), ZSTD(1)"),
        ("incomplete", "Bool", "ZSTD(1)"),
        ("trace_id_hash", "UInt64", "ZSTD(1)"),
        ("request_id_hash", "UInt64", "ZSTD(1)"),
    ] {
        let sql =
            format!("ALTER TABLE observer.http_requests MODIFY COLUMN {name} {ty} CODEC({codec})");
        client(url).query(&sql).execute().await.expect(&sql);
    }
    let n = 30_000u64;
    let mut traffic = Traffic::new(4);
    let events: Vec<Event> = (0..n)
        .map(|i| traffic.exchange(i, 1_767_225_600_000_000))
        .collect();
    insert_events(url, &fx.dir.path().join("spool"), &events).await;
    let every_column = migrations::http_requests_columns()
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ");
    let rows = format!(
        "SELECT toUInt64(sum(cityHash64({every_column}) % 1000000007)) FROM observer.http_requests"
    );
    // Wide parts (one file per column), so that each column's own bytes are in system.parts_columns.
    let merge = || async {
        for sql in [
            "ALTER TABLE observer.http_requests MODIFY SETTING min_bytes_for_wide_part = 0",
            "OPTIMIZE TABLE observer.http_requests FINAL",
        ] {
            client(url).query(sql).execute().await.expect(sql);
        }
    };
    let bytes = |column: &str| {
        format!(
            "SELECT sum(column_data_compressed_bytes) FROM system.parts_columns WHERE database = 'observer' \
             AND table = 'http_requests' AND active AND column = '{column}'"
        )
    };
    merge().await;
    let before_rows = count(url, &rows).await;
    let mut before = Vec::new();
    for c in ["ts", "conn_id", "src_port"] {
        before.push(count(url, &bytes(c)).await);
    }

    let r = apply(url, Some(17)).await;
    assert_eq!(r.applied, vec![17], "{r}");
    merge().await;
    assert_eq!(
        count(url, "SELECT count() FROM observer.http_requests").await,
        n
    );
    assert_eq!(count(url, &rows).await, before_rows, "every row as it was");
    for name in migrations::V17_CODEC_COLUMNS {
        let c = migrations::http_requests_columns()
            .iter()
            .find(|c| c.name == *name)
            .expect("column");
        let tables = if ["ts", "conn_id"].contains(name) {
            "('http_requests', 'origin_fleet')"
        } else {
            "('http_requests')"
        };
        let want = if tables.contains("origin_fleet") {
            2
        } else {
            1
        };
        assert_eq!(
            count(
                url,
                &format!(
                    "SELECT count() FROM system.columns WHERE database = 'observer' AND table IN {tables} \
                     AND name = '{name}' AND compression_codec = '{}'",
                    c.codec
                )
            )
            .await,
            want,
            "{name} {}",
            c.codec
        );
    }
    for (c, b) in ["ts", "conn_id", "src_port"].iter().zip(before) {
        let after = count(url, &bytes(c)).await;
        println!(
            "{c}: {:.2} -> {:.2} bytes a row",
            b as f64 / n as f64,
            after as f64 / n as f64
        );
        assert!(after * 10 < b * 9, "{c}: {b} -> {after} bytes");
    }
}

/// Migration 15 on a table that already holds rows written with 64-bit request hashes (agents before it): every row
/// is kept, each hash becomes the 32 bits the agent now computes for the same request, and the column is stored in 4
/// bytes a row once merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_hash_32_bits_carries_existing_rows_over() {
    let Some(fx) = dev_fixture("request_hash_32_bits_carries_existing_rows_over") else {
        return;
    };
    let url = &fx.url;
    apply(url, Some(14)).await;
    let mut rng = Lcg(5);
    let n = 20_000u64;
    let events: Vec<Event> = (0..n)
        .map(|i| {
            let mut e = realistic(i, 1_767_225_600_000_000, &mut rng);
            // What an agent before schema 15 stored: 64 bits, here and there with a zero low half.
            e.request_hash = if i % 1000 == 0 {
                (i + 1) << 32
            } else {
                (e.request_hash << 32) | (rng.next() << 1) | 1
            };
            e
        })
        .collect();
    insert_events(url, &fx.dir.path().join("spool"), &events).await;
    let expected: u64 = events
        .iter()
        .map(|e| u64::from((e.request_hash as u32).max(1)) % 1_000_003)
        .sum();
    let paths = "SELECT toUInt64(sum(cityHash64(path, request_id_hash)) % 1000000007) FROM observer.http_requests";
    let paths_before = count(url, paths).await;

    let r = apply(url, Some(15)).await;
    assert_eq!(r.applied, vec![15], "{r}");
    wait_for("the request_hash mutation", Duration::from_secs(120), async || {
        count(
            url,
            "SELECT count() FROM system.mutations WHERE database = 'observer' AND table = 'http_requests' \
             AND NOT is_done",
        )
        .await
            == 0
    })
    .await;
    // Wide parts (one file per column), so that the column's own bytes are in system.parts_columns.
    for sql in [
        "ALTER TABLE observer.http_requests MODIFY SETTING min_bytes_for_wide_part = 0",
        "OPTIMIZE TABLE observer.http_requests FINAL",
    ] {
        client(url).query(sql).execute().await.expect(sql);
    }
    assert_eq!(
        count(url, "SELECT count() FROM observer.http_requests").await,
        n
    );
    assert_eq!(
        count(
            url,
            "SELECT countIf(request_hash > 4294967295 OR request_hash = 0) FROM observer.http_requests"
        )
        .await,
        0,
        "every hash in 32 bits, none lost to 0"
    );
    assert_eq!(
        count(
            url,
            "SELECT sum(request_hash % 1000003) FROM observer.http_requests"
        )
        .await,
        expected,
        "each row keeps the low 32 bits of its hash"
    );
    assert_eq!(
        count(url, paths).await,
        paths_before,
        "every other column as it was"
    );
    assert_eq!(
        count(
            url,
            "SELECT count() FROM system.columns WHERE database = 'observer' AND table = 'http_requests' \
             AND name = 'request_hash' AND type = 'UInt64' AND compression_codec = 'CODEC(T64, ZSTD(1))'"
        )
        .await,
        1
    );
    // 20,000 random 32-bit values: 4 bytes each, where they took 8 before.
    let column_bytes = count(
        url,
        "SELECT sum(column_data_compressed_bytes) FROM system.parts_columns WHERE database = 'observer' \
         AND table = 'http_requests' AND active AND column = 'request_hash'",
    )
    .await;
    assert!(
        column_bytes > n * 3 && column_bytes < n * 9 / 2,
        "request_hash takes {column_bytes} bytes for {n} rows"
    );
}

/// `cargo xtask bench --clickhouse` (not `cargo xtask test`: it measures, it asserts only that every row landed):
/// rows per second through the agent's own ClickHouse sink (queue, batcher, RowBinary encoding, LZ4, HTTP insert,
/// the spool's bookkeeping) into the dev server, at the sink's defaults (100,000 rows or 1 s a batch). The sender
/// keeps at most `queue` events ahead of what ClickHouse acknowledged, so the queue never drops: the figure is the
/// sink's sustained rate. `OBSERVER_BENCH_ROWS` rows (default 2,000,000) of [`realistic`] traffic, cloned from a
/// pool of 100,000 with fresh timestamps and connection ids (generation is not measured). Prints one line for the
/// xtask to parse: `clickhouse_insert rows=N seconds=S rows_per_s=R batches=B process_cpu_s=C`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by cargo xtask bench --clickhouse"]
async fn bench_sink_insert_rate() {
    let Some(fx) = dev_fixture("bench_sink_insert_rate") else {
        return;
    };
    let url = &fx.url;
    let cfg = SchemaConfig::new("observer", None, Retention::days(30)).expect("config");
    schema::apply(&client(url), url, &cfg, None)
        .await
        .expect("schema apply");
    let rows: u64 = std::env::var("OBSERVER_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let mut sink_cfg =
        observer::sink::clickhouse::ClickHouseConfig::new(url, fx.dir.path().join("spool"));
    sink_cfg.agent_id = "bench".into();
    sink_cfg.insert_timeout = Duration::from_secs(120);
    sink_cfg.shutdown_grace = Duration::from_secs(300);
    let queue = 300_000u64;
    let sink = sink::build_clickhouse(sink_cfg, queue as usize)
        .await
        .expect("sink");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64;
    let mut rng = Lcg(11);
    let pool: Vec<Event> = (0..100_000u64)
        .map(|i| realistic(i, now_us - 3_600_000_000, &mut rng))
        .collect();
    let cpu = || {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        let f: Vec<&str> = stat
            .rsplit(") ")
            .next()
            .unwrap_or_default()
            .split(' ')
            .collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
        ticks as f64 / 100.0
    };
    let (cpu0, t0) = (cpu(), std::time::Instant::now());
    let mut sent = 0u64;
    while sent < rows {
        while sent - sink.metrics().rows_sent + 1024 > queue {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut batch = sink.batch();
        for _ in 0..1024.min(rows - sent) {
            let mut e = pool[(sent % pool.len() as u64) as usize].clone();
            e.ts = Timestamp(e.ts.0 + (sent / pool.len() as u64) as i64 * 100_000_000);
            e.conn_id = sent;
            batch.push(e);
            sent += 1;
        }
        sink.send_batch(batch);
    }
    let m = sink.shutdown().await.expect("shutdown");
    let (secs, cpu_s) = (t0.elapsed().as_secs_f64(), cpu() - cpu0);
    assert_eq!((m.rows_sent, m.dropped_total()), (rows, 0), "{m:?}");
    println!(
        "clickhouse_insert rows={rows} seconds={secs:.3} rows_per_s={:.0} batches={} process_cpu_s={cpu_s:.2}",
        rows as f64 / secs,
        m.batches_sent
    );
    assert_eq!(
        count(url, "SELECT count() FROM observer.http_requests").await,
        rows
    );
}
