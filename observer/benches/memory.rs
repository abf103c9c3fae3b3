//! Memory per tracked connection: N loopback connections, each with one completed keep-alive exchange seen by both
//! local ends (the client's connect event, then the request and response at egress and at ingress), left open
//! and idle, as `cargo xtask bench --workloads` holds 10k and 100k of them. A counting global allocator reports the
//! heap the flow engine holds for them, per connection (exchanges handed out are dropped first). Run with
//! `cargo bench -p observer --bench memory`; BENCHMARKS.md and README's "Memory bounds" quote it.
mod common;
use common::{response, v4};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use observer::cgroups::MapResolver;
use observer::flow::{Engine, FlowConfig};
use observer_common::{
    ConnEvent, DataHeader, CONN_CONNECT, DATA_FLAG_START, EVENT_CONN, EVENT_DATA,
    HOOK_CGROUP_EGRESS, HOOK_CGROUP_INGRESS,
};

/// The system allocator, counting the bytes live and their peak.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn note(delta: isize) {
    let now = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK.fetch_max(now.max(0) as usize, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` with the caller's layout and pointer unchanged; the counting has no
// effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        // SAFETY: same contract as ours, passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes through `alloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const REQUEST: &[u8] =
    b"GET / HTTP/1.1\r\nHost: bench\r\nX-Api-Key: sk_live_bench_0123456789\r\n\r\n";

fn comm(name: &str) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..name.len()].copy_from_slice(name.as_bytes());
    c
}

/// Connection `i`: client 127.0.0.(2 + i % 8):(1024 + i / 8), server 127.0.0.1:18183, as the idle workload opens them
/// (up to 500k distinct clients).
struct Loopback {
    client: ([u8; 16], u16),
    server: ([u8; 16], u16),
    cookies: [u64; 2],
    seq: [u32; 2],
}

impl Loopback {
    fn new(i: u32) -> Self {
        Loopback {
            client: (v4(2 + (i % 8) as u8), 1024 + (i / 8) as u16),
            server: (v4(1), 18183),
            cookies: [10 + 2 * u64::from(i), 11 + 2 * u64::from(i)],
            seq: [i.wrapping_mul(7919), i.wrapping_mul(104_729)],
        }
    }

    /// The client's connect() as sock_ops reports it (the server's accept sends no record).
    fn connect_event(&self, ts: u64) -> ConnEvent {
        ConnEvent {
            kind: EVENT_CONN,
            op: CONN_CONNECT,
            ts_ns: ts,
            cookie: self.cookies[0],
            cgroup_id: 11,
            pid_tgid: 4242u64 << 32,
            comm: comm("python3"),
            laddr: self.client.0,
            raddr: self.server.0,
            lport: self.client.1,
            rport: self.server.1,
            ..ConnEvent::default()
        }
    }

    /// `payload` sent in `dir` (0: client to server), seen at the sender's egress and the receiver's ingress.
    fn segment(&mut self, eng: &mut Engine, dir: usize, payload: &[u8], ts: u64) {
        let (src, dst) = if dir == 0 {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        for (hook, cookie) in [
            (HOOK_CGROUP_EGRESS, self.cookies[dir]),
            (HOOK_CGROUP_INGRESS, self.cookies[1 - dir]),
        ] {
            let hdr = DataHeader {
                kind: EVENT_DATA,
                hook,
                ts_ns: ts,
                cookie,
                cgroup_id: 11,
                pid_tgid: 4242 << 32,
                comm: comm(if dir == 0 { "python3" } else { "nginx" }),
                saddr: src.0,
                daddr: dst.0,
                sport: src.1,
                dport: dst.1,
                seq: self.seq[dir],
                payload_len: payload.len() as u32,
                cap_len: payload.len() as u32,
                flags: DATA_FLAG_START,
                ack: self.seq[1 - dir],
            };
            eng.on_data(&hdr, payload);
        }
        self.seq[dir] = self.seq[dir].wrapping_add(payload.len() as u32);
    }
}

/// Heap bytes the engine holds for `n` idle connections after one exchange each, and the peak while feeding them.
fn measure(n: u32, max_connections: usize) -> (f64, usize, u64) {
    let resolver = MapResolver(HashMap::from([(11, "/user.slice/bench.scope".to_string())]));
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before.max(0) as usize, Ordering::Relaxed);
    let mut eng = Engine::new(
        FlowConfig {
            max_connections,
            ..FlowConfig::default()
        },
        Box::new(resolver),
    );
    let resp = response();
    let mut out = observer::event::Exchanges::default();
    let mut ts = 1_000_000_000u64;
    for i in 0..n {
        let mut c = Loopback::new(i);
        eng.on_conn(&c.connect_event(ts));
        c.segment(&mut eng, 0, REQUEST, ts + 10_000);
        c.segment(&mut eng, 1, &resp, ts + 60_000);
        ts += 100_000;
        if out.len() >= 1024 {
            out.clear();
        }
        eng.drain(&mut out);
    }
    eng.drain(&mut out);
    // The agent ticks once a second: drained request queues are freed there.
    eng.tick(ts);
    let reported = out.len();
    drop(out);
    let stats = eng.stats();
    assert!(
        stats.exchanges == u64::from(n) && reported > 0,
        "every exchange reported: {stats:?}"
    );
    let live = LIVE.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before.max(0) as usize;
    // Per tracked connection, the evicted ones' tombstones and socket identities included.
    let per_conn = live as f64 / stats.connections.max(1) as f64;
    drop(eng);
    (per_conn, peak, stats.connections)
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a count to measure instead of the defaults.
    let counts: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let counts = if counts.is_empty() {
        vec![10_000, 100_000]
    } else {
        counts
    };
    let default_max = FlowConfig::default().max_connections;
    for n in counts {
        // Every connection tracked, then (beyond the default cap) as the agent runs by default: the oldest evicted.
        let mut caps = vec![n as usize];
        if n as usize > default_max {
            caps.push(default_max);
        }
        for max in caps {
            let (per_conn, peak, tracked) = measure(n, max);
            println!(
                "flow memory: {n} idle loopback connections after one exchange each, --max-connections {max}: \
                 {per_conn:.0} bytes per tracked connection ({tracked} tracked, {:.1} MiB held in all; peak {:.1} MiB \
                 while feeding)",
                per_conn * tracked as f64 / (1024.0 * 1024.0),
                peak as f64 / (1024.0 * 1024.0)
            );
        }
    }
}
