//! Origin across nodes in ClickHouse (the dev server): fixture events from two nodes (`fixtures/origin.rs`), as
//! each node decided them, then `observer origin join` (`origin_join::join_window`): node B's events get the
//! origin node A saw, by the keyed trace id hash (and, without one, the request id hash); unrelated events are left
//! alone; a second run adds nothing. Then the UI's origin endpoints over the joined data, values checked.
// Tests hold a process-wide lock across awaits on purpose: one dev server at a time.
#![allow(clippy::await_holding_lock)]
mod common;
#[path = "fixtures/origin.rs"]
mod origin_fixture;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::{apply, client, dev_fixture};
use observer::event::{Event, OriginBy, Side, Timestamp};
use observer::origin_join::join_window;
use observer::sink::clickhouse::registry_rows::RegistryRows;
use observer::ui::{self, Source, UiState};
use origin_fixture::{chain, ledger_fails, origin_events, CALLS, MOBILE_FP};
use serde::Deserialize;
use serde_json::Value;

const T0_S: i64 = 1_760_100_000;
const SPAN_S: i64 = 3_600;

#[derive(Debug, Deserialize, PartialEq)]
struct Origin {
    conn_id: u64,
    origin_app_id: String,
    origin_key_fingerprint: String,
    origin_api_id: String,
    parent_conn_id: u64,
    parent_ts: i64,
    hop: u16,
    origin_by: String,
}

async fn origins(c: &clickhouse::Client) -> BTreeMap<u64, Origin> {
    let bytes = c
        .query(
            "SELECT conn_id, origin_app_id, origin_key_fingerprint, origin_api_id, parent_conn_id, \
             toUnixTimestamp64Micro(parent_ts) AS parent_ts, hop, toString(origin_by) AS origin_by \
             FROM http_requests_origin ORDER BY conn_id",
        )
        .with_setting("output_format_json_quote_64bit_integers", "0")
        .fetch_bytes("JSONEachRow")
        .expect("query")
        .collect()
        .await
        .expect("origins");
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice::<Origin>(l).expect("row"))
        .map(|o| (o.conn_id, o))
        .collect()
}

/// Two calls joined by request id only (no trace context): node A's client side `conn` and node B's server side.
/// Node A runs an agent from before 56-bit id hashes: its hash has the same low 56 bits and a high byte besides.
fn request_id_pair(ts_us: i64) -> [Event; 2] {
    let [_, _, mut a, mut b, _] = chain(99, ts_us);
    for e in [&mut a, &mut b] {
        e.trace_id_hash = 0;
        e.request_id_hash = 0x5151;
    }
    a.request_id_hash |= 0xab << observer::enrich::PROPAGATED_ID_BITS;
    // Made for another API of mobile's, so the storefront's composition is the chains' alone.
    a.origin_api_id = "mobile-web".into();
    a.conn_id = 7_001;
    b.conn_id = 7_002;
    // A's side was decided at hop 1 for the mobile app (its parent is outside this fixture).
    a.hop = 1;
    [a, b]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hops_on_another_node_get_the_origin_their_trace_or_request_id_leads_to() {
    let Some(fx) = dev_fixture("origin_join") else {
        return;
    };
    let url = &fx.url;
    apply(url, None).await;
    let mut events = origin_events(T0_S, SPAN_S);
    events.extend(request_id_pair((T0_S + 100) * 1_000_000));
    // Same trace hash as chain 0, but it started after every exchange of that chain had ended: not joined.
    let mut late = chain(0, T0_S * 1_000_000)[3].clone();
    late.conn_id = 8_001;
    late.ts = Timestamp((T0_S + 3_000) * 1_000_000);
    late.trace_id_hash = origin_events(T0_S, SPAN_S)[0].trace_id_hash;
    // An edge call into node B with an unknown trace: stays its own.
    let mut stranger = late.clone();
    stranger.conn_id = 8_002;
    stranger.trace_id_hash = 0xdead;
    events.extend([late, stranger]);
    common::insert_events(url, &fx.dir.path().join("spool"), &events).await;
    let c = client(url).with_database("observer");

    let before = origins(&c).await;
    let from = (T0_S - 60) * 1_000_000;
    let to = (T0_S + SPAN_S + 60) * 1_000_000;
    let j = join_window(&c, from, to, 1_000_000).await.expect("join");
    // Per chain: B's server side (roots) then its ledger call (children); plus the request id pair's B side.
    assert_eq!(j.filled, 2 * CALLS + 1, "{j:?}");
    assert_eq!(j.passes, 3, "roots, their children, then nothing: {j:?}");
    let after = origins(&c).await;

    let step = SPAN_S * 1_000_000 / (CALLS as i64 + 1);
    for i in 0..CALLS {
        let [edge, checkout, pay_a, pay_b, ledger] =
            chain(i, T0_S * 1_000_000 + (i as i64 + 1) * step);
        // Node A's own decisions stand.
        for e in [&edge, &checkout, &pay_a] {
            assert_eq!(after[&e.conn_id], before[&e.conn_id], "node A's event {i}");
        }
        let b = &after[&pay_b.conn_id];
        assert_eq!(
            (
                b.origin_app_id.as_str(),
                b.origin_key_fingerprint.as_str(),
                b.origin_api_id.as_str()
            ),
            ("mobile", MOBILE_FP, "storefront"),
            "chain {i}: {b:?}"
        );
        // The other end of A's call: A's hop and parent, found by trace.
        assert_eq!(
            (b.hop, b.parent_conn_id, b.parent_ts, b.origin_by.as_str()),
            (2, checkout.conn_id, checkout.ts.0, "trace"),
            "chain {i}"
        );
        let l = &after[&ledger.conn_id];
        assert_eq!(
            (
                l.origin_app_id.as_str(),
                l.hop,
                l.parent_conn_id,
                l.origin_by.as_str()
            ),
            ("mobile", 3, pay_b.conn_id, "causal"),
            "chain {i}: the ledger call keeps its local parent, one hop below the joined one"
        );
    }
    let rid = &after[&7_002];
    assert_eq!(
        (
            rid.origin_app_id.as_str(),
            rid.hop,
            rid.parent_conn_id,
            rid.origin_by.as_str()
        ),
        ("mobile", 1, before[&7_001].parent_conn_id, "request_id"),
        "joined by request id"
    );
    for conn in [8_001, 8_002] {
        assert_eq!(after[&conn], before[&conn], "conn {conn} is not joined");
        assert_eq!(after[&conn].origin_by, "self");
    }
    let again = join_window(&c, from, to, 1_000_000)
        .await
        .expect("join again");
    assert_eq!((again.filled, again.passes), (0, 1), "nothing left to join");

    // The UI's origin sections over the joined data.
    let state = UiState {
        source: Source::ClickHouse(ui::clickhouse::ClickHouseSource::new(c.clone())),
        registry: Arc::new(|| Arc::new(RegistryRows::default())),
        token: None,
    };
    let (addr, server) = ui::serve("127.0.0.1:0".parse().unwrap(), state)
        .await
        .expect("bind the UI");
    tokio::spawn(server);
    let range = format!("from={}&to={}", T0_S - 60, T0_S + SPAN_S + 60);
    let failed = (0..CALLS).filter(|i| ledger_fails(*i)).count() as u64;

    let d = get(addr, &format!("/api/apps/mobile/downstream?{range}")).await;
    assert_eq!(d["available"], true);
    let services: Vec<(String, u64, u64, u64)> = d["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| {
            (
                s["service"].as_str().unwrap().to_string(),
                s["calls"].as_u64().unwrap(),
                s["errors"].as_u64().unwrap(),
                s["max_hop"].as_u64().unwrap(),
            )
        })
        .collect();
    // checkout is left out: mobile calls it directly as well. The request id pair adds one payments call.
    assert_eq!(
        services,
        vec![
            ("payments-internal".to_string(), CALLS + 1, 0, 2),
            ("ledger".to_string(), CALLS, failed, 3),
        ],
        "{d:#}"
    );
    assert_eq!(d["calls"].as_u64(), Some(2 * CALLS + 1));
    assert_eq!(d["errors"].as_u64(), Some(failed));
    let ledger = &d["services"][1];
    assert!(
        (ledger["avg_ms"].as_f64().unwrap() - 20.0).abs() < 1e-9,
        "{ledger}"
    );
    assert!((ledger["error_rate"].as_f64().unwrap() - failed as f64 / CALLS as f64).abs() < 1e-9);

    let comp = get(addr, &format!("/api/apis/storefront/composition?{range}")).await;
    assert_eq!(comp["external_calls"].as_u64(), Some(CALLS), "{comp:#}");
    let edges: Vec<(String, String, u64, u64, u64, f64)> = comp["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["source"].as_str().unwrap().to_string(),
                e["target"].as_str().unwrap().to_string(),
                e["hop"].as_u64().unwrap(),
                e["calls"].as_u64().unwrap(),
                e["errors"].as_u64().unwrap(),
                e["per_call"].as_f64().unwrap(),
            )
        })
        .collect();
    let s = |x: &str| x.to_string();
    assert_eq!(
        edges,
        vec![
            (s("storefront"), s("checkout"), 1, CALLS, 0, 1.0),
            (s("checkout"), s("payments-internal"), 2, CALLS, 0, 1.0),
            (s("payments-internal"), s("ledger"), 3, CALLS, failed, 1.0),
        ],
        "{comp:#}"
    );
    let nodes: Vec<(String, u64)> = serde_json::from_value(comp["nodes"].clone()).expect("nodes");
    assert_eq!(
        nodes,
        vec![
            (s("storefront"), 0),
            (s("checkout"), CALLS),
            (s("payments-internal"), CALLS),
            (s("ledger"), CALLS)
        ]
    );
    // An application with no origin traffic has an empty section, not an error.
    let none = get(addr, &format!("/api/apps/nobody/downstream?{range}")).await;
    assert_eq!(
        (none["available"].as_bool(), none["calls"].as_u64()),
        (Some(true), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_says_origin_needs_clickhouse() {
    let store = Arc::new(ui::memory::MemoryStore::new());
    let state = UiState {
        source: Source::Memory(store),
        registry: Arc::new(|| Arc::new(RegistryRows::default())),
        token: None,
    };
    let (addr, server) = ui::serve("127.0.0.1:0".parse().unwrap(), state)
        .await
        .expect("bind the UI");
    tokio::spawn(server);
    let d = get(addr, "/api/apps/mobile/downstream?range=1h").await;
    assert_eq!(
        (d["available"].as_bool(), d["calls"].as_u64()),
        (Some(false), Some(0))
    );
    let c = get(addr, "/api/apis/storefront/composition?range=1h").await;
    assert_eq!(c["available"].as_bool(), Some(false));
    let _ = (Side::Both, OriginBy::Causal);
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}\n{body}");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}
