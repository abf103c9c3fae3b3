//! End to end: business context on real traffic. A registry with two APIs and three applications; real clients
//! with different keys and one without; a key revoked by editing the registry while the agent runs.
#![forbid(unsafe_code)]
use std::{process::Command, time::Duration};

use observer_tests::*;
use serde_json::Value;

fn registry_yaml(port: u16, fp_orders: &str, fp_both: &str, orders_revoked: bool) -> String {
    let revoked = if orders_revoked {
        "\n    revoked_at: 2026-01-01T00:00:00Z\n    revoked_by: carol"
    } else {
        ""
    };
    format!(
        r#"version: 1
teams:
  - {{id: shop, name: Shop, line_of_business: Retail, alert_contact: shop@example.com}}
  - {{id: money, name: Money, line_of_business: Finance, alert_contact: money@example.com}}
apis:
  - id: orders-api
    name: Orders API
    owner: shop
    match: {{ports: [{port}], base_path: /v1/orders}}
    auth: {{type: api_key, headers: [X-Api-Key]}}
    routes: ["GET /v1/orders/{{order_id}}", "POST /v1/orders"]
  - id: payments-api
    name: Payments API
    owner: money
    match: {{ports: [{port}], base_path: /v1/payments}}
    auth: bearer
    routes: ["POST /v1/payments/{{id}}/refunds"]
applications:
  - {{id: web-shop, name: Web Shop, team: shop, created_by: alice, created_at: 2025-01-01}}
  - {{id: finance-bot, name: Finance Bot, team: money, created_by: bob, created_at: 2025-02-01}}
  - id: batch-export
    name: Batch Export
    team: shop
    created_by: alice
    created_at: 2025-03-01
    workload: {{comm: python3}}
keys:
  - id: web-shop-key
    application: web-shop
    fingerprint: {fp_orders}
    granted_by: alice
    granted_at: 2025-01-01{revoked}
    apis: [orders-api]
  - id: finance-bot-key
    application: finance-bot
    fingerprint: {fp_both}
    granted_by: bob
    granted_at: 2025-02-01
    apis: [orders-api, payments-api]
"#
    )
}

fn find<'a>(events: &'a [Value], method: &str, path: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["method"] == method && e["path"] == path)
        .collect()
}

#[test]
fn events_carry_api_application_and_key_state_and_follow_registry_edits() {
    require_root();
    let dir = scratch("registry");
    let port = 18311;
    let k_orders = "sk_live_webshop_9c1d77aa";
    let k_both = "sk_live_finbot_31e0f7b2";
    let fp_orders = fingerprint(&dir, k_orders);
    let fp_both = fingerprint(&dir, k_both);
    let reg = dir.join("registry.yaml");
    std::fs::write(&reg, registry_yaml(port, &fp_orders, &fp_both, false)).expect("registry");
    sh(Command::new(observer_bin()).args(["registry", "check", &reg.display().to_string()]));

    let _server = python_server(&dir, None, "127.0.0.1", port);
    let obs = Observer::start(
        &dir,
        &[
            "--ports",
            &port.to_string(),
            "--registry",
            &reg.display().to_string(),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    curl(
        None,
        &[
            "-o",
            "/dev/null",
            "-H",
            &format!("X-Api-Key: {k_orders}"),
            &format!("{base}/v1/orders/1001"),
        ],
    );
    curl(
        None,
        &[
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {k_both}"),
            &format!("{base}/v1/payments/77/refunds"),
        ],
    );
    curl(
        None,
        &[
            "-o",
            "/dev/null",
            "-H",
            &format!("Authorization: Bearer {k_orders}"),
            &format!("{base}/v1/payments/5"),
        ],
    );
    curl(
        None,
        &[
            "-o",
            "/dev/null",
            "-H",
            "X-Api-Key: sk_live_nobody_000000",
            &format!("{base}/v1/orders/2"),
        ],
    );
    // A client without a key: python3, recognised by its workload selector.
    sh(Command::new("python3").args([
        "-c",
        &format!("import urllib.request; urllib.request.urlopen('{base}/v1/orders/3').read()"),
    ]));

    // Revoke web-shop's key by editing the file; the agent must pick it up within 2 s without losing events.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&reg, registry_yaml(port, &fp_orders, &fp_both, true)).expect("registry edit");
    let reloaded = eventually(Duration::from_secs(4), || {
        obs.metrics_text()
            .lines()
            .any(|l| l.starts_with("observer_registry_reloads_total") && !l.ends_with(" 0"))
    });
    assert!(
        reloaded,
        "registry reload not seen in metrics:\n{}",
        obs.metrics_text()
    );
    curl(
        None,
        &[
            "-o",
            "/dev/null",
            "-H",
            &format!("X-Api-Key: {k_orders}"),
            &format!("{base}/v1/orders/1002"),
        ],
    );
    // A hostile edit (nested aliases: 9^9 nodes from 500 bytes) is refused; the agent keeps the last good registry.
    let mut laughs = String::from("x0: &x0 [lol]\n");
    for i in 1..10 {
        laughs.push_str(&format!(
            "x{i}: &x{i} [{}]\n",
            vec![format!("*x{}", i - 1); 9].join(", ")
        ));
    }
    let hostile = format!(
        "{}{laughs}",
        registry_yaml(port, &fp_orders, &fp_both, false)
    );
    std::fs::write(&reg, hostile).expect("hostile registry edit");
    let refused = eventually(Duration::from_secs(4), || {
        obs.metrics_text()
            .lines()
            .any(|l| l.starts_with("observer_registry_reload_failures_total") && !l.ends_with(" 0"))
    });
    assert!(refused, "hostile edit not refused:\n{}", obs.metrics_text());
    curl(
        None,
        &[
            "-o",
            "/dev/null",
            "-H",
            &format!("X-Api-Key: {k_orders}"),
            &format!("{base}/v1/orders/1003"),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let all = obs.stop();
    let events = on_port(&all, port);
    assert_eq!(
        events.len(),
        7,
        "seven requests, seven events:\n{}",
        brief(&events)
    );

    let e = find(&events, "GET", "/v1/orders/1001")[0];
    assert_eq!(e["api_id"], "orders-api");
    assert_eq!(e["api_name"], "Orders API");
    assert_eq!(e["api_owner"], "shop");
    assert_eq!(e["route"], "/v1/orders/{order_id}");
    assert_eq!(e["app_id"], "web-shop");
    assert_eq!(e["app_name"], "Web Shop");
    assert_eq!(e["app_team"], "shop");
    assert_eq!(e["line_of_business"], "Retail");
    assert_eq!(e["key_fingerprint"], fp_orders.as_str());
    assert_eq!(e["key_suffix"], "77aa");
    assert_eq!(e["key_state"], "valid");
    assert_eq!(e["attributed_by"], "key");
    let raw = serde_json::to_string(&all).expect("json");
    assert!(
        !raw.contains(k_orders) && !raw.contains(k_both),
        "raw keys never leave the agent"
    );

    let e = find(&events, "POST", "/v1/payments/77/refunds")[0];
    assert_eq!(
        (
            e["api_id"].as_str(),
            e["app_id"].as_str(),
            e["key_state"].as_str()
        ),
        (Some("payments-api"), Some("finance-bot"), Some("valid")),
        "{e}"
    );
    assert_eq!(e["route"], "/v1/payments/{id}/refunds");
    assert_eq!(e["line_of_business"], "Finance");

    let e = find(&events, "GET", "/v1/payments/5")[0];
    assert_eq!(
        (
            e["api_id"].as_str(),
            e["app_id"].as_str(),
            e["key_state"].as_str()
        ),
        (
            Some("payments-api"),
            Some("web-shop"),
            Some("not_granted_for_api")
        ),
        "{e}"
    );

    let e = find(&events, "GET", "/v1/orders/2")[0];
    assert_eq!(
        (e["key_state"].as_str(), e["attributed_by"].as_str()),
        (Some("unknown"), Some("none")),
        "{e}"
    );
    assert_eq!(e["route"], "/v1/orders/{order_id}");

    let e = find(&events, "GET", "/v1/orders/3")[0];
    assert_eq!(
        (
            e["app_id"].as_str(),
            e["attributed_by"].as_str(),
            e["key_state"].as_str()
        ),
        (Some("batch-export"), Some("workload"), Some("none")),
        "{e}"
    );
    assert_eq!(e["client_comm"], "python3");

    let e = find(&events, "GET", "/v1/orders/1002")[0];
    assert_eq!(
        (e["app_id"].as_str(), e["key_state"].as_str()),
        (Some("web-shop"), Some("revoked")),
        "after the edit the key is revoked: {e}"
    );

    let e = find(&events, "GET", "/v1/orders/1003")[0];
    assert_eq!(
        (e["app_id"].as_str(), e["key_state"].as_str()),
        (Some("web-shop"), Some("revoked")),
        "the refused edit would un-revoke the key; the last good registry stays: {e}"
    );
}
