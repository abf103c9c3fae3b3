//! The per-exchange benches' traffic (`flow`, `replay`): keep-alive loopback connections, each exchange a request and
//! its response as cgroup egress hands them over (two ring-buffer data records), the registry that enriches them and
//! a cgroup resolver that answers from a cache as the agent's does.
use std::collections::HashMap;
use std::path::Path;

use observer::cgroups::CgroupResolver;
use observer::event::{Exchanges, SharedStr};
use observer::flow::{Engine, FlowConfig};
use observer::registry::{load_str, KeySecret, Snapshot};
use observer_common::{
    kernel_copy_len, DataHeader, DATA_FLAG_START, DATA_FLAG_TRUNCATED, DEFAULT_CAPTURE, EVENT_DATA,
    HOOK_CGROUP_EGRESS,
};

use super::common::{response, v4};

pub const REQUEST: &[u8] = b"GET /v1/orders/12345 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\n\
Accept: application/json\r\nX-Api-Key: sk_live_bench_0123456789\r\nX-Request-Id: 4bf92f3577b34da6a3ce929d0e0e4736\r\n\r\n";

/// The registry the exchanges are enriched against: their API, with a route for their path.
pub fn registry() -> Snapshot {
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
    Snapshot::build(loaded.registry, secret, 0, None, None)
}

/// cgroup paths by id from a cache built once, shared by reference count (as `FsCgroupResolver` answers).
struct Cached(HashMap<u64, SharedStr>);

impl CgroupResolver for Cached {
    fn path(&mut self, id: u64) -> SharedStr {
        self.0.get(&id).cloned().unwrap_or_default()
    }
}

/// `conns` keep-alive connections seen by cgroup egress on both ends: client 127.0.0.1:(40000 + i), server
/// 127.0.0.2:8080; exchanges go round them in turn.
pub struct Loopback {
    pub engine: Engine,
    /// Per connection: next sequence number per direction.
    seq: Vec<[u32; 2]>,
    next: usize,
    now: u64,
    resp: Vec<u8>,
    /// Heads the engine noted (with `report_started`), for the origin tracker.
    pub started: Vec<observer::flow::Started>,
}

impl Loopback {
    /// `report_started`: the engine notes every head, as the agent runs it (for `origin`).
    pub fn new(conns: usize, report_started: bool) -> Self {
        let resolver = Cached(HashMap::from([
            (11, SharedStr::from("/user.slice/client.scope")),
            (22, SharedStr::from("/system.slice/nginx.service")),
        ]));
        Loopback {
            engine: Engine::new(
                FlowConfig {
                    report_started,
                    ..FlowConfig::default()
                },
                Box::new(resolver),
            ),
            seq: vec![[1_000, 9_000_000]; conns.max(1)],
            next: 0,
            now: 1_000_000_000,
            resp: response(),
            started: Vec::new(),
        }
    }

    fn record(&mut self, conn: usize, dir: usize, payload: &[u8]) {
        let port = 40_000 + conn as u16;
        let (src, sport, dst, dport, cookie, cgroup, pid, name): (_, _, _, _, _, _, u32, &[u8]) =
            if dir == 0 {
                (
                    v4(1),
                    port,
                    v4(2),
                    8080,
                    1001 + 2 * conn as u64,
                    11,
                    4242,
                    b"curl",
                )
            } else {
                (
                    v4(2),
                    8080,
                    v4(1),
                    port,
                    1002 + 2 * conn as u64,
                    22,
                    777,
                    b"nginx",
                )
            };
        let mut comm = [0u8; 16];
        comm[..name.len()].copy_from_slice(name);
        let seq = &mut self.seq[conn][dir];
        // What the kernel copies: a response's head, not its Content-Length body.
        let (copy, _) = kernel_copy_len(payload, true, DEFAULT_CAPTURE as usize);
        let trunc = if copy < payload.len() {
            DATA_FLAG_TRUNCATED
        } else {
            0
        };
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
            seq: *seq,
            payload_len: payload.len() as u32,
            cap_len: copy as u32,
            flags: DATA_FLAG_START | trunc,
            ack: 0,
        };
        *seq = seq.wrapping_add(payload.len() as u32);
        self.now += 20_000;
        self.engine.on_data(&hdr, &payload[..copy]);
    }

    /// One request and its response on the next connection; the exchange lands in `out`.
    pub fn exchange(&mut self, out: &mut Exchanges) {
        let conn = self.next;
        self.next = (conn + 1) % self.seq.len();
        self.record(conn, 0, REQUEST);
        let resp = std::mem::take(&mut self.resp);
        self.record(conn, 1, &resp);
        self.resp = resp;
        self.engine.drain(out);
        self.engine.drain_started(&mut self.started);
    }
}
