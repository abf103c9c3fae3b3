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
use crate::metrics::{Counter, Gauge, Metrics};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;

use crate::event::{AttributedBy, Event, Exchange, OriginBy, SharedStr, Side, Timestamp};
use crate::flow::{Peer, Started};
use crate::http::Headers;

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

/// `observer_origin_*` on `/metrics`, brought up to an [`OriginStats`] by [`OriginMetrics::update`] (the tracker
/// lives in the capture thread; its counts are copied once a second).
pub struct OriginMetrics {
    decided: Vec<Counter>,
    undecided: Counter,
    /// full, expired
    evicted: Vec<Counter>,
    /// requests, held
    size: Vec<Gauge>,
}

impl OriginMetrics {
    pub fn register(m: &Metrics) -> Self {
        let undecided = Counter::default();
        m.register(
            "origin_undecided",
            "Exchanges released with origin_by none because their parent was not known in time or room",
            undecided.clone(),
        );
        let by: Vec<&'static str> = OriginBy::ALL.iter().map(|b| b.as_str()).collect();
        OriginMetrics {
            decided: m.labelled(
                "origin_decided",
                "Exchanges whose origin was decided, per way (origin_by)",
                "by",
                &by,
            ),
            undecided,
            evicted: m.labelled(
                "origin_evicted",
                "Origin tracker table evictions",
                "reason",
                &["full", "expired"],
            ),
            size: m.labelled(
                "origin_table_size",
                "Entries in the origin tracker's tables",
                "table",
                &["requests", "held"],
            ),
        }
    }

    pub fn update(&self, s: &OriginStats) {
        let up = |c: &Counter, total: u64| {
            c.inc_by(total.saturating_sub(c.get()));
        };
        for (c, n) in self.decided.iter().zip(s.decided) {
            up(c, n);
        }
        up(&self.undecided, s.undecided);
        up(&self.evicted[0], s.evicted_requests);
        up(&self.evicted[1], s.expired_requests);
        self.size[0].set(s.requests as i64);
        self.size[1].set(s.held as i64);
    }
}

/// Hash of a propagated id (trace id or request id); 0 means none. Only hashes are kept.
pub fn id_hash(value: &str) -> u64 {
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
pub fn id_hashes(headers: &Headers) -> (u64, u64) {
    let trace = headers
        .get("traceparent")
        .and_then(crate::http::traceparent_trace_id)
        .map_or(0, id_hash);
    let request = headers.get("x-request-id").map_or(0, id_hash);
    (trace, request)
}

/// The tracker's maps: foldhash (seeded per process) instead of the standard SipHash, which dominated its profile.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type Set<K> = HashSet<K, foldhash::fast::RandomState>;

/// A request: its connection id and start time, as in the event (`conn_id`, `ts`).
type Key = (u64, i64);

/// The context a request was made for, shared by everything made for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Context {
    app_id: SharedStr,
    key_fingerprint: SharedStr,
    api_id: SharedStr,
}

/// Own contexts remembered at once ([`Tracker::own`]); the table starts over beyond it.
const MAX_CONTEXTS: usize = 4_096;

/// How long a finished request stays a possible parent of calls still running (µs), unless the process that
/// served it has none in flight (then it is forgotten at once).
const LINGER_US: i64 = 1_000_000;

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
    /// Its exchange is not emitted yet and counts in [`Tracker::pending`] (local client only).
    pending: bool,
    origin: Option<Origin>,
    /// When it was registered (tracker time, µs).
    seen: i64,
}

impl Request {
    fn new(start: i64, client_pid: u32, trace: u64, request_id: u64, seen: i64) -> Self {
        Request {
            start,
            client_pid,
            server: Peer::Unknown,
            answered: None,
            trace,
            request_id,
            finished: false,
            pending: false,
            origin: None,
            seen,
        }
    }

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
///
/// Cost: the common exchange is decided as it completes (nothing held) and its request forgotten at once, unless
/// the process that served it has calls of its own not yet reported (it may be their parent) or another request
/// shares its propagated id; those linger [`LINGER_US`] in finishing order. No table is scanned per event or per
/// tick except the held exchanges (empty unless some wait) and, every quarter request age, a sweep for requests
/// never seen to finish.
pub struct Tracker {
    cfg: OriginConfig,
    requests: Map<Key, Request>,
    /// Requests by the pid of their local server end (known), and those whose server end is not known yet.
    by_server: Map<u32, Set<Key>>,
    unknown: Set<Key>,
    /// Requests by propagated id hash.
    by_id: Map<u64, Set<Key>>,
    /// Exchanges sent by each local process and not emitted yet (in flight or held).
    pending: Map<u32, u32>,
    /// Finished requests kept as possible parents, with when they finished, in that order.
    finished: VecDeque<(i64, Key)>,
    held: VecDeque<Held>,
    /// Own contexts by hash of their strings, so an exchange's origin shares them instead of allocating.
    contexts: Map<u64, Arc<Context>>,
    empty: Arc<Context>,
    /// Tracker time of the next sweep for requests never seen to finish.
    next_sweep: i64,
    out: Vec<Event>,
    stats: OriginStats,
}

/// What deciding an exchange came to.
enum Step {
    Decided(Origin),
    /// Its own context, at hop 0 (`self`).
    Own,
    /// Something that could change the answer is not known yet.
    Wait,
}

impl Tracker {
    pub fn new(mut cfg: OriginConfig) -> Self {
        cfg.max_requests = cfg.max_requests.max(1);
        cfg.max_held = cfg.max_held.max(1);
        Tracker {
            cfg,
            requests: Map::default(),
            by_server: Map::default(),
            unknown: Set::default(),
            by_id: Map::default(),
            pending: Map::default(),
            finished: VecDeque::new(),
            held: VecDeque::new(),
            contexts: Map::default(),
            empty: Arc::default(),
            next_sweep: i64::MIN,
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
                    Request::new(ts.0, client_pid, trace, request_id, now.0),
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
        let event = ex.event;
        let key = (event.conn_id, event.ts.0);
        let (trace, request_id) = match self.requests.get(&key) {
            Some(r) => (r.trace, r.request_id),
            None => id_hashes(&ex.request.headers),
        };
        self.finish_request(&event, trace, request_id, now.0);
        let h = Held {
            event,
            trace,
            request_id,
            since: now.0,
        };
        match self.decide(&h) {
            Step::Wait => {
                if self.held.len() >= self.cfg.max_held {
                    self.release_oldest();
                }
                self.held.push_back(h);
            }
            step => {
                let o = self.resolve(step, &h.event);
                self.emit(h.event, o);
                self.settle();
            }
        }
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
        // A finished request stays a possible parent while an exchange that started before its answer is held,
        // and at least LINGER_US for calls still running.
        let oldest_held = self.held.iter().map(|h| h.event.ts.0).min();
        while let Some(&(at, key)) = self.finished.front() {
            let gone = match self.requests.get(&key) {
                None => true,
                Some(r) => {
                    now - at >= LINGER_US
                        && oldest_held.is_none_or(|o| r.answered.unwrap_or(r.start) < o)
                }
            };
            if !gone {
                break;
            }
            self.finished.pop_front();
            self.remove(&key);
        }
        if now >= self.next_sweep {
            self.next_sweep = now.saturating_add(self.cfg.max_request_age_us / 4);
            let max_age = self.cfg.max_request_age_us;
            let expired: Vec<Key> = self
                .requests
                .iter()
                .filter(|(_, r)| !r.finished && now - r.seen >= max_age)
                .map(|(k, _)| *k)
                .collect();
            self.stats.expired_requests += expired.len() as u64;
            for k in &expired {
                self.remove(k);
            }
        }
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

    fn insert(&mut self, key: Key, mut r: Request) {
        while self.requests.len() >= self.cfg.max_requests {
            self.evict();
        }
        for id in [r.trace, r.request_id] {
            if id != 0 {
                self.by_id.entry(id).or_default().insert(key);
            }
        }
        if r.client_pid != 0 {
            *self.pending.entry(r.client_pid).or_default() += 1;
            r.pending = true;
        }
        self.unknown.insert(key);
        self.requests.insert(key, r);
    }

    /// Makes room for one request: the oldest finished one, else the oldest eighth of those in flight.
    fn evict(&mut self) {
        while let Some((_, key)) = self.finished.pop_front() {
            if self.remove(&key) {
                self.stats.evicted_requests += 1;
                return;
            }
        }
        let mut ages: Vec<(i64, Key)> = self.requests.iter().map(|(k, r)| (r.seen, *k)).collect();
        let n = (ages.len() / 8).max(1).min(ages.len());
        if n == 0 {
            return;
        }
        ages.select_nth_unstable(n - 1);
        for (_, key) in &ages[..n] {
            if self.remove(key) {
                self.stats.evicted_requests += 1;
            }
        }
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
        if r.pending {
            unpend(&mut self.pending, r.client_pid);
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
            let r = Request::new(ev.ts.0, local_client_pid(ev), trace, request_id, now);
            self.insert(key, r);
        }
        self.set_server(&key, server);
        // Finished without a known server: it will never be known.
        self.set_server(&key, Peer::Remote);
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
                    Step::Wait => i += 1,
                    step => {
                        if let Some(h) = self.held.remove(i) {
                            let o = self.resolve(step, &h.event);
                            self.emit(h.event, o);
                        }
                        progress = true;
                    }
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
        let step = match self.decide(&h) {
            Step::Wait => {
                self.stats.undecided += 1;
                Step::Decided(self.nobody(OriginBy::None))
            }
            step => step,
        };
        let o = self.resolve(step, &h.event);
        self.emit(h.event, o);
    }

    /// The origin a decided step stands for.
    fn resolve(&mut self, step: Step, ev: &Event) -> Origin {
        match step {
            Step::Decided(o) => o,
            Step::Own | Step::Wait => Origin {
                ctx: self.own(ev),
                hop: 0,
                by: OriginBy::OwnContext,
                parent: None,
            },
        }
    }

    /// The exchange's own context, shared with earlier exchanges of the same application, key and API.
    fn own(&mut self, ev: &Event) -> Arc<Context> {
        let (app, fp, api) = (
            ev.app_id.as_str(),
            ev.key_fingerprint.as_str(),
            ev.api_id.as_str(),
        );
        if app.is_empty() && fp.is_empty() && api.is_empty() {
            return self.empty.clone();
        }
        let h = self.contexts.hasher().hash_one((app, fp, api));
        if let Some(c) = self.contexts.get(&h) {
            if *c.app_id == *app && *c.key_fingerprint == *fp && *c.api_id == *api {
                return c.clone();
            }
        }
        if self.contexts.len() >= MAX_CONTEXTS {
            self.contexts.clear();
        }
        let c = Arc::new(Context {
            app_id: app.into(),
            key_fingerprint: fp.into(),
            api_id: api.into(),
        });
        self.contexts.insert(h, c.clone());
        c
    }

    fn nobody(&self, by: OriginBy) -> Origin {
        Origin {
            ctx: self.empty.clone(),
            hop: 0,
            by,
            parent: None,
        }
    }

    fn emit(&mut self, mut ev: Event, o: Origin) {
        let key = (ev.conn_id, ev.ts.0);
        ev.origin_app_id = o.ctx.app_id.share();
        ev.origin_key_fingerprint = o.ctx.key_fingerprint.share();
        ev.origin_api_id = o.ctx.api_id.share();
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
            if std::mem::take(&mut r.pending) {
                unpend(&mut self.pending, r.client_pid);
            }
            r.origin = Some(o);
            if r.finished {
                self.retire(key, ev.ts.0.saturating_add(ev.duration_us as i64));
            }
        }
        self.out.push(ev);
    }

    /// A request whose exchange was emitted: forgotten at once unless it may still be a parent (its server
    /// process has calls not yet emitted, or another request shares one of its ids).
    fn retire(&mut self, key: Key, at: i64) {
        let Some(r) = self.requests.get(&key) else {
            return;
        };
        let shared = |id: u64| id != 0 && self.by_id.get(&id).is_some_and(|s| s.len() > 1);
        let may_parent = match r.server {
            Peer::Local(pid) => {
                self.pending.contains_key(&pid) || shared(r.trace) || shared(r.request_id)
            }
            Peer::Remote | Peer::Unknown => false,
        };
        if may_parent {
            let at = self.finished.back().map_or(at, |(last, _)| at.max(*last));
            self.finished.push_back((at, key));
        } else {
            self.remove(&key);
        }
    }

    fn decide(&self, h: &Held) -> Step {
        let ev = &h.event;
        if !ev.key_fingerprint.is_empty() || ev.side == Side::Server {
            return Step::Own;
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
            // The only match on the sending process, else the only one on the node.
            let (mut same, mut node) = (Found::default(), Found::default());
            for k in self.by_id.get(&id).into_iter().flatten() {
                let Some(r) = candidate(k).filter(|r| r.trace == id || r.request_id == id) else {
                    continue;
                };
                match r.server {
                    Peer::Unknown => return Step::Wait,
                    Peer::Local(p) if p == pid && pid != 0 => same.add(k),
                    Peer::Local(_) => node.add(k),
                    Peer::Remote => {}
                }
            }
            match (same, node) {
                (Found::One(k), _) | (Found::None, Found::One(k)) => return self.inherit(&k, by),
                _ => {}
            }
        }
        if pid != 0 {
            if self.unknown.iter().any(|k| candidate(k).is_some()) {
                return Step::Wait;
            }
            let mut found = Found::default();
            for k in self.by_server.get(&pid).into_iter().flatten() {
                if candidate(k).is_some() {
                    found.add(k);
                }
            }
            match found {
                Found::One(k) => return self.inherit(&k, OriginBy::Causal),
                Found::Several => return Step::Decided(self.nobody(OriginBy::Ambiguous)),
                Found::None => {}
            }
        }
        if ev.attributed_by == AttributedBy::Workload {
            return Step::Own;
        }
        Step::Decided(self.nobody(OriginBy::None))
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

/// Candidates found: none, exactly one, or several.
#[derive(Default, Clone, Copy)]
enum Found {
    #[default]
    None,
    One(Key),
    Several,
}

impl Found {
    fn add(&mut self, k: &Key) {
        *self = match self {
            Found::None => Found::One(*k),
            _ => Found::Several,
        };
    }
}

fn local_client_pid(ev: &Event) -> u32 {
    match ev.side {
        Side::Client | Side::Both => ev.client_pid,
        Side::Server => 0,
    }
}

fn unpend(pending: &mut Map<u32, u32>, pid: u32) {
    if let Some(n) = pending.get_mut(&pid) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            pending.remove(&pid);
        }
    }
}

fn unlist<K: std::hash::Hash + Eq>(index: &mut Map<K, Set<Key>>, at: K, key: &Key) {
    if let Some(v) = index.get_mut(&at) {
        v.remove(key);
        if v.is_empty() {
            index.remove(&at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE_1: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACE_2: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn t(us: i64) -> Timestamp {
        Timestamp(us)
    }

    /// One request as the flow engine notes it and reports it.
    #[derive(Clone)]
    struct Req {
        conn: u64,
        ts: i64,
        client_pid: u32,
        server_pid: u32,
        headers: Vec<(&'static str, &'static str)>,
        key: &'static str,
        app: &'static str,
        workload: bool,
    }

    fn req(conn: u64, ts: i64, client_pid: u32, server_pid: u32) -> Req {
        Req {
            conn,
            ts,
            client_pid,
            server_pid,
            headers: Vec::new(),
            key: "",
            app: "",
            workload: false,
        }
    }

    impl Req {
        fn keyed(mut self, key: &'static str, app: &'static str) -> Self {
            self.key = key;
            self.app = app;
            self
        }

        fn header(mut self, name: &'static str, value: &'static str) -> Self {
            self.headers.push((name, value));
            self
        }

        fn side(&self) -> Side {
            match (self.client_pid, self.server_pid) {
                (0, _) => Side::Server,
                (_, 0) => Side::Client,
                _ => Side::Both,
            }
        }

        /// The request head: the server's process is not known yet (fresh socket) unless `server_known`.
        fn start(&self, server_known: bool) -> Started {
            let headers: Headers = self.headers.iter().copied().collect();
            let (trace, request_id) = id_hashes(&headers);
            Started::Request {
                conn_id: self.conn,
                ts: t(self.ts),
                client_pid: self.client_pid,
                server: match (server_known, self.server_pid) {
                    (true, 0) => Peer::Remote,
                    (true, pid) => Peer::Local(pid),
                    (false, _) => Peer::Unknown,
                },
                trace,
                request_id,
            }
        }

        fn answer(&self, at: i64) -> Started {
            Started::Response {
                conn_id: self.conn,
                req_ts: t(self.ts),
                ts: t(at),
                server: match self.server_pid {
                    0 => Peer::Remote,
                    pid => Peer::Local(pid),
                },
            }
        }

        fn done(&self, answered: i64) -> Exchange {
            Exchange {
                event: Event {
                    ts: t(self.ts),
                    duration_us: (answered - self.ts) as u64,
                    status: 200,
                    side: self.side(),
                    conn_id: self.conn,
                    client_pid: self.client_pid,
                    server_pid: self.server_pid,
                    key_fingerprint: self.key.into(),
                    app_id: self.app.into(),
                    api_id: if self.key.is_empty() { "" } else { "edge-api" }.into(),
                    attributed_by: match (self.key.is_empty(), self.workload) {
                        (false, _) => AttributedBy::Key,
                        (true, true) => AttributedBy::Workload,
                        _ => AttributedBy::None,
                    },
                    ..Event::default()
                },
                request: crate::event::RequestExtras {
                    headers: self.headers.iter().copied().collect(),
                    ..crate::event::RequestExtras::default()
                },
            }
        }
    }

    /// Feeds `steps` in order; returns every event released, by conn id.
    enum Step<'a> {
        Start(&'a Req),
        Answer(&'a Req, i64),
        Done(&'a Req, i64),
    }

    fn run(tr: &mut Tracker, steps: &[Step]) -> HashMap<u64, Event> {
        for s in steps {
            match s {
                Step::Start(r) => tr.started(&r.start(false), t(r.ts)),
                Step::Answer(r, at) => tr.started(&r.answer(*at), t(*at)),
                Step::Done(r, at) => tr.complete(r.done(*at), t(*at + 10)),
            }
        }
        let mut out = Vec::new();
        tr.drain(&mut out);
        out.into_iter().map(|e| (e.conn_id, e)).collect()
    }

    fn origin(e: &Event) -> (&str, u16, OriginBy, u64) {
        (
            e.origin_app_id.as_str(),
            e.hop,
            e.origin_by,
            e.parent_conn_id,
        )
    }

    /// client (pid 10) -> edge (20) -> middle (30) -> backends (40, 50), one request at a time; every child
    /// finishes before its parent, and no server's process is known before it answers.
    fn chain(edge_headers: &[(&'static str, &'static str)]) -> [Req; 4] {
        let with = |mut r: Req| {
            r.headers.extend_from_slice(edge_headers);
            r
        };
        [
            with(req(1, 1_000, 10, 20).keyed("fp-mobile", "mobile-checkout")),
            with(req(2, 1_100, 20, 30)),
            with(req(3, 1_200, 30, 40)),
            with(req(4, 1_400, 30, 50)),
        ]
    }

    fn chain_steps(c: &[Req; 4]) -> Vec<Step<'_>> {
        let [g, p, c1, c2] = c;
        vec![
            Step::Start(g),
            Step::Start(p),
            Step::Start(c1),
            Step::Answer(c1, 1_300),
            Step::Done(c1, 1_300),
            Step::Start(c2),
            Step::Answer(c2, 1_500),
            Step::Done(c2, 1_500),
            Step::Answer(p, 1_600),
            Step::Done(p, 1_600),
            Step::Answer(g, 1_700),
            Step::Done(g, 1_700),
        ]
    }

    #[test]
    fn a_chain_one_request_at_a_time_is_causal_and_children_wait_for_their_parents() {
        let c = chain(&[]);
        let mut tr = Tracker::new(OriginConfig::default());
        let steps = chain_steps(&c);
        // Until the edge answers, nothing below it can be decided.
        let early = run(&mut tr, &steps[..10]);
        assert!(early.is_empty(), "{early:?}");
        assert_eq!(tr.stats().held, 3);
        let ev = run(&mut tr, &steps[10..]);
        assert_eq!(
            origin(&ev[&1]),
            ("mobile-checkout", 0, OriginBy::OwnContext, 0)
        );
        assert_eq!(ev[&1].origin_key_fingerprint, "fp-mobile");
        assert_eq!(ev[&1].origin_api_id, "edge-api");
        assert_eq!(origin(&ev[&2]), ("mobile-checkout", 1, OriginBy::Causal, 1));
        assert_eq!(ev[&2].parent_ts, t(1_000));
        assert_eq!(origin(&ev[&3]), ("mobile-checkout", 2, OriginBy::Causal, 2));
        assert_eq!(origin(&ev[&4]), ("mobile-checkout", 2, OriginBy::Causal, 2));
        assert_eq!(ev[&4].origin_key_fingerprint, "fp-mobile");
        assert_eq!(ev[&4].parent_ts, t(1_100));
        let s = tr.stats();
        assert_eq!((s.held, s.undecided), (0, 0));
        // In `OriginBy::ALL` order: self, trace, request_id, causal, ambiguous, none.
        assert_eq!(s.decided, [1, 0, 0, 3, 0, 0]);
    }

    /// A second keyed request in flight on the edge makes causality ambiguous; the propagated id decides.
    fn concurrent(headers: [&'static str; 2], ids: [&'static str; 2]) -> HashMap<u64, Event> {
        let c = chain(&[(headers[0], ids[0])]);
        let other = req(9, 1_050, 11, 20)
            .keyed("fp-partner", "partner-portal")
            .header(headers[1], ids[1]);
        let mut steps = chain_steps(&c);
        steps.insert(1, Step::Start(&other));
        steps.push(Step::Answer(&other, 1_800));
        steps.push(Step::Done(&other, 1_800));
        let mut tr = Tracker::new(OriginConfig::default());
        let ev = run(&mut tr, &steps);
        assert_eq!(ev.len(), 5);
        assert_eq!(
            origin(&ev[&9]),
            ("partner-portal", 0, OriginBy::OwnContext, 0)
        );
        ev
    }

    #[test]
    fn trace_context_decides_where_causality_is_ambiguous() {
        let ev = concurrent(["traceparent"; 2], [TRACE_1, TRACE_2]);
        assert_eq!(origin(&ev[&2]), ("mobile-checkout", 1, OriginBy::Trace, 1));
        assert_eq!(origin(&ev[&3]), ("mobile-checkout", 2, OriginBy::Trace, 2));
        assert_eq!(origin(&ev[&4]), ("mobile-checkout", 2, OriginBy::Trace, 2));
    }

    #[test]
    fn request_ids_decide_where_causality_is_ambiguous() {
        let ev = concurrent(["X-Request-Id"; 2], ["req-a", "req-b"]);
        assert_eq!(
            origin(&ev[&2]),
            ("mobile-checkout", 1, OriginBy::RequestId, 1)
        );
        assert_eq!(
            origin(&ev[&4]),
            ("mobile-checkout", 2, OriginBy::RequestId, 2)
        );
    }

    #[test]
    fn without_ids_concurrent_requests_are_ambiguous_and_children_say_so() {
        // The ids differ in name only from what the services propagate: nothing to match on.
        let ev = concurrent(["x-other"; 2], ["a", "b"]);
        assert_eq!(origin(&ev[&2]), ("", 0, OriginBy::Ambiguous, 0));
        // The middle had one request in flight: its parent is known, its origin is not.
        assert_eq!(origin(&ev[&3]), ("", 1, OriginBy::Ambiguous, 2));
        assert_eq!(origin(&ev[&4]), ("", 1, OriginBy::Ambiguous, 2));
    }

    #[test]
    fn a_request_id_seen_on_another_process_of_the_node_decides() {
        // A sidecar (pid 60) receives the edge call and the app (pid 70) calls out with the same request id.
        let inbound = req(1, 1_000, 0, 60)
            .keyed("fp-mobile", "mobile-checkout")
            .header("X-Request-Id", "r-1");
        let out = req(2, 1_100, 70, 0).header("X-Request-Id", "r-1");
        let mut tr = Tracker::new(OriginConfig::default());
        let ev = run(
            &mut tr,
            &[
                Step::Start(&inbound),
                Step::Start(&out),
                Step::Answer(&out, 1_200),
                Step::Done(&out, 1_200),
                Step::Answer(&inbound, 1_300),
                Step::Done(&inbound, 1_300),
            ],
        );
        assert_eq!(
            origin(&ev[&1]),
            ("mobile-checkout", 0, OriginBy::OwnContext, 0)
        );
        assert_eq!(
            origin(&ev[&2]),
            ("mobile-checkout", 1, OriginBy::RequestId, 1)
        );
    }

    #[test]
    fn edge_calls_keys_and_workloads_are_their_own_origin_and_strangers_are_none() {
        let mut tr = Tracker::new(OriginConfig::default());
        let edge = req(1, 1_000, 0, 20);
        let mut batch = req(2, 2_000, 80, 0);
        batch.workload = true;
        batch.app = "nightly-report";
        let stranger = req(3, 3_000, 81, 0);
        let ev = run(
            &mut tr,
            &[
                Step::Start(&edge),
                Step::Done(&edge, 1_100),
                Step::Start(&batch),
                Step::Done(&batch, 2_100),
                Step::Start(&stranger),
                Step::Done(&stranger, 3_100),
            ],
        );
        assert_eq!(origin(&ev[&1]), ("", 0, OriginBy::OwnContext, 0));
        assert_eq!(
            origin(&ev[&2]),
            ("nightly-report", 0, OriginBy::OwnContext, 0)
        );
        assert_eq!(origin(&ev[&3]), ("", 0, OriginBy::None, 0));
    }

    #[test]
    fn a_parent_that_never_answers_releases_its_children_as_none_after_the_hold() {
        let cfg = OriginConfig {
            max_hold_us: 5_000,
            ..OriginConfig::default()
        };
        let mut tr = Tracker::new(cfg);
        let parent = req(1, 1_000, 10, 20);
        let child = req(2, 1_100, 20, 0);
        let ev = run(
            &mut tr,
            &[
                Step::Start(&parent),
                Step::Start(&child),
                Step::Answer(&child, 1_200),
                Step::Done(&child, 1_200),
            ],
        );
        assert!(ev.is_empty());
        tr.tick(t(1_210 + 4_999));
        assert_eq!(tr.stats().held, 1);
        tr.tick(t(1_210 + 5_000));
        let mut out = Vec::new();
        tr.drain(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(origin(&out[0]), ("", 0, OriginBy::None, 0));
        assert_eq!(tr.stats().undecided, 1);
        // The parent, never finished, is forgotten after the request age.
        tr.tick(t(1_000 + OriginConfig::default().max_request_age_us));
        let s = tr.stats();
        assert_eq!((s.expired_requests, s.requests), (1, 0));
    }

    #[test]
    fn tables_are_bounded_and_evictions_counted() {
        let mut tr = Tracker::new(OriginConfig {
            max_requests: 2,
            ..OriginConfig::default()
        });
        let r: Vec<Req> = (1..=3).map(|i| req(i, i as i64 * 100, 10, 20)).collect();
        run(
            &mut tr,
            &[Step::Start(&r[0]), Step::Start(&r[1]), Step::Start(&r[2])],
        );
        assert_eq!((tr.stats().evicted_requests, tr.stats().requests), (1, 2));

        let mut tr = Tracker::new(OriginConfig {
            max_held: 1,
            ..OriginConfig::default()
        });
        let parent = req(1, 100, 10, 20);
        let (c1, c2) = (req(2, 150, 20, 0), req(3, 160, 20, 0));
        let steps = [
            Step::Start(&parent),
            Step::Start(&c1),
            Step::Done(&c1, 200),
            Step::Start(&c2),
            Step::Done(&c2, 210),
        ];
        let ev = run(&mut tr, &steps);
        // The second held exchange pushed the first out, undecided: its parent's process was not known yet.
        assert_eq!(origin(&ev[&2]), ("", 0, OriginBy::None, 0));
        assert_eq!((tr.stats().held, tr.stats().undecided), (1, 1));
        tr.finish();
        let mut out = Vec::new();
        tr.drain(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((tr.stats().held, tr.stats().undecided), (0, 2));
    }

    #[test]
    fn forgotten_requests_are_no_ones_parent_and_ids_are_kept_only_hashed() {
        let mut tr = Tracker::new(OriginConfig::default());
        let own = req(1, 1_000, 99, 20);
        let child = req(2, 1_100, 20, 0);
        tr.started(&own.start(false), t(1_000));
        tr.forget(&own.done(2_000).event);
        let ev = run(&mut tr, &[Step::Start(&child), Step::Done(&child, 1_200)]);
        assert_eq!(origin(&ev[&2]), ("", 0, OriginBy::None, 0));
        assert_eq!(id_hash(" Req-A "), id_hash("req-a"));
        assert_eq!(id_hash(""), 0);
        assert_ne!(id_hash("req-a"), id_hash("req-b"));
    }
}
