//! Criterion benchmark of the per-exchange userspace path: a keep-alive HTTP/1.1 request and its response, as the
//! kernel hands them over (two ring-buffer data records), through reassembly and pairing, then enrichment and NDJSON
//! encoding (or RowBinary, as the ClickHouse sink encodes). Its time per exchange is what the agent's CPU costs per event (see BENCHMARKS.md).
#![forbid(unsafe_code)]
mod common;
use common::{response, v4};
use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use observer::cgroups::MapResolver;
use observer::enrich;
use observer::event::{Exchange, Timestamp};
use observer::flow::{Engine, FlowConfig};
use observer::origin::{OriginConfig, Tracker};
use observer::registry::{load_str, KeySecret, Snapshot};
use observer_common::{DataHeader, DATA_FLAG_START, EVENT_DATA, HOOK_CGROUP_EGRESS};

const REQUEST: &[u8] = b"GET /v1/orders/12345 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\n\
Accept: application/json\r\nX-Api-Key: sk_live_bench_0123456789\r\nX-Request-Id: 4bf92f3577b34da6a3ce929d0e0e4736\r\n\r\n";

/// One loopback connection seen by cgroup egress on both ends: client 127.0.0.1:40000, server 127.0.0.2:8080.
struct Conn {
    engine: Engine,
    seq: [u32; 2],
    now: u64,
    resp: Vec<u8>,
    /// Heads the engine noted (with `report_started`), for the origin tracker.
    started: Vec<observer::flow::Started>,
}

impl Conn {
    /// `report_started`: the engine notes every head, as the agent runs it (for `origin`).
    fn new(report_started: bool) -> Self {
        let resolver = MapResolver(HashMap::from([
            (11, "/user.slice/client.scope".to_string()),
            (22, "/system.slice/nginx.service".to_string()),
        ]));
        Conn {
            engine: Engine::new(
                FlowConfig {
                    report_started,
                    ..FlowConfig::default()
                },
                Box::new(resolver),
            ),
            seq: [1_000, 9_000_000],
            now: 1_000_000_000,
            resp: response(),
            started: Vec::new(),
        }
    }

    fn record(&mut self, dir: usize, payload: &[u8]) {
        let (src, sport, dst, dport, cookie, cgroup, pid, name): (_, _, _, _, _, _, u32, &[u8]) =
            if dir == 0 {
                (v4(1), 40000, v4(2), 8080, 1001, 11, 4242, b"curl")
            } else {
                (v4(2), 8080, v4(1), 40000, 2002, 22, 777, b"nginx")
            };
        let mut comm = [0u8; 16];
        comm[..name.len()].copy_from_slice(name);
        let hdr = DataHeader {
            kind: EVENT_DATA,
            hook: HOOK_CGROUP_EGRESS,
            ts_ns: self.now,
            cookie,
            cgroup_id: cgroup,
            pid_tgid: (u64::from(pid) << 32) | u64::from(pid),
            comm,
            saddr: src,
            daddr: dst,
            sport,
            dport,
            seq: self.seq[dir],
            payload_len: payload.len() as u32,
            cap_len: payload.len() as u32,
            flags: DATA_FLAG_START,
            ack: 0,
        };
        self.seq[dir] = self.seq[dir].wrapping_add(payload.len() as u32);
        self.now += 20_000;
        self.engine.on_data(&hdr, payload);
    }

    /// One request and its response; the exchange lands in `out`.
    fn exchange(&mut self, out: &mut Vec<Exchange>) {
        self.record(0, REQUEST);
        let resp = std::mem::take(&mut self.resp);
        self.record(1, &resp);
        self.resp = resp;
        self.engine.drain(out);
        self.engine.drain_started(&mut self.started);
    }
}

/// One exchange as the agent runs it with `--origin`: flow (head notes), enrichment, the origin tracker; what it
/// decided is left in `events`.
fn through_origin(
    conn: &mut Conn,
    out: &mut Vec<Exchange>,
    snap: &Snapshot,
    tracker: &mut Tracker,
    now: &mut Timestamp,
    events: &mut Vec<observer::event::Event>,
) {
    conn.exchange(out);
    now.0 += 1;
    for s in conn.started.drain(..) {
        tracker.started(&s, *now);
    }
    let mut ex = out.pop().expect("exchange");
    enrich::enrich(snap, &mut ex);
    tracker.complete(ex, *now);
    tracker.tick(*now);
    tracker.drain(events);
}

fn bench(c: &mut Criterion) {
    let secret = KeySecret::from_bytes(b"bench-secret-0123456789abcdef");
    let registry = r#"version: 1
teams: [{id: shop, name: Shop, line_of_business: Retail, alert_contact: a@example.com}]
apis:
  - id: orders-api
    name: Orders API
    owner: shop
    match: {hosts: api.example.com, base_path: /v1/orders}
    routes: ["GET /v1/orders/{id}"]
"#;
    let loaded = load_str(registry, Path::new("."), &secret)
        .unwrap_or_else(|p| panic!("bench registry invalid: {p:?}"));
    let snap = Snapshot::build(loaded.registry, secret, 0, None, None);

    let mut conn = Conn::new(false);
    let mut out = Vec::with_capacity(16);
    conn.exchange(&mut out);
    assert_eq!(
        out.len(),
        1,
        "one request and one response make one exchange"
    );
    out.clear();

    let mut g = c.benchmark_group("per_exchange");
    g.throughput(Throughput::Elements(1));
    g.bench_function("flow_reassemble_parse_pair", |b| {
        b.iter(|| {
            conn.exchange(&mut out);
            black_box(out.pop());
        })
    });
    let mut line = Vec::with_capacity(2048);
    g.bench_function("flow_enrich_ndjson", |b| {
        b.iter(|| {
            conn.exchange(&mut out);
            let mut ex = out.pop().expect("exchange");
            enrich::enrich(&snap, &mut ex);
            line.clear();
            observer::sink::ndjson::write_event(&ex.event, &mut line);
            line.push(b'\n');
            black_box(&line);
        })
    });
    // The agent's default path with the ClickHouse sink: the row encoded into the insert buffer.
    let mut rows = Vec::with_capacity(1 << 20);
    g.bench_function("flow_enrich_rowbinary", |b| {
        b.iter(|| {
            conn.exchange(&mut out);
            let mut ex = out.pop().expect("exchange");
            enrich::enrich(&snap, &mut ex);
            if rows.len() > (1 << 20) - 4096 {
                rows.clear();
            }
            observer::sink::clickhouse::rowbinary::encode_event(&mut rows, &ex.event);
            black_box(&rows);
        })
    });
    // As the agent runs: heads noted, then every exchange through the origin tracker after enrichment.
    let mut conn = Conn::new(true);
    let mut tracker = Tracker::new(OriginConfig::default());
    let mut events = Vec::new();
    let mut now = Timestamp(1_764_000_000_000_000);
    g.bench_function("flow_notes_enrich_origin", |b| {
        b.iter(|| {
            through_origin(
                &mut conn,
                &mut out,
                &snap,
                &mut tracker,
                &mut now,
                &mut events,
            );
            black_box(events.pop());
        })
    });
    let mut conn = Conn::new(true);
    // The agent's whole path with --origin: flow_enrich_ndjson plus head notes and the tracker, so the two differ
    // only by what origin costs.
    g.bench_function("flow_notes_enrich_origin_ndjson", |b| {
        b.iter(|| {
            through_origin(
                &mut conn,
                &mut out,
                &snap,
                &mut tracker,
                &mut now,
                &mut events,
            );
            let ev = events.pop().expect("decided at once");
            line.clear();
            observer::sink::ndjson::write_event(&ev, &mut line);
            line.push(b'\n');
            black_box(&line);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
