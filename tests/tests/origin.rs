//! End to end: origin across hops. A client calls an edge service with an API key; the edge calls a middle service,
//! which calls two backends (python3 http.server services, real sockets, in a network namespace of their own).
//! Variants: trace context propagated, only X-Request-Id, no ids one request at a time (causal), and two keyed
//! requests at once without ids, where every event below the edge must say `ambiguous` rather than guess.
#![forbid(unsafe_code)]
use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use observer_tests::*;
use serde_json::Value;

const EDGE: u16 = 18611;
const MIDDLE: u16 = 18612;
const STOCK: u16 = 18613;
const PRICE: u16 = 18614;

const KEY_MOBILE: &str = "sk_live_mobile_origin_5d2c81";
const KEY_PARTNER: &str = "sk_live_partner_origin_9a07e3";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// One tier: answers `GET /<anything>/<variant>[?hold=S]` after calling each downstream `URL/<variant>` in turn,
/// passing on `traceparent` (with a span id of its own) and `X-Request-Id` when it received them; `hold` makes it
/// (and its downstreams) wait that long first, so concurrent requests overlap at every tier.
const TIER: &str = r#"
import random, sys, time, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

role, port, downstream = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

class Tier(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        path, _, query = self.path.partition("?")
        variant = path.rsplit("/", 1)[-1]
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        hold = params.get("hold")
        if hold:
            time.sleep(float(hold))
        headers = {}
        trace = self.headers.get("traceparent")
        if trace:
            parts = trace.split("-")
            parts[2] = "%016x" % random.getrandbits(64)
            headers["traceparent"] = "-".join(parts)
        request_id = self.headers.get("x-request-id")
        if request_id:
            headers["X-Request-Id"] = request_id
        for url in downstream:
            target = url + "/" + variant + ("?hold=" + hold if hold else "")
            urllib.request.urlopen(urllib.request.Request(target, headers=headers), timeout=10).read()
        body = (role + " " + variant + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

ThreadingHTTPServer(("127.0.0.1", port), Tier).serve_forever()
"#;

fn registry_yaml(fp_mobile: &str, fp_partner: &str) -> String {
    format!(
        r#"version: 1
teams:
  - {{id: shop, name: Shop, line_of_business: Retail, alert_contact: shop@example.com}}
apis:
  - id: storefront-api
    name: Storefront API
    owner: shop
    match: {{ports: [{EDGE}]}}
    auth: {{type: api_key, headers: [X-Api-Key]}}
applications:
  - {{id: mobile-checkout, name: Mobile Checkout, team: shop, created_by: alice, created_at: 2025-01-01}}
  - {{id: partner-portal, name: Partner Portal, team: shop, created_by: bob, created_at: 2025-02-01}}
keys:
  - {{id: mobile-key, application: mobile-checkout, fingerprint: {fp_mobile}, granted_by: alice, granted_at: 2025-01-01, apis: [storefront-api]}}
  - {{id: partner-key, application: partner-portal, fingerprint: {fp_partner}, granted_by: bob, granted_at: 2025-02-01, apis: [storefront-api]}}
"#
    )
}

/// A network namespace with loopback up, removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("origin{}", std::process::id() % 10000);
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        sh(Command::new("ip").args(["netns", "add", &name]));
        sh(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns(name)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.0))
            .arg("--")
            .arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn tier(ns: &Netns, script: &Path, role: &str, port: u16, downstream: &[u16]) -> Proc {
    let mut cmd = ns.cmd("python3");
    cmd.arg(script).arg(role).arg(port.to_string());
    for d in downstream {
        cmd.arg(format!("http://127.0.0.1:{d}/{role}-call"));
    }
    let p = Proc::spawn(
        cmd.stdout(Stdio::null()).stderr(Stdio::null()),
        &format!("{role} tier"),
    );
    wait_tcp(&format!("127.0.0.1:{port}"), Some(&ns.0));
    p
}

/// The client's request to the edge, with `headers`.
fn client(ns: &Netns, variant: &str, query: &str, headers: &[String]) -> Command {
    let mut c = ns.cmd("curl");
    c.args(["-sS", "--max-time", "10", "-o", "/dev/null"]);
    for h in headers {
        c.args(["-H", h]);
    }
    c.arg(format!("http://127.0.0.1:{EDGE}/order/{variant}{query}"));
    c
}

fn of_variant<'a>(events: &'a [Value], variant: &str, port: u16) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| {
            e["dst_port"].as_u64() == Some(u64::from(port))
                && e["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("/{variant}")))
        })
        .collect()
}

fn origin(e: &Value) -> (String, u64, String) {
    (
        e["origin_app_id"].as_str().unwrap_or("?").to_string(),
        e["hop"].as_u64().unwrap_or(99),
        e["origin_by"].as_str().unwrap_or("?").to_string(),
    )
}

fn is_parent(child: &Value, parent: &Value) -> bool {
    child["parent_conn_id"] == parent["conn_id"] && child["parent_ts"] == parent["ts"]
}

/// One keyed request down the chain: the edge's event is hop 0 `self`; the middle's is hop 1 and the backends' hop 2,
/// found `by`, each naming its parent.
fn check_chain(events: &[Value], variant: &str, by: &str, fp_mobile: &str) {
    let one = |port| {
        let v = of_variant(events, variant, port);
        assert_eq!(
            v.len(),
            1,
            "{variant}: one event on port {port}:\n{}",
            brief(events)
        );
        v[0].clone()
    };
    let (edge, middle, stock, price) = (one(EDGE), one(MIDDLE), one(STOCK), one(PRICE));
    let app = "mobile-checkout".to_string();
    assert_eq!(
        origin(&edge),
        (app.clone(), 0, "self".into()),
        "{variant} edge: {edge}"
    );
    assert_eq!(edge["origin_key_fingerprint"], fp_mobile);
    assert_eq!(edge["origin_api_id"], "storefront-api");
    assert_eq!(
        origin(&middle),
        (app.clone(), 1, by.into()),
        "{variant} middle: {middle}"
    );
    assert!(
        is_parent(&middle, &edge),
        "{variant}: middle's parent is the edge call:\n{middle}\n{edge}"
    );
    for backend in [&stock, &price] {
        assert_eq!(
            origin(backend),
            (app.clone(), 2, by.into()),
            "{variant} backend: {backend}"
        );
        assert!(
            is_parent(backend, &middle),
            "{variant}: backend's parent is the middle call:\n{backend}\n{middle}"
        );
        assert_eq!(backend["origin_key_fingerprint"], fp_mobile);
        assert_eq!(backend["origin_api_id"], "storefront-api");
        assert_eq!(
            backend["app_id"], "",
            "the backend call itself carries no key"
        );
    }
}

#[test]
fn backend_events_carry_the_edge_callers_origin_or_say_why_not() {
    require_root();
    let dir = scratch("origin");
    let fp_mobile = fingerprint(&dir, KEY_MOBILE);
    let fp_partner = fingerprint(&dir, KEY_PARTNER);
    let reg = dir.join("registry.yaml");
    std::fs::write(&reg, registry_yaml(&fp_mobile, &fp_partner)).expect("registry");
    let script = dir.join("tier.py");
    std::fs::write(&script, TIER).expect("tier.py");

    let ns = Netns::new();
    let _tiers = [
        tier(&ns, &script, "stock", STOCK, &[]),
        tier(&ns, &script, "price", PRICE, &[]),
        tier(&ns, &script, "middle", MIDDLE, &[STOCK, PRICE]),
        tier(&ns, &script, "edge", EDGE, &[MIDDLE]),
    ];
    let ports = format!("{EDGE},{MIDDLE},{STOCK},{PRICE}");
    let obs = Observer::start(
        &dir,
        &[
            "--ports",
            &ports,
            "--registry",
            &reg.display().to_string(),
            "--origin",
        ],
    );
    let key = |k: &str| format!("X-Api-Key: {k}");
    sh(&mut client(
        &ns,
        "trace",
        "",
        &[key(KEY_MOBILE), format!("traceparent: {TRACEPARENT}")],
    ));
    sh(&mut client(
        &ns,
        "request-id",
        "",
        &[key(KEY_MOBILE), "X-Request-Id: origin-e2e-7f3a".into()],
    ));
    sh(&mut client(&ns, "causal", "", &[key(KEY_MOBILE)]));
    // Two keyed requests in flight at once at every tier, no ids: nothing can tell them apart below the edge.
    let mut both: Vec<_> = [KEY_MOBILE, KEY_PARTNER]
        .iter()
        .map(|k| {
            client(&ns, "concurrent", "?hold=0.4", &[key(k)])
                .spawn()
                .expect("starting curl")
        })
        .collect();
    for c in &mut both {
        assert!(c.wait().expect("curl").success(), "concurrent curl failed");
    }
    // Every exchange is decided once its chain's edge call has finished: none waits, none was released undecided.
    let settled = eventually(Duration::from_secs(5), || {
        let m = obs.metrics_text();
        m.contains("observer_origin_table_size{table=\"held\"} 0")
            && m.contains("observer_origin_decided_total{by=\"ambiguous\"} 6")
    });
    assert!(
        settled,
        "origin tracker did not settle:\n{}",
        obs.metrics_text()
    );
    assert_eq!(obs.metric("observer_origin_undecided_total"), 0.0);
    let all = obs.stop();
    let events: Vec<Value> = all
        .into_iter()
        .filter(|e| {
            [EDGE, MIDDLE, STOCK, PRICE].contains(&(e["dst_port"].as_u64().unwrap_or(0) as u16))
        })
        .collect();

    check_chain(&events, "trace", "trace", &fp_mobile);
    check_chain(&events, "request-id", "request_id", &fp_mobile);
    check_chain(&events, "causal", "causal", &fp_mobile);

    let edge = of_variant(&events, "concurrent", EDGE);
    let mut apps: Vec<_> = edge.iter().map(|e| origin(e)).collect();
    apps.sort();
    assert_eq!(
        apps,
        [
            ("mobile-checkout".to_string(), 0, "self".to_string()),
            ("partner-portal".to_string(), 0, "self".to_string())
        ],
        "{}",
        brief(&events)
    );
    for (port, n) in [(MIDDLE, 2), (STOCK, 2), (PRICE, 2)] {
        let below = of_variant(&events, "concurrent", port);
        assert_eq!(below.len(), n, "port {port}:\n{}", brief(&events));
        for e in below {
            assert_eq!(e["origin_by"], "ambiguous", "port {port}: {e}");
            assert_eq!(e["origin_app_id"], "", "no guess on port {port}: {e}");
        }
    }
}
