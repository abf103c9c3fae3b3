#![allow(dead_code)]
//! The origin tracker as it was before it was made cheap (commit 2af2063), kept for the bench only.
//! Origin across hops: on behalf of which application (and key, and API) each exchange was made, by finding the
//! inbound request it was made for on this node and copying that request's origin.
//!
//! Fed in stream order with the flow engine's [`Started`] notes (a request or response head was just parsed) and
//! the finished, enriched exchanges, it keeps the requests in flight (ids hashed, never raw header values or keys)
//! and decides each exchange's origin:
//! - hop 0, `self`: the exchange carries its own key, or no local process sent it (an edge call), or its client
//!   is identified by workload and made it while serving nothing;
//! - else its parent is an inbound request in flight when it started: one with the same W3C trace id (`trace`),
//!   else the same `X-Request-Id` (`request_id`), on the same process or, failing that, anywhere on the node;
//!   else the only inbound request in flight on the sending process's server sockets (`causal`); several there
//!   and no id decides: `ambiguous`, never a guess. The child gets hop = parent's hop + 1 and the parent's origin.
//!
//! A child usually finishes before its parent, and a fresh server socket's process is only known once it answers:
//! an exchange is held until every request that could be its parent is known and decided, at most
//! [`OriginConfig::max_hold_us`]; released undecided it says `none`. Tables are bounded; evictions are counted.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use observer::event::{AttributedBy, Event, Exchange, OriginBy, Side, Timestamp};
use observer::flow::{Peer, Started};
use observer::http::Headers;

/// Tracker settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginConfig {
    /// Requests remembered at once (in flight, or finished and still a possible parent); oldest evicted beyond.
    pub max_requests: usize,
    /// Exchanges held waiting for a decision; the oldest is released undecided beyond.
    pub max_held: usize,
    /// Longest an exchange is held (µs); then it is released with what is known (`none` if still undecided).
    pub max_hold_us: i64,
    /// A request never seen to finish is forgotten after this long (µs).
    pub max_request_age_us: i64,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            max_requests: 65_536,
            max_held: 65_536,
            max_hold_us: 10_000_000,
            max_request_age_us: 600_000_000,
        }
    }
}

/// Counters (monotonic) and gauges (`requests`, `held`) of the tracker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginStats {
    /// Exchanges decided, per way, in [`OriginBy::ALL`] order.
    pub decided: [u64; OriginBy::ALL.len()],
    /// Exchanges released undecided (held too long or too many held); counted under `none` as well.
    pub undecided: u64,
    /// Requests forgotten because the table was full.
    pub evicted_requests: u64,
    /// Requests forgotten because they never finished within `max_request_age_us`.
    pub expired_requests: u64,
    /// Gauge: requests remembered.
    pub requests: u64,
    /// Gauge: exchanges held.
    pub held: u64,
}

/// Hash of a propagated id (trace id or request id); 0 means none. Only hashes are kept.
fn id_hash(value: &str) -> u64 {
    let value = value.trim();
    if value.is_empty() {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in value.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

/// Hashes of the request's W3C trace id (`traceparent`) and `X-Request-Id`; 0 when absent.
fn id_hashes(headers: &Headers) -> (u64, u64) {
    let trace = headers
        .get("traceparent")
        .and_then(observer::http::traceparent_trace_id)
        .map_or(0, id_hash);
    let request = headers.get("x-request-id").map_or(0, id_hash);
    (trace, request)
}

/// A request: its connection id and start time, as in the event (`conn_id`, `ts`).
type Key = (u64, i64);

/// The context a request was made for, shared by everything made for it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Context {
    app_id: String,
    key_fingerprint: String,
    api_id: String,
}

/// A decided origin.
#[derive(Debug, Clone)]
struct Origin {
    ctx: Arc<Context>,
    hop: u16,
    by: OriginBy,
    parent: Option<Key>,
}

/// A request remembered as a possible parent.
#[derive(Debug)]
struct Request {
    start: i64,
    /// Process that sent it, when local (0: not local or unknown).
    client_pid: u32,
    server: Peer,
    /// When its response head was seen (µs); `None` while it is awaited.
    answered: Option<i64>,
    trace: u64,
    request_id: u64,
    /// Its exchange finished (reported or forgotten).
    finished: bool,
    origin: Option<Origin>,
    /// When it was registered (tracker time, µs).
    seen: i64,
}

impl Request {
    fn in_flight_at(&self, t: i64) -> bool {
        self.start <= t && self.answered.is_none_or(|a| a >= t)
    }
}

/// An exchange waiting for its origin.
#[derive(Debug)]
struct Held {
    event: Event,
    trace: u64,
    request_id: u64,
    since: i64,
}

/// Decides each exchange's origin; see the module documentation.
pub struct Tracker {
    cfg: OriginConfig,
    requests: HashMap<Key, Request>,
    /// Keys in registration order, for eviction and expiry (entries already removed are skipped).
    order: VecDeque<Key>,
    /// Requests by the pid of their local server end (known), and those whose server end is not known yet.
    by_server: HashMap<u32, HashSet<Key>>,
    unknown: HashSet<Key>,
    /// Requests by propagated id hash.
    by_id: HashMap<u64, HashSet<Key>>,
    held: VecDeque<Held>,
    out: Vec<Event>,
    stats: OriginStats,
}

/// What deciding an exchange came to.
enum Step {
    Decided(Origin),
    /// Something that could change the answer is not known yet.
    Wait,
}

impl Tracker {
    pub fn new(mut cfg: OriginConfig) -> Self {
        cfg.max_requests = cfg.max_requests.max(1);
        cfg.max_held = cfg.max_held.max(1);
        Tracker {
            cfg,
            requests: HashMap::new(),
            order: VecDeque::new(),
            by_server: HashMap::new(),
            unknown: HashSet::new(),
            by_id: HashMap::new(),
            held: VecDeque::new(),
            out: Vec::new(),
            stats: OriginStats::default(),
        }
    }

    /// A head the flow engine just parsed; `now` is the tracker's clock (µs).
    pub fn started(&mut self, s: &Started, now: Timestamp) {
        match *s {
            Started::Request {
                conn_id,
                ts,
                client_pid,
                server,
                trace,
                request_id,
            } => {
                let key = (conn_id, ts.0);
                if self.requests.contains_key(&key) {
                    return;
                }
                self.insert(
                    key,
                    Request {
                        start: ts.0,
                        client_pid,
                        server: Peer::Unknown,
                        answered: None,
                        trace,
                        request_id,
                        finished: false,
                        origin: None,
                        seen: now.0,
                    },
                );
                self.set_server(&key, server);
            }
            Started::Response {
                conn_id,
                req_ts,
                ts,
                server,
            } => {
                let key = (conn_id, req_ts.0);
                if let Some(r) = self.requests.get_mut(&key) {
                    r.answered.get_or_insert(ts.0);
                }
                self.set_server(&key, server);
                self.settle();
            }
        }
    }

    /// A finished, enriched exchange; its request headers are dropped here.
    pub fn complete(&mut self, ex: Exchange, now: Timestamp) {
        let (trace, request_id) = id_hashes(&ex.request_headers);
        let event = ex.event;
        self.finish_request(&event, trace, request_id, now.0);
        if self.held.len() >= self.cfg.max_held {
            self.release_oldest();
        }
        self.held.push_back(Held {
            event,
            trace,
            request_id,
            since: now.0,
        });
        self.settle();
    }

    /// An exchange that will not be reported (the agent's own): it is no one's parent.
    pub fn forget(&mut self, event: &Event) {
        self.remove(&(event.conn_id, event.ts.0));
    }

    /// Releases exchanges held too long and forgets requests that no longer matter; call about once a second.
    pub fn tick(&mut self, now: Timestamp) {
        let now = now.0;
        while self
            .held
            .front()
            .is_some_and(|h| now - h.since >= self.cfg.max_hold_us)
        {
            self.release_oldest();
        }
        self.settle();
        // A finished request stays a possible parent only while an exchange that started before its answer is
        // held; one never seen to finish is forgotten after the request age.
        let oldest_held = self.held.iter().map(|h| h.event.ts.0).min();
        let mut order = std::mem::take(&mut self.order);
        order.retain(|key| {
            let Some(r) = self.requests.get(key) else {
                return false;
            };
            let done = r.finished && oldest_held.is_none_or(|o| r.answered.unwrap_or(r.start) < o);
            let expired = !r.finished && now - r.seen >= self.cfg.max_request_age_us;
            if done || expired {
                self.stats.expired_requests += u64::from(expired);
                self.remove(key);
            }
            !(done || expired)
        });
        self.order = order;
    }

    /// Shutdown: decides what can be and releases everything else.
    pub fn finish(&mut self) {
        self.settle();
        while !self.held.is_empty() {
            self.release_oldest();
            self.settle();
        }
    }

    /// Moves the decided events into `out`.
    pub fn drain(&mut self, out: &mut Vec<Event>) {
        out.append(&mut self.out);
    }

    pub fn stats(&self) -> OriginStats {
        let mut s = self.stats.clone();
        s.requests = self.requests.len() as u64;
        s.held = self.held.len() as u64;
        s
    }

    fn insert(&mut self, key: Key, r: Request) {
        while self.requests.len() >= self.cfg.max_requests {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if self.remove(&old) {
                self.stats.evicted_requests += 1;
            }
        }
        for id in [r.trace, r.request_id] {
            if id != 0 {
                self.by_id.entry(id).or_default().insert(key);
            }
        }
        self.unknown.insert(key);
        self.requests.insert(key, r);
        self.order.push_back(key);
    }

    /// Forgets a request; false when it was not remembered.
    fn remove(&mut self, key: &Key) -> bool {
        let Some(r) = self.requests.remove(key) else {
            return false;
        };
        for id in [r.trace, r.request_id] {
            unlist(&mut self.by_id, id, key);
        }
        match r.server {
            Peer::Local(pid) => unlist(&mut self.by_server, pid, key),
            Peer::Unknown => {
                self.unknown.remove(key);
            }
            Peer::Remote => {}
        }
        true
    }

    /// Learns what serves a request (once; a known end is not unlearned).
    fn set_server(&mut self, key: &Key, server: Peer) {
        let Some(r) = self.requests.get_mut(key) else {
            return;
        };
        if r.server != Peer::Unknown || server == Peer::Unknown {
            return;
        }
        r.server = server;
        self.unknown.remove(key);
        if let Peer::Local(pid) = server {
            self.by_server.entry(pid).or_default().insert(*key);
        }
    }

    /// Records what a finished exchange tells about its own request.
    fn finish_request(&mut self, ev: &Event, trace: u64, request_id: u64, now: i64) {
        let key = (ev.conn_id, ev.ts.0);
        let server = match ev.side {
            Side::Server | Side::Both if ev.server_pid != 0 => Peer::Local(ev.server_pid),
            Side::Client => Peer::Remote,
            _ => Peer::Unknown,
        };
        if !self.requests.contains_key(&key) {
            // Its start was not seen (or already forgotten): still a parent for what comes later.
            self.insert(
                key,
                Request {
                    start: ev.ts.0,
                    client_pid: local_client_pid(ev),
                    server: Peer::Unknown,
                    answered: None,
                    trace,
                    request_id,
                    finished: false,
                    origin: None,
                    seen: now,
                },
            );
        }
        self.set_server(&key, server);
        if matches!(
            self.requests.get(&key).map(|r| r.server),
            Some(Peer::Unknown)
        ) {
            // Finished without a known server: it will never be known.
            self.set_server(&key, Peer::Remote);
        }
        if let Some(r) = self.requests.get_mut(&key) {
            r.finished = true;
            // Answered when its response head came; without a response, in flight until now.
            let end = if ev.status != 0 {
                ev.ts.0.saturating_add(ev.duration_us as i64)
            } else {
                now
            };
            r.answered = Some(r.answered.map_or(end, |a| a.min(end)));
        }
    }

    /// Decides every held exchange that can be, repeatedly: deciding one may decide its children.
    fn settle(&mut self) {
        loop {
            let mut progress = false;
            let mut i = 0;
            while i < self.held.len() {
                match self.decide(&self.held[i]) {
                    Step::Decided(o) => {
                        if let Some(h) = self.held.remove(i) {
                            self.emit(h.event, o);
                        }
                        progress = true;
                    }
                    Step::Wait => i += 1,
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Releases the oldest held exchange: decided if it can be, else `none`.
    fn release_oldest(&mut self) {
        let Some(h) = self.held.pop_front() else {
            return;
        };
        let o = match self.decide(&h) {
            Step::Decided(o) => o,
            Step::Wait => {
                self.stats.undecided += 1;
                none(OriginBy::None)
            }
        };
        self.emit(h.event, o);
    }

    fn emit(&mut self, mut ev: Event, o: Origin) {
        let key = (ev.conn_id, ev.ts.0);
        ev.origin_app_id = o.ctx.app_id.as_str().into();
        ev.origin_key_fingerprint = o.ctx.key_fingerprint.as_str().into();
        ev.origin_api_id = o.ctx.api_id.as_str().into();
        (ev.parent_conn_id, ev.parent_ts) = match o.parent {
            Some((c, t)) => (c, Timestamp(t)),
            None => (0, Timestamp::default()),
        };
        ev.hop = o.hop;
        ev.origin_by = o.by;
        if let Some(n) = OriginBy::ALL
            .iter()
            .position(|b| *b == o.by)
            .and_then(|i| self.stats.decided.get_mut(i))
        {
            *n += 1;
        }
        if let Some(r) = self.requests.get_mut(&key) {
            r.origin = Some(o);
        }
        self.out.push(ev);
    }

    fn decide(&self, h: &Held) -> Step {
        let ev = &h.event;
        if !ev.key_fingerprint.is_empty() || ev.side == Side::Server {
            return Step::Decided(own(ev));
        }
        let me = (ev.conn_id, ev.ts.0);
        let pid = local_client_pid(ev);
        let t = ev.ts.0;
        // Requests that could be this one's parent: in flight when it started, not sent by its own process.
        let candidate = |k: &Key| -> Option<&Request> {
            let r = self.requests.get(k)?;
            (*k != me && r.in_flight_at(t) && (pid == 0 || r.client_pid != pid)).then_some(r)
        };
        for (id, by) in [
            (h.trace, OriginBy::Trace),
            (h.request_id, OriginBy::RequestId),
        ] {
            if id == 0 {
                continue;
            }
            let (mut same, mut node) = (Vec::new(), Vec::new());
            for k in self.by_id.get(&id).into_iter().flatten() {
                let Some(r) = candidate(k).filter(|r| r.trace == id || r.request_id == id) else {
                    continue;
                };
                match r.server {
                    Peer::Unknown => return Step::Wait,
                    Peer::Local(p) if p == pid && pid != 0 => same.push(*k),
                    Peer::Local(_) => node.push(*k),
                    Peer::Remote => {}
                }
            }
            match (same.as_slice(), node.as_slice()) {
                ([k], _) | ([], [k]) => return self.inherit(k, by),
                _ => {}
            }
        }
        if pid != 0 {
            if self.unknown.iter().any(|k| candidate(k).is_some()) {
                return Step::Wait;
            }
            let mut found = self
                .by_server
                .get(&pid)
                .into_iter()
                .flatten()
                .filter(|k| candidate(k).is_some());
            match (found.next(), found.next()) {
                (Some(k), None) => return self.inherit(k, OriginBy::Causal),
                (Some(_), Some(_)) => return Step::Decided(none(OriginBy::Ambiguous)),
                _ => {}
            }
        }
        if ev.attributed_by == AttributedBy::Workload {
            return Step::Decided(own(ev));
        }
        Step::Decided(none(OriginBy::None))
    }

    /// The origin of a child of `parent`, found `by`; waits for the parent's own origin.
    fn inherit(&self, parent: &Key, by: OriginBy) -> Step {
        let Some(p) = self.requests.get(parent).and_then(|r| r.origin.as_ref()) else {
            return Step::Wait;
        };
        Step::Decided(Origin {
            ctx: p.ctx.clone(),
            hop: p.hop.saturating_add(1),
            // A parent without an origin passes on why.
            by: match p.by {
                OriginBy::Ambiguous | OriginBy::None => p.by,
                _ => by,
            },
            parent: Some(*parent),
        })
    }
}

fn local_client_pid(ev: &Event) -> u32 {
    match ev.side {
        Side::Client | Side::Both => ev.client_pid,
        Side::Server => 0,
    }
}

fn own(ev: &Event) -> Origin {
    Origin {
        ctx: Arc::new(Context {
            app_id: ev.app_id.clone(),
            key_fingerprint: ev.key_fingerprint.clone(),
            api_id: ev.api_id.clone(),
        }),
        hop: 0,
        by: OriginBy::OwnContext,
        parent: None,
    }
}

fn none(by: OriginBy) -> Origin {
    Origin {
        ctx: Arc::default(),
        hop: 0,
        by,
        parent: None,
    }
}

fn unlist<K: std::hash::Hash + Eq>(index: &mut HashMap<K, HashSet<Key>>, at: K, key: &Key) {
    if let Some(v) = index.get_mut(&at) {
        v.remove(key);
        if v.is_empty() {
            index.remove(&at);
        }
    }
}
