//! End to end into ClickHouse: real clients -> real servers -> agent -> the project's ClickHouse dev server (the real
//! ClickHouse engine). Every request lands exactly once in `http_requests`, enriched; the minute and hour rollups
//! agree with counts over the raw table; the registry tables hold what the agent loaded.
#![forbid(unsafe_code)]
use std::{collections::BTreeMap, process::Command};

use observer_tests::*;

fn registry_yaml(port: u16, fp: &str) -> String {
    format!(
        r#"version: 1
teams:
  - {{id: shop, name: Shop, line_of_business: Retail, alert_contact: shop@example.com}}
apis:
  - id: catalog-api
    name: Catalog API
    owner: shop
    match: {{ports: [{port}]}}
    auth: {{type: api_key, headers: [X-Api-Key]}}
    routes: ["GET /items/{{id}}", "POST /echo"]
applications:
  - {{id: storefront, name: Storefront, team: shop, created_by: alice, created_at: 2025-01-01}}
  - id: ops-scripts
    name: Ops scripts
    team: shop
    created_by: alice
    created_at: 2025-01-01
    workload: {{comm: python3}}
keys:
  - id: storefront-key
    application: storefront
    fingerprint: {fp}
    granted_by: alice
    granted_at: 2025-01-01
    apis: [catalog-api]
"#
    )
}

/// Sorted TSV lines of a grouped query, for comparing raw counts with rollups.
fn groups(ch: &ClickHouse, sql: &str) -> BTreeMap<String, String> {
    ch.query(sql)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once('\t').unwrap_or((l, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn real_traffic_reaches_clickhouse_once_and_rollups_agree() {
    require_root();
    let dir = scratch("clickhouse");
    let port = 18411;
    let ch = ClickHouse::start(&dir, 18499);
    sh(Command::new(observer_bin()).args(["schema", "apply", "--clickhouse-url", &ch.url]));

    let key = "sk_live_storefront_5be1c0de";
    let fp = fingerprint(&dir, key);
    let reg = dir.join("registry.yaml");
    std::fs::write(&reg, registry_yaml(port, &fp)).expect("registry");
    let _nginx = nginx(&dir, None, "127.0.0.1", port);
    let obs = Observer::start(
        &dir,
        &[
            // Every port: the agent's own inserts into ClickHouse are on loopback too, and must not be reported.
            "--ports",
            "all",
            "--registry",
            &reg.display().to_string(),
            "--sink",
            "clickhouse",
            "--clickhouse-url",
            &ch.url,
            "--spool-dir",
            &dir.join("spool").display().to_string(),
        ],
    );

    // 40 keyed GETs on one keep-alive connection (200), 15 misses (404), 5 POSTs (201), 5 HEADs of a 204, and
    // 10 unkeyed requests from python3 (attributed by workload).
    let base = format!("http://127.0.0.1:{port}");
    let ok: Vec<String> = (0..40).map(|_| format!("{base}/index.html")).collect();
    let mut args = vec!["-H".to_string(), format!("X-Api-Key: {key}")];
    for u in &ok {
        args.extend(["-o".into(), "/dev/null".into(), u.clone()]);
    }
    curl(None, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut args = vec!["-H".to_string(), format!("X-Api-Key: {key}")];
    for i in 0..15 {
        args.extend([
            "-o".into(),
            "/dev/null".into(),
            format!("{base}/items/{}", 1000 + i),
        ]);
    }
    curl(None, &args.iter().map(String::as_str).collect::<Vec<_>>());
    for _ in 0..5 {
        curl(
            None,
            &[
                "-o",
                "/dev/null",
                "-H",
                &format!("X-Api-Key: {key}"),
                "--data",
                "{\"sku\":1}",
                &format!("{base}/echo"),
            ],
        );
    }
    for _ in 0..5 {
        curl(None, &["-o", "/dev/null", "-I", &format!("{base}/nothing")]);
    }
    sh(Command::new("python3").args([
        "-c",
        &format!(
            "import urllib.request\nfor i in range(10): urllib.request.urlopen('{base}/index.html').read()"
        ),
    ]));
    const N: usize = 40 + 15 + 5 + 5 + 10;

    std::thread::sleep(std::time::Duration::from_millis(1500));
    let log = obs.log();
    let metrics = obs.metrics_text();
    let own: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("observer_own_exchanges_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no observer_own_exchanges_total in:\n{metrics}"));
    assert!(
        own >= 1.0,
        "the agent's inserts were seen and set aside: {own}"
    );
    let all = obs.stop();
    let events = on_port(&all, port);
    assert_eq!(
        events.len(),
        N,
        "every request once in the NDJSON sink:\n{}",
        brief(&events)
    );
    assert_eq!(access_log(&dir).len(), N, "nginx answered every request");
    assert!(
        on_port(&all, 18499).is_empty(),
        "the agent's own ClickHouse inserts are not events:\n{}",
        brief(&on_port(&all, 18499))
    );

    let filter = format!("dst_port = {port}");
    let raw = ch.count(&format!(
        "SELECT count() FROM observer.http_requests WHERE {filter}"
    ));
    assert_eq!(
        raw, N as u64,
        "every request exactly once in ClickHouse; metrics:\n{metrics}\nlog:\n{log}"
    );
    assert_eq!(
        ch.count(&format!(
            "SELECT uniqExact(conn_id, ts, path) FROM observer.http_requests WHERE {filter}"
        )),
        N as u64,
        "no duplicates"
    );

    // Field by field, one row of each kind, as ClickHouse stored it.
    let row = ch.query(&format!(
        "SELECT method, path, route, status, api_id, api_name, api_owner, app_id, app_name, app_team, \
         line_of_business, key_state, attributed_by, key_fingerprint, key_suffix, side, client_comm, server_comm, \
         toString(src_ip), toString(dst_ip) \
         FROM observer.http_requests WHERE {filter} AND path = '/items/1007'"
    ));
    assert_eq!(
        row,
        format!(
            "GET\t/items/1007\t/items/{{id}}\t404\tcatalog-api\tCatalog API\tshop\tstorefront\tStorefront\tshop\t\
             Retail\tvalid\tkey\t{fp}\tc0de\tboth\tcurl\tnginx\t::ffff:127.0.0.1\t::ffff:127.0.0.1"
        )
    );
    let by_app = groups(
        &ch,
        &format!(
            "SELECT app_id, attributed_by, key_state, count() FROM observer.http_requests WHERE {filter} \
             GROUP BY ALL ORDER BY ALL"
        ),
    );
    assert_eq!(
        by_app,
        BTreeMap::from([
            ("ops-scripts\tworkload\tnone".to_string(), "10".to_string()),
            ("\tnone\tnone".to_string(), "5".to_string()),
            ("storefront\tkey\tvalid".to_string(), "60".to_string()),
        ]),
    );
    let raw_all =
        ch.query("SELECT count(), sum(req_bytes), sum(resp_bytes) FROM observer.http_requests");
    assert_eq!(
        ch.query(&format!(
            "SELECT count(), min(resp_bytes) > 17, min(req_bytes) > 0 FROM observer.http_requests \
             WHERE {filter} AND path = '/index.html'"
        )),
        "50\t1\t1",
        "byte counts of the 50 GETs of a 17-byte page"
    );

    // Rollups agree with the raw table, group by group, minute and hour.
    let raw_groups = groups(
        &ch,
        "SELECT api_id, route, method, app_id, key_state, toUInt8(intDiv(status, 100)), \
         tuple(count(), countIf(status >= 500 OR status = 0), sum(req_bytes), sum(resp_bytes), max(duration_us)) \
         FROM observer.http_requests GROUP BY ALL ORDER BY ALL",
    );
    assert!(raw_groups.len() >= 5, "several groups: {raw_groups:?}");
    for table in ["http_requests_1m", "http_requests_1h"] {
        let rolled = groups(
            &ch,
            &format!(
                "SELECT api_id, route, method, app_id, key_state, status_class, \
                 tuple(sum(requests), sum(errors), sum(req_bytes), sum(resp_bytes), max(duration_us_max)) \
                 FROM observer.{table} GROUP BY ALL ORDER BY ALL"
            ),
        );
        assert_eq!(rolled, raw_groups, "{table} agrees with http_requests");
        let totals = ch.query(&format!(
            "SELECT sum(requests), sum(req_bytes), sum(resp_bytes) FROM observer.{table}"
        ));
        assert_eq!(totals, raw_all, "{table} totals");
    }

    // The registry the agent loaded is in ClickHouse, and the dictionaries join it at query time.
    assert_eq!(
        ch.query("SELECT api_id, name, owner FROM observer.apis_latest ORDER BY api_id"),
        "catalog-api\tCatalog API\tshop"
    );
    assert_eq!(
        ch.query("SELECT app_id, name FROM observer.applications_latest ORDER BY app_id"),
        "ops-scripts\tOps scripts\nstorefront\tStorefront"
    );
    assert_eq!(
        ch.query(&format!(
            "SELECT dictGet('observer.key_grants_dict', 'app_id', tuple(key_fingerprint, api_id)), count() \
             FROM observer.http_requests WHERE {filter} AND key_fingerprint != '' GROUP BY ALL"
        )),
        "storefront\t60"
    );
}
