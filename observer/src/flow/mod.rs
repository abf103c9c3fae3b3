//! Reassembly and pairing: ring-buffer records (captured TCP segments, socket lifecycle) in, one [`Exchange`] per
//! HTTP request out.
//!
//! The [`Engine`] keeps a bounded table of connections (keyed by their two endpoints, so the sender's and the
//! receiver's observation of locally looped traffic meet in one place) and a bounded table of local sockets (process
//! identity by socket cookie). Connections and sockets beyond the caps are evicted least recently used first, and
//! every eviction, drop and oddity is counted in [`FlowStats`].
mod conn;
mod evicted;
mod lru;
mod pairing;
mod stats;
mod stream;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv6Addr};

use observer_common::{
    ConnEvent, DataHeader, CONN_CLOSE, CONN_CONNECT, DATA_FLAG_START, DEFAULT_CAPTURE, EVENT_DATA,
    HOOK_CGROUP_EGRESS, HOOK_CGROUP_INGRESS, HOOK_TC_EGRESS, HOOK_TC_INGRESS, MAX_CAPTURE,
};

use self::conn::{Conn, ConnKey, Ctx, Endpoint};
use self::evicted::Tombstone;
use self::lru::Lru;
use self::pairing::Done;
pub use self::stats::{FlowCounters, FlowStats};
use crate::cgroups::CgroupResolver;
use crate::event::{
    Event, Exchange, Exchanges, Interner, RequestExtras, SharedStr, Side, Timestamp,
};
use crate::http;

/// Engine settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowConfig {
    /// Added to CLOCK_MONOTONIC ns (record times) to get Unix ns; see [`mono_to_unix_offset_ns`].
    pub mono_to_unix_offset_ns: i64,
    /// Bytes the kernel captures per message (must match its configuration).
    pub capture_bytes: u32,
    /// Connections tracked at once; the least recently active one is evicted beyond that.
    pub max_connections: usize,
    /// Requests awaiting a response per connection and direction; the oldest is handed over beyond that.
    pub max_pending_per_connection: usize,
    /// A connection silent this long is finalized and dropped; a response that cannot be delimited is finalized
    /// after its direction was silent this long.
    pub idle_timeout_ns: u64,
    /// Note every request and response head as it is parsed ([`Engine::drain_started`]), for `origin`.
    pub report_started: bool,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            mono_to_unix_offset_ns: 0,
            capture_bytes: DEFAULT_CAPTURE,
            // 100k connections and more tracked (README "Memory bounds": ~1.2 KB each).
            max_connections: 131_072,
            max_pending_per_connection: 64,
            idle_timeout_ns: 60_000_000_000,
            report_started: false,
        }
    }
}

pub use crate::clock::mono_to_unix_offset_ns;

/// What serves a request, as far as the engine knows when it notes a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Not known yet (a fresh server socket's process is learned from its first answer).
    Unknown,
    /// A local socket of this process.
    Local(u32),
    /// No local socket: the server is elsewhere.
    Remote,
}

/// A head the engine just parsed (with [`FlowConfig::report_started`]): requests in flight, for `origin`.
/// `conn_id` and the request's `ts` are those its exchange will carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    Request {
        conn_id: u64,
        ts: Timestamp,
        /// The sending process when the client end is local, else 0.
        client_pid: u32,
        server: Peer,
        /// [`crate::origin::id_hashes`] of its `traceparent` and `X-Request-Id` (0: none).
        trace: u64,
        request_id: u64,
    },
    /// The final response head of the request (`conn_id`, `req_ts`) at `ts`.
    Response {
        conn_id: u64,
        req_ts: Timestamp,
        ts: Timestamp,
        server: Peer,
    },
}

/// What is known about one local socket, by cookie: who owns it, no more (its endpoints are in every record and
/// close event that names it, so they are not kept: 32 bytes an identity, two per local connection).
#[derive(Debug, Clone, Default)]
struct SockInfo {
    /// From connect() (reliable), else from the first egress record of the socket.
    pid: u32,
    comm: SharedStr,
    cgroup_id: u64,
}

/// Process names as shared strings, one copy per distinct name (sockets of one program share it).
#[derive(Default)]
struct Comms(std::collections::HashMap<[u8; 16], SharedStr, foldhash::fast::RandomState>);

/// Distinct process names kept; the cache starts over beyond that (names are few: programs, not processes).
const MAX_COMMS: usize = 4096;

impl Comms {
    fn get(&mut self, comm: &[u8; 16]) -> SharedStr {
        if let Some(s) = self.0.get(comm) {
            return s.share();
        }
        if self.0.len() >= MAX_COMMS {
            self.0.clear();
        }
        let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
        let s = SharedStr::from(String::from_utf8_lossy(&comm[..end]).as_ref());
        self.0.insert(*comm, s.clone());
        s
    }
}

fn ip(addr: [u8; 16]) -> IpAddr {
    Ipv6Addr::from(addr).to_canonical()
}

/// Stable id of a connection no local socket owns (TC only): FNV-1a of its endpoints, top bit set so it cannot
/// collide with a socket cookie.
fn tuple_id(key: &ConnKey) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (addr, port) in key.ends {
        for b in addr.iter().chain(port.to_be_bytes().iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h | (1 << 63)
}

/// Rebuilds HTTP exchanges from captured segments; see the module documentation.
pub struct Engine {
    cfg: FlowConfig,
    /// Boxed: the table's slots stay small (a map sized for its load holds spare slots), and grow by moving pointers.
    conns: Lru<ConnKey, Box<Conn>>,
    /// Connections evicted from `conns` (at most `max_connections`), until their close or a new connection on the
    /// same endpoints; see `evicted.rs`.
    evicted: Lru<ConnKey, Tombstone>,
    socks: Lru<u64, SockInfo>,
    comms: Comms,
    reports: Reports,
    /// Requests a record finished, reused from record to record.
    done: Vec<Done>,
    started: Vec<Started>,
    stats: FlowCounters,
}

impl Engine {
    pub fn new(mut cfg: FlowConfig, resolver: Box<dyn CgroupResolver>) -> Self {
        cfg.capture_bytes = cfg.capture_bytes.clamp(1, MAX_CAPTURE as u32);
        cfg.max_connections = cfg.max_connections.max(1);
        cfg.max_pending_per_connection = cfg.max_pending_per_connection.max(1);
        Engine {
            cfg,
            conns: Lru::new(),
            evicted: Lru::new(),
            socks: Lru::new(),
            comms: Comms::default(),
            reports: Reports {
                resolver,
                out: Exchanges::default(),
                strings: Interner::new(MAX_SHARED_STRINGS),
            },
            done: Vec::new(),
            started: Vec::new(),
            stats: FlowCounters::default(),
        }
    }

    pub fn config(&self) -> &FlowConfig {
        &self.cfg
    }

    /// A `DataHeader` record and the `cap_len` payload bytes that followed it.
    pub fn on_data(&mut self, hdr: &DataHeader, payload: &[u8]) {
        if hdr.kind != EVENT_DATA || hdr.cap_len > hdr.payload_len {
            self.stats.malformed.inc();
            return;
        }
        let payload = &payload[..payload.len().min(hdr.cap_len as usize)];
        let src: Endpoint = (hdr.saddr, hdr.sport);
        let dst: Endpoint = (hdr.daddr, hdr.dport);
        let (key, dir) = ConnKey::new(src, dst);
        let (local_end, egress) = match hdr.hook {
            HOOK_CGROUP_EGRESS | HOOK_TC_EGRESS => (dir, true),
            HOOK_CGROUP_INGRESS | HOOK_TC_INGRESS => (1 - dir, false),
            _ => {
                self.stats.malformed.inc();
                return;
            }
        };
        // One lookup for a tracked connection. A record of an untracked one may start it: in a full table, the
        // oldest connection makes room first.
        if self.conns.len() >= self.cfg.max_connections && !self.conns.contains(&key) {
            let Some(conn) = new_conn(
                &mut self.evicted,
                &self.cfg,
                &self.stats,
                key,
                local_end,
                hdr,
            ) else {
                return;
            };
            self.evict_oldest_connection(hdr.ts_ns);
            self.conns.insert(key, conn);
        }
        let (evicted, cfg, stats) = (&mut self.evicted, &self.cfg, &self.stats);
        let Ok(conn) = self.conns.get_or_try_insert_with(key, || {
            new_conn(evicted, cfg, stats, key, local_end, hdr).ok_or(())
        }) else {
            return;
        };
        let info = learn_socket(
            &mut self.socks,
            &mut self.comms,
            &self.stats,
            self.cfg.max_connections,
            hdr,
            egress,
        );
        let end = &mut conn.ends[local_end];
        end.local = true;
        if let Some(info) = info {
            end.cookie = hdr.cookie;
            if info.cgroup_id != 0 {
                end.cgroup_id = info.cgroup_id;
            }
            if info.pid != 0 && (end.pid != info.pid || end.comm != info.comm) {
                end.pid = info.pid;
                end.comm.clone_from(&info.comm);
            }
        } else if hdr.cgroup_id != 0 {
            end.cgroup_id = hdr.cgroup_id;
        }
        let mut done = std::mem::take(&mut self.done);
        let mut ctx = Ctx {
            cfg: &self.cfg,
            stats: &self.stats,
            started: &mut self.started,
            done: &mut done,
        };
        conn.on_data(dir, hdr, payload, &mut ctx);
        // The connection is at hand: no second lookup to report what the record finished.
        self.reports.push(&self.cfg, &self.stats, conn, &mut done);
        self.done = done;
    }

    /// A `ConnEvent` record from sock_ops.
    pub fn on_conn(&mut self, ev: &ConnEvent) {
        let local = (ev.lport != 0).then_some((ev.laddr, ev.lport));
        let remote = (ev.rport != 0).then_some((ev.raddr, ev.rport));
        match ev.op {
            CONN_CONNECT => {
                if ev.cookie == 0 {
                    return;
                }
                let info = sock_entry(
                    &mut self.socks,
                    &self.stats,
                    self.cfg.max_connections,
                    ev.cookie,
                );
                if ev.cgroup_id != 0 {
                    info.cgroup_id = ev.cgroup_id;
                }
                if ev.pid_tgid != 0 {
                    info.pid = (ev.pid_tgid >> 32) as u32;
                    info.comm = self.comms.get(&ev.comm);
                }
                if let (Some(l), Some(r)) = (local, remote) {
                    // A new connection on these endpoints: what was evicted of an earlier one no longer applies.
                    self.evicted.remove(&ConnKey::new(l, r).0);
                }
            }
            CONN_CLOSE => self.on_close(ev, local, remote),
            // The kernel sends no record when a socket is established (CONN_ACTIVE_ESTABLISHED,
            // CONN_PASSIVE_ESTABLISHED): the agent's own object is embedded, so no older kernel side sends one.
            _ => {
                self.stats.malformed.inc();
            }
        }
    }

    fn on_close(&mut self, ev: &ConnEvent, local: Option<Endpoint>, remote: Option<Endpoint>) {
        self.socks.remove(&ev.cookie);
        // sock_ops reads both endpoints from the socket itself, so a close names its connection.
        let (Some(local), Some(remote)) = (local, remote) else {
            return;
        };
        let (key, sent_dir) = ConnKey::new(local, remote);
        self.evicted.remove(&key);
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        let mut ends = [None; 2];
        if ev.snd_nxt != 0 || ev.rcv_nxt != 0 {
            ends[sent_dir] = Some(ev.snd_nxt);
            ends[1 - sent_dir] = Some(ev.rcv_nxt);
        }
        let mut done = Vec::new();
        let mut ctx = Ctx {
            cfg: &self.cfg,
            stats: &self.stats,
            started: &mut self.started,
            done: &mut done,
        };
        conn.finalize(ends, &mut ctx);
        self.emit_from(&conn, done);
    }

    /// Evicts the least recently used connection (at record time `now`), leaving its tombstone.
    fn evict_oldest_connection(&mut self, now: u64) {
        let Some((key, mut conn)) = self.conns.pop_oldest() else {
            return;
        };
        self.stats.evicted[0].inc();
        while self.evicted.len() >= self.cfg.max_connections {
            if self.evicted.pop_oldest().is_none() {
                break;
            }
        }
        self.evicted.insert(key, Tombstone::of(&conn, now));
        let mut done = Vec::new();
        let mut ctx = Ctx {
            cfg: &self.cfg,
            stats: &self.stats,
            started: &mut self.started,
            done: &mut done,
        };
        conn.finalize([None, None], &mut ctx);
        self.emit_from(&conn, done);
    }

    /// Time-outs; call about once a second with the current CLOCK_MONOTONIC time.
    pub fn tick(&mut self, now_mono_ns: u64) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            let mut done = Vec::new();
            let Some(conn) = self.conns.peek_mut(&key) else {
                continue;
            };
            let mut ctx = Ctx {
                cfg: &self.cfg,
                stats: &self.stats,
                started: &mut self.started,
                done: &mut done,
            };
            if conn.expire(now_mono_ns, &mut ctx) {
                conn.finalize([None, None], &mut ctx);
                ctx.stats.idle_connections.inc();
                if let Some(conn) = self.conns.remove(&key) {
                    self.emit_from(&conn, done);
                }
            } else {
                self.emit(&key, done);
            }
        }
        self.set_table_gauges();
    }

    /// Finalizes every connection (shutdown): every request still held is handed out.
    pub fn finish(&mut self) {
        while let Some((_, mut conn)) = self.conns.pop_oldest() {
            let mut done = Vec::new();
            let mut ctx = Ctx {
                cfg: &self.cfg,
                stats: &self.stats,
                started: &mut self.started,
                done: &mut done,
            };
            conn.finalize([None, None], &mut ctx);
            self.emit_from(&conn, done);
        }
        self.set_table_gauges();
    }

    /// Moves the finished exchanges into `out`.
    pub fn drain(&mut self, out: &mut Exchanges) {
        out.append(&mut self.reports.out);
    }

    /// Moves the heads noted since the last call into `out` (always empty without `report_started`).
    pub fn drain_started(&mut self, out: &mut Vec<Started>) {
        out.append(&mut self.started);
    }

    /// The live counters, to register on `/metrics`.
    pub fn counters(&self) -> &FlowCounters {
        &self.stats
    }

    /// The counters now, with the table sizes counted now.
    pub fn stats(&self) -> FlowStats {
        self.set_table_gauges();
        self.stats.snapshot()
    }

    /// Sets the table-size gauges (counting pending requests walks every connection: done per tick, not per record).
    fn set_table_gauges(&self) {
        let pending: usize = self.conns.values().map(|c| c.pending_len()).sum();
        for (g, n) in self
            .stats
            .tables
            .iter()
            .zip([self.conns.len(), pending, self.socks.len()])
        {
            g.set(n as i64);
        }
    }

    fn emit(&mut self, key: &ConnKey, mut done: Vec<Done>) {
        if done.is_empty() {
            return;
        }
        if let Some(conn) = self.conns.peek(key) {
            self.reports.push(&self.cfg, &self.stats, conn, &mut done);
        }
    }

    fn emit_from(&mut self, conn: &Conn, mut done: Vec<Done>) {
        self.reports.push(&self.cfg, &self.stats, conn, &mut done);
    }
}

/// Where finished exchanges are built and wait for [`Engine::drain`].
struct Reports {
    resolver: Box<dyn CgroupResolver>,
    out: Exchanges,
    /// Methods, hosts and user agents, one shared copy each.
    strings: Interner,
}

/// Distinct methods, hosts and user agents shared at once (see [`Interner`]).
pub const MAX_SHARED_STRINGS: usize = 8192;

impl Reports {
    /// Appends an exchange for each request of `conn` in `done`, emptying `done`.
    fn push(&mut self, cfg: &FlowConfig, stats: &FlowCounters, conn: &Conn, done: &mut Vec<Done>) {
        // Built from where each request lies, by reference: moving a `Done` (about 280 bytes) out of the vector and
        // into the builder's frame were two copies per exchange.
        for d in done.iter_mut() {
            self.out.push(build_exchange(
                cfg,
                &mut *self.resolver,
                &mut self.strings,
                conn,
                d,
            ));
            stats.exchanges.inc();
        }
        done.clear();
    }
}

/// The connection a record of `key` starts, untracked until now: revived from its tombstone when the record continues
/// an evicted connection (see `evicted.rs`), new when it starts a message; None, counted out of order, otherwise.
fn new_conn(
    evicted: &mut Lru<ConnKey, Tombstone>,
    cfg: &FlowConfig,
    stats: &FlowCounters,
    key: ConnKey,
    local_end: usize,
    hdr: &DataHeader,
) -> Option<Box<Conn>> {
    // A tombstone older than the idle timeout, or whose socket at this end was another, is of an earlier connection
    // on the same endpoints.
    let tomb = evicted.remove(&key).filter(|t| {
        hdr.ts_ns.saturating_sub(t.ts) < cfg.idle_timeout_ns && t.continues(local_end, hdr.cookie)
    });
    if tomb.is_none() && hdr.flags & DATA_FLAG_START == 0 {
        stats.out_of_order.inc();
        return None;
    }
    let mut conn = Box::new(Conn::new(key, hdr.ts_ns));
    if let Some(t) = tomb {
        t.revive(&mut conn);
    }
    Some(conn)
}

/// The socket table's entry for `cookie`, marked most recently used; created when absent, after evicting the
/// oldest sockets while the table holds `2 * max_connections`.
fn sock_entry<'a>(
    socks: &'a mut Lru<u64, SockInfo>,
    stats: &FlowCounters,
    max_connections: usize,
    cookie: u64,
) -> &'a mut SockInfo {
    let cap = max_connections.saturating_mul(2);
    if socks.len() >= cap && !socks.contains(&cookie) {
        while socks.len() >= cap {
            if socks.pop_oldest().is_none() {
                break;
            }
            stats.evicted[2].inc();
        }
    }
    socks.get_or_insert_with(cookie, SockInfo::default)
}

/// Records what a data record tells about its local socket and returns what is known of it; None when the record
/// names no socket (cookie 0).
fn learn_socket<'a>(
    socks: &'a mut Lru<u64, SockInfo>,
    comms: &mut Comms,
    stats: &FlowCounters,
    max_connections: usize,
    hdr: &DataHeader,
    egress: bool,
) -> Option<&'a SockInfo> {
    if hdr.cookie == 0 {
        return None;
    }
    let info = sock_entry(socks, stats, max_connections, hdr.cookie);
    if hdr.cgroup_id != 0 {
        info.cgroup_id = hdr.cgroup_id;
    }
    if egress && info.pid == 0 && hdr.pid_tgid != 0 {
        info.pid = (hdr.pid_tgid >> 32) as u32;
        info.comm = comms.get(&hdr.comm);
    }
    Some(info)
}

/// The `conn_id` of the exchanges whose requests travel in direction `dir` of `conn`: the client socket's cookie
/// when local, else the server socket's, else [`tuple_id`].
pub(crate) fn exchange_conn_id(conn: &Conn, dir: usize) -> u64 {
    let (client, server) = (&conn.ends[dir], &conn.ends[1 - dir]);
    if client.local && client.cookie != 0 {
        client.cookie
    } else if server.cookie != 0 {
        server.cookie
    } else {
        tuple_id(&conn.key)
    }
}

/// Wall-clock time of a record time (CLOCK_MONOTONIC ns).
pub(crate) fn unix_time(cfg: &FlowConfig, mono_ns: u64) -> Timestamp {
    let unix_ns = i128::from(mono_ns) + i128::from(cfg.mono_to_unix_offset_ns);
    Timestamp((unix_ns / 1000) as i64)
}

fn build_exchange(
    cfg: &FlowConfig,
    resolver: &mut dyn CgroupResolver,
    strings: &mut Interner,
    conn: &Conn,
    d: &mut Done,
) -> Exchange {
    let (dir, p) = (d.dir, &mut d.p);
    let client = &conn.ends[dir];
    let server = &conn.ends[1 - dir];
    let (src, dst) = (conn.key.ends[dir], conn.key.ends[1 - dir]);
    let side = match (client.local, server.local) {
        (true, true) => Side::Both,
        (false, true) => Side::Server,
        _ => Side::Client,
    };
    let conn_id = exchange_conn_id(conn, dir);
    let mut cgroup = |e: &conn::EndInfo| {
        if e.local && e.cgroup_id != 0 {
            resolver.path(e.cgroup_id)
        } else {
            SharedStr::default()
        }
    };
    let client_cgroup = cgroup(client);
    let server_cgroup = cgroup(server);
    let req = &mut p.req;
    let span = |start: u32, end: Option<u32>| u64::from(end.map_or(0, |e| e.wrapping_sub(start)));
    let req_bytes = span(p.req_start, p.req_end);
    let (status, resp_bytes, duration_us, resp_truncated, resp_incomplete) = match &p.resp {
        Some(r) => (
            r.status,
            p.interim_bytes + span(r.start, r.end),
            if r.status != 0 {
                r.head_ts.saturating_sub(p.req_ts) / 1000
            } else {
                0
            },
            r.truncated,
            r.incomplete,
        ),
        None => (0, p.interim_bytes, 0, false, false),
    };
    let anomalies = req.anomalies
        | p.resp
            .as_ref()
            .map_or(http::Anomalies::NONE, |r| r.anomalies);
    // Looked up once: enrichment hashes both from where they were found.
    let propagated = crate::event::PropagatedAt {
        request_id: req.headers.find("x-request-id"),
        traceparent: req.headers.find("traceparent"),
    };
    let value = |at: Option<http::ValueAt>| at.map(|at| req.headers.value_at(at));
    let request_id = match value(propagated.request_id) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ => value(propagated.traceparent)
            .and_then(http::traceparent_trace_id)
            .unwrap_or_default()
            .to_string(),
    };
    let event = Event {
        ts: unix_time(cfg, p.req_ts),
        duration_us,
        side,
        method: strings.get(req.method()),
        host: strings.get(req.host()),
        path: req.path().to_string(),
        query_keys: http::query_keys(req.query()),
        status,
        req_bytes,
        resp_bytes,
        src_ip: ip(src.0),
        src_port: src.1,
        dst_ip: ip(dst.0),
        dst_port: dst.1,
        client_pid: if client.local { client.pid } else { 0 },
        client_comm: if client.local {
            client.comm.share()
        } else {
            SharedStr::default()
        },
        client_cgroup,
        server_pid: if server.local { server.pid } else { 0 },
        server_comm: if server.local {
            server.comm.share()
        } else {
            SharedStr::default()
        },
        server_cgroup,
        user_agent: strings.get(req.header("user-agent").unwrap_or_default()),
        request_id,
        truncated: p.req_truncated || resp_truncated,
        incomplete: p.req_incomplete || resp_incomplete,
        framing_anomaly: anomalies.names().map(str::to_string).collect(),
        conn_id,
        ..Event::default()
    };
    let raw_query = req.query().to_string();
    Exchange {
        event,
        request: RequestExtras {
            headers: std::mem::take(&mut req.headers),
            raw_query,
            body_prefix: p.req_body,
            propagated: Some(propagated),
        },
    }
}
