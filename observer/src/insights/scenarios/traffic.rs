//! The generated traffic, minute by minute: seeded baseline streams (one per client and API) with a daily shape,
//! a weekend dip, per-minute noise and natural repeats, and the placed scenarios layered over them.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Poisson};

use super::{raw_key, Placed, What, MIN_US, SECRET};
use crate::event::{AttributedBy, Event, KeyState, SharedStr, Timestamp};
use crate::registry::{KeySecret, Registry};

/// One baseline stream: a client calling an API.
struct Stream {
    api: &'static str,
    host: &'static str,
    app: &'static str,
    comm: &'static str,
    cgroup: &'static str,
    keyed: bool,
    /// Source addresses (a remote client's pool, or the pod addresses of a local one).
    sources: Vec<IpAddr>,
    routes: &'static [(&'static str, &'static str)],
    /// Requests per minute at the daily peak.
    peak: f64,
    ua: &'static str,
    /// A call every this many seconds instead of a random stream.
    every_s: Option<f64>,
    p4: f64,
    p5: f64,
}

const PAY: &[(&str, &str)] = &[
    ("GET", "/v1/payments"),
    ("POST", "/v1/payments"),
    ("GET", "/v1/payments/{id}"),
    ("GET", "/v1/payments/{id}"),
    ("POST", "/v1/payments/{id}/refunds"),
];
const ORD: &[(&str, &str)] = &[
    ("GET", "/v1/orders"),
    ("POST", "/v1/orders"),
    ("GET", "/v1/orders/{id}"),
];
const INV: &[(&str, &str)] = &[
    ("GET", "/stock"),
    ("GET", "/stock/{sku}"),
    ("PUT", "/stock/{sku}"),
];
const RATES: &[(&str, &str)] = &[
    ("GET", "/rates"),
    ("GET", "/rates/{currency}"),
    ("GET", "/rates/history/{currency}"),
];
const HEALTH: &[(&str, &str)] = &[("GET", "/health")];

fn host(api: &str) -> &'static str {
    match api {
        "payments-api" => "payments.internal",
        "orders-api" => "orders.internal",
        "inventory-api" => "inventory.internal",
        _ => "rates.internal",
    }
}

/// The seeded traffic generator. `next_minute` yields each minute's events in time order.
pub struct Traffic {
    rng: ChaCha8Rng,
    streams: Vec<Stream>,
    placed: Vec<Placed>,
    fingerprints: HashMap<&'static str, String>,
    secret: KeySecret,
    /// Daily shape: trough hour and night floor; weekend factor; per-minute noise.
    trough_h: f64,
    floor: f64,
    weekend: f64,
    noise: LogNormal<f64>,
    minute: i64,
    end: i64,
    pending: Vec<Event>,
    out: Vec<Event>,
    /// Draws request bodies (kept apart from `rng` so adding them left the rest of the traffic as it was).
    bodies: ChaCha8Rng,
    /// Per-IP request of the client-bug loop and the flood's source pool.
    bug_sources: Vec<IpAddr>,
    flood_sources: Vec<IpAddr>,
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

impl Traffic {
    pub fn new(seed: u64, _registry: &Registry, placed: &[Placed], start: i64, end: i64) -> Self {
        let mut rng = super::rng_for(seed);
        let mut r = |lo: f64, hi: f64| rng.random_range(lo..hi);
        let local = |i: u8, n: u8| (1..=n).map(|d| ip(10, 0, i, d)).collect::<Vec<_>>();
        let mut streams = Vec::new();
        let mut s = |api: &'static str, app, comm, cgroup, keyed, sources, routes, peak, ua| {
            streams.push(Stream {
                api,
                host: host(api),
                app,
                comm,
                cgroup,
                keyed,
                sources,
                routes,
                peak,
                ua,
                every_s: None,
                p4: 0.0,
                p5: 0.0,
            })
        };
        let mobile: Vec<IpAddr> = (0..200u16)
            .map(|i| ip(100, 64, (i / 250) as u8, (i % 250) as u8 + 1))
            .collect();
        let web: Vec<IpAddr> = (0..80u16).map(|i| ip(192, 168, 7, i as u8 + 1)).collect();
        let (co, k8s) = ("checkout", "/kubepods.slice/checkout-v1.slice");
        s(
            "payments-api",
            "checkout-v1",
            co,
            k8s,
            true,
            local(1, 4),
            PAY,
            r(60.0, 150.0),
            "checkout/1.9",
        );
        s(
            "payments-api",
            "mobile-app",
            "",
            "",
            true,
            mobile.clone(),
            PAY,
            r(80.0, 200.0),
            "MobileCheckout/2.3.1",
        );
        s(
            "payments-api",
            "partner-portal",
            "portal",
            "/system.slice/portal.service",
            true,
            local(2, 2),
            PAY,
            r(10.0, 40.0),
            "portal/5",
        );
        s(
            "orders-api",
            "checkout-v1",
            co,
            k8s,
            true,
            local(1, 4),
            ORD,
            r(30.0, 80.0),
            "checkout/1.9",
        );
        s(
            "orders-api",
            "mobile-app",
            "",
            "",
            true,
            mobile,
            ORD,
            r(40.0, 100.0),
            "MobileCheckout/2.3.1",
        );
        s(
            "orders-api",
            "partner-portal",
            "portal",
            "/system.slice/portal.service",
            true,
            local(2, 2),
            ORD,
            r(10.0, 30.0),
            "portal/5",
        );
        s(
            "inventory-api",
            "warehouse-sync",
            "warehouse-sync",
            "/system.slice/warehouse-sync.service",
            true,
            local(3, 1),
            INV,
            r(20.0, 60.0),
            "wsync/3",
        );
        s(
            "inventory-api",
            "reporting",
            "reporter",
            "/system.slice/reporter.service",
            true,
            local(4, 1),
            INV,
            r(5.0, 20.0),
            "reporter/1",
        );
        s(
            "rates-api",
            "",
            "",
            "",
            false,
            web,
            RATES,
            r(100.0, 250.0),
            "Mozilla/5.0",
        );
        s(
            "rates-api",
            "reporting",
            "reporter",
            "/system.slice/reporter.service",
            false,
            local(4, 1),
            RATES,
            r(5.0, 15.0),
            "reporter/1",
        );
        s(
            "rates-api",
            "uptime-monitor",
            "uptime",
            "/system.slice/uptime.service",
            false,
            local(5, 1),
            HEALTH,
            2.0,
            "uptime/1",
        );
        let last = streams.len() - 1;
        streams[last].every_s = Some(30.0);
        let mut rng = super::rng_for(seed.wrapping_add(1));
        for st in &mut streams {
            st.p4 = rng.random_range(0.005..0.03);
            st.p5 = rng.random_range(0.0005..0.004);
        }
        let secret = KeySecret::from_bytes(SECRET);
        let fingerprints = [
            "checkout-v1",
            "checkout-v2",
            "checkout-next",
            "mobile-app",
            "partner-portal",
            "warehouse-sync",
            "reporting",
            "legacy-batch",
            "",
        ]
        .into_iter()
        .map(|a| (a, secret.fingerprint_hex(raw_key(a).as_bytes())))
        .collect();
        let sigma = rng.random_range(0.05..0.2);
        let bug_n = rng.random_range(10..30u8);
        let flood_n = rng.random_range(300..3000u32);
        Traffic {
            trough_h: rng.random_range(2.0..5.0),
            floor: rng.random_range(0.08..0.25),
            weekend: rng.random_range(0.5..0.8),
            noise: LogNormal::new(-sigma * sigma / 2.0, sigma).expect("valid lognormal"),
            rng,
            streams,
            placed: placed.to_vec(),
            fingerprints,
            secret,
            minute: start.div_euclid(MIN_US),
            end,
            pending: Vec::new(),
            out: Vec::new(),
            bodies: super::rng_for(seed.wrapping_add(2)),
            bug_sources: (0..bug_n).map(|i| ip(100, 64, 0, i + 1)).collect(),
            flood_sources: (0..flood_n)
                .map(|i| ip(203, (i >> 16) as u8, (i >> 8) as u8, i as u8))
                .collect(),
        }
    }

    /// Daily shape times the weekend factor at `t`.
    fn shape(&self, t: i64) -> f64 {
        let day = t.div_euclid(super::DAY_US);
        let h = (t.rem_euclid(super::DAY_US)) as f64 / 3.6e9;
        let phase = ((h - self.trough_h) / 24.0) * std::f64::consts::TAU;
        let x = (1.0 - phase.cos()) / 2.0;
        let weekday = (day + 3).rem_euclid(7); // 1970-01-01 was a Thursday: 0 = Monday
        let week = if weekday >= 5 { self.weekend } else { 1.0 };
        (self.floor + (1.0 - self.floor) * x.powf(1.5)) * week
    }

    fn active(&self, what: What, t: i64) -> Option<Placed> {
        self.placed
            .iter()
            .copied()
            .find(|p| p.what == what && p.start <= t && t < p.end)
    }

    fn started(&self, what: What, t: i64) -> Option<Placed> {
        self.placed
            .iter()
            .copied()
            .find(|p| p.what == what && p.start <= t)
    }

    /// The next minute's events in time order, or None after the end.
    pub fn next_minute(&mut self) -> Option<&[Event]> {
        let t0 = self.minute * MIN_US;
        if t0 >= self.end {
            return None;
        }
        self.minute += 1;
        let t1 = t0 + MIN_US;
        let shape = self.shape(t0);
        for i in 0..self.streams.len() {
            let mut lambda = self.streams[i].peak * shape;
            let st = &self.streams[i];
            let (api, app) = (st.api, st.app);
            if api == "payments-api"
                && app == "checkout-v1"
                && self.started(What::Successor, t0).is_some()
            {
                // Migrated to its successor: v2 takes the traffic, at `size` times the rate while the bug lasts.
                let p = self.started(What::Successor, t0).expect("started");
                let factor = if t0 < p.end { p.size } else { 1.0 };
                self.emit_extra(
                    t0,
                    i,
                    lambda * factor,
                    "checkout-v2",
                    "checkout2",
                    "checkout/2.0",
                );
                continue;
            }
            if let Some(p) = self.started(What::LevelShift, t0) {
                if api == "orders-api" && app == "partner-portal" && t0 >= p.start {
                    lambda *= p.size;
                }
            }
            if let Some(p) = self.active(What::FlashCrowd, t0) {
                if api == "payments-api" && app == "mobile-app" {
                    lambda *= p.size;
                }
            }
            if let Some(every) = st.every_s {
                let n = (60.0 / every) as i64;
                for k in 0..n {
                    let ts =
                        t0 + (k as f64 * every * 1e6) as i64 + self.rng.random_range(0..20_000);
                    self.request(i, ts, None);
                }
                continue;
            }
            let lambda = lambda * self.noise.sample(&mut self.rng);
            let n = if lambda > 0.0 {
                Poisson::new(lambda)
                    .expect("positive")
                    .sample(&mut self.rng) as u64
            } else {
                0
            };
            for _ in 0..n {
                let ts = t0 + self.rng.random_range(0..MIN_US);
                self.request(i, ts, None);
            }
        }
        self.scenarios(t0, shape);
        self.pending.sort_by_key(|e| e.ts);
        let split = self.pending.partition_point(|e| e.ts.0 < t1);
        self.out.clear();
        self.out.extend(self.pending.drain(..split));
        Some(&self.out)
    }

    /// A stream's traffic sent by another application (a successor) with its own workload and user agent.
    fn emit_extra(
        &mut self,
        t0: i64,
        i: usize,
        lambda: f64,
        app: &'static str,
        comm: &'static str,
        ua: &'static str,
    ) {
        let lambda = lambda * self.noise.sample(&mut self.rng);
        let n = if lambda > 0.0 {
            Poisson::new(lambda)
                .expect("positive")
                .sample(&mut self.rng) as u64
        } else {
            0
        };
        for _ in 0..n {
            let ts = t0 + self.rng.random_range(0..MIN_US);
            let mut e = self.base_event(i, ts);
            e.app_id = app.into();
            e.client_comm = comm.into();
            e.client_cgroup = "/kubepods.slice/checkout-v2.slice".into();
            e.user_agent = ua.into();
            e.key_fingerprint = self.fingerprints[app].as_str().into();
            self.pending.push(e);
        }
    }

    /// One baseline request of stream `i` at `ts`, with its natural repeat (a client re-sending within seconds).
    fn request(&mut self, i: usize, ts: i64, status: Option<u16>) {
        let mut e = self.base_event(i, ts);
        if let Some(s) = status {
            e.status = s;
        }
        if self.rng.random_bool(0.02) {
            let mut again = e.clone();
            again.ts = Timestamp(ts + self.rng.random_range(1_000_000..8_000_000));
            self.pending.push(again);
        }
        self.pending.push(e);
    }

    fn base_event(&mut self, i: usize, ts: i64) -> Event {
        let st = &self.streams[i];
        let (method, route) = st.routes[self.rng.random_range(0..st.routes.len())];
        let id: u32 = self.rng.random_range(1..100_000);
        let path = route
            .replace("{id}", &id.to_string())
            .replace("{sku}", &format!("SKU-{id}"))
            .replace(
                "{currency}",
                ["EUR", "USD", "GBP", "JPY", "CHF"][id as usize % 5],
            );
        let roll: f64 = self.rng.random();
        let status = if roll < st.p5 {
            503
        } else if roll < st.p5 + st.p4 {
            404
        } else {
            200
        };
        let src = st.sources[self.rng.random_range(0..st.sources.len())];
        let mut e = Event {
            ts: Timestamp(ts),
            duration_us: self.rng.random_range(500..50_000),
            method: method.into(),
            host: st.host.into(),
            path,
            status,
            src_ip: src,
            src_port: self.rng.random_range(30000..60000),
            client_comm: SharedStr::from(st.comm),
            client_cgroup: SharedStr::from(st.cgroup),
            user_agent: st.ua.into(),
            api_id: st.api.into(),
            route: route.into(),
            app_id: st.app.into(),
            ..Event::default()
        };
        if st.keyed {
            e.key_fingerprint = self.fingerprints[st.app].as_str().into();
            e.key_state = KeyState::Valid;
            e.attributed_by = AttributedBy::Key;
        } else if !st.app.is_empty() {
            e.attributed_by = AttributedBy::Workload;
        }
        e.request_hash = self.request_hash(&e);
        e
    }

    /// The agent's `request_hash` of `e`'s request; a request with a body (POST, PUT) carries its own reference in
    /// it, so two of them to the same URL are different requests (a copy of the event is the same request).
    fn request_hash(&mut self, e: &Event) -> u64 {
        let body = if matches!(e.method.as_str(), "POST" | "PUT" | "PATCH") {
            format!("{{\"ref\":{}}}", self.bodies.random::<u32>())
        } else {
            String::new()
        };
        crate::enrich::request_hash(
            &self.secret,
            &e.method,
            &e.host,
            &e.path,
            "",
            body.as_bytes(),
        )
    }

    /// Layers the scenarios active in the minute starting at `t0` over the baseline.
    fn scenarios(&mut self, t0: i64, shape: f64) {
        let t1 = t0 + MIN_US;
        let placed = self.placed.clone();
        for p in placed
            .iter()
            .filter(|p| p.start < t1 && t0 < p.end.max(p.start + 1))
        {
            let (a, b) = (p.start.max(t0), p.end.min(t1));
            let frac = (b - a) as f64 / MIN_US as f64;
            match p.what {
                What::UndeclaredSuccessor => {
                    let i = self.stream("payments-api", "checkout-v1");
                    let lambda = self.streams[i].peak * shape * p.size * frac;
                    for ts in self.times(a, b, lambda) {
                        let mut e = self.base_event(i, ts);
                        e.app_id = "checkout-next".into();
                        e.client_comm = "checkout-next".into();
                        e.key_fingerprint = self.fingerprints["checkout-next"].as_str().into();
                        self.pending.push(e);
                    }
                }
                What::Metronome => {
                    let i = self.stream("rates-api", "reporting");
                    let every = (p.size * 1e6) as i64;
                    let mut k = (a - p.start + every - 1) / every;
                    while p.start + k * every < b {
                        let ts =
                            p.start + k * every + self.rng.random_range(0..(every / 200).max(1));
                        let mut e = self.base_event(i, ts);
                        e.app_id = "warehouse-sync".into();
                        e.client_comm = "warehouse-sync".into();
                        e.client_cgroup = "/system.slice/warehouse-sync.service".into();
                        e.src_ip = ip(10, 0, 3, 1);
                        e.user_agent = "wsync/3".into();
                        self.pending.push(e);
                        k += 1;
                    }
                }
                What::RetryStorm => self.retry_storm(p, t0, t1),
                What::ClientBug => {
                    let i = self.stream("payments-api", "mobile-app");
                    let lambda = self.streams[i].peak * shape * p.size * frac;
                    for ts in self.times(a, b, lambda) {
                        let src =
                            self.bug_sources[self.rng.random_range(0..self.bug_sources.len())];
                        let mut e = self.base_event(i, ts);
                        let IpAddr::V4(v4) = src else {
                            unreachable!("v4 pool")
                        };
                        e.method = "GET".into();
                        e.route = "/v1/payments/{id}".into();
                        e.path = format!("/v1/payments/{}", v4.octets()[3]);
                        e.src_ip = src;
                        e.user_agent = "MobileCheckout/2.4.0".into();
                        e.status = if self.rng.random_bool(0.3) { 429 } else { 200 };
                        e.request_hash = self.request_hash(&e);
                        self.pending.push(e);
                    }
                }
                What::Flood => {
                    let i = self.stream("rates-api", "");
                    let lambda = self.streams[i].peak * shape * p.size * frac;
                    for ts in self.times(a, b, lambda) {
                        let mut e = self.base_event(i, ts);
                        e.src_ip =
                            self.flood_sources[self.rng.random_range(0..self.flood_sources.len())];
                        e.user_agent = ["curl/8.5", "python-requests/2.31", "Go-http-client/1.1"]
                            [self.rng.random_range(0..3)]
                        .into();
                        self.pending.push(e);
                    }
                }
                What::BackendFailure => {
                    let n = self.pending.len();
                    for e in self.pending[..n].iter_mut() {
                        if e.api_id == "inventory-api"
                            && e.ts.0 >= a
                            && e.ts.0 < b
                            && self.rng.random_bool(p.size)
                        {
                            e.status = 500;
                        }
                    }
                }
                What::ErrorBlip => {
                    for e in self.pending.iter_mut() {
                        if e.api_id == "payments-api"
                            && e.ts.0 >= a
                            && e.ts.0 < b
                            && self.rng.random_bool(0.5)
                        {
                            e.status = 502;
                        }
                    }
                }
                What::RevokedKey
                | What::UnknownKey
                | What::SharedKey
                | What::ShadowConsumer
                | What::UndocumentedRoute => self.governance(p, a, b, frac),
                What::Successor | What::FlashCrowd | What::LevelShift => {}
            }
        }
    }

    fn stream(&self, api: &str, app: &str) -> usize {
        self.streams
            .iter()
            .position(|s| s.api == api && s.app == app)
            .expect("stream exists")
    }

    /// Poisson arrivals with mean `lambda` uniformly in [a, b).
    fn times(&mut self, a: i64, b: i64, lambda: f64) -> Vec<i64> {
        if lambda <= 0.0 || b <= a {
            return Vec::new();
        }
        let n = Poisson::new(lambda)
            .expect("positive")
            .sample(&mut self.rng) as usize;
        (0..n).map(|_| self.rng.random_range(a..b)).collect()
    }

    /// Backend errors on orders-api; every client retries a failed request up to 3 times within seconds, the
    /// same request from the same address on a new connection, and retries fail alike.
    fn retry_storm(&mut self, p: &Placed, t0: i64, t1: i64) {
        let mut i = 0;
        while i < self.pending.len() {
            let e = &self.pending[i];
            if e.api_id == "orders-api"
                && e.ts.0 >= p.start.max(t0)
                && e.ts.0 < p.end.min(t1)
                && e.status < 500
                && self.rng.random_bool(p.size)
            {
                let mut failed = self.pending[i].clone();
                self.pending[i].status = 503;
                let mut at = failed.ts.0;
                for _ in 0..3 {
                    at += self.rng.random_range(200_000..3_000_000);
                    failed.ts = Timestamp(at);
                    failed.conn_id = self.rng.random();
                    let fails = self.rng.random_bool(p.size);
                    failed.status = if fails { 503 } else { 200 };
                    self.pending.push(failed.clone());
                    if !fails {
                        break;
                    }
                }
            }
            i += 1;
        }
    }

    fn governance(&mut self, p: &Placed, a: i64, b: i64, frac: f64) {
        let minutes = ((p.end - p.start) as f64 / MIN_US as f64).max(1.0);
        let lambda = p.size / minutes * frac;
        let (api, app_stream) = match p.what {
            What::RevokedKey => ("inventory-api", "warehouse-sync"),
            What::ShadowConsumer => ("orders-api", "partner-portal"),
            _ => ("payments-api", "partner-portal"),
        };
        let i = self.stream(api, app_stream);
        // At least one call in the first minute, so the onset is observable.
        let mut times = self.times(a, b, lambda);
        if a == p.start && times.is_empty() {
            times.push(a + (b - a) / 2);
        }
        for ts in times {
            let mut e = self.base_event(i, ts);
            match p.what {
                What::RevokedKey => {
                    e.app_id = "legacy-batch".into();
                    e.client_comm = "legacy-batch".into();
                    e.client_cgroup = "/system.slice/legacy-batch.service".into();
                    e.key_fingerprint = self.fingerprints["legacy-batch"].as_str().into();
                    e.key_state = KeyState::Revoked;
                }
                What::UnknownKey => {
                    e.app_id = Default::default();
                    e.client_comm = "python3".into();
                    e.client_cgroup = "/user.slice/user-1000.slice".into();
                    e.key_fingerprint = self.secret.fingerprint_hex(b"sk_stolen_or_typo").into();
                    e.key_state = KeyState::Unknown;
                    e.attributed_by = AttributedBy::None;
                }
                What::SharedKey => {
                    e.app_id = "checkout-v1".into();
                    e.client_comm = "curl".into();
                    e.client_cgroup = "/user.slice/user-1001.slice/session-4.scope".into();
                    e.key_fingerprint = self.fingerprints["checkout-v1"].as_str().into();
                }
                What::ShadowConsumer => {
                    e.app_id = Default::default();
                    e.client_comm = "cron-export".into();
                    e.client_cgroup = "/system.slice/export.service".into();
                    e.key_fingerprint = Default::default();
                    e.key_state = KeyState::None;
                    e.attributed_by = AttributedBy::None;
                }
                _ => {
                    e.method = "POST".into();
                    e.path = format!("/v1/payments/{}/capture", self.rng.random_range(1..100_000));
                    e.route = "/v1/payments/{id}/capture".into();
                    e.request_hash = self.request_hash(&e);
                }
            }
            self.pending.push(e);
        }
    }
}
