//! Which API matchers a request could satisfy, found without reading every matcher: matchers indexed by their literal
//! hosts (or, without hosts, by literal Service or server process name), then by their base paths.
//! `Snapshot::match_api` scores only these, so choosing an API costs the same with 10 APIs as with 1,000 (0.22 µs of
//! enrichment either way, `registry_size` in `cargo bench -p observer --bench enrich`); the scan it replaced read every
//! matcher of every API for every exchange (with 50 APIs, 45% of enrichment's instructions; BENCHMARKS.md, "Stop 23").
//!
//! The index only narrows: it offers a superset of the matchers that can match (every matcher whose hosts, Services,
//! process names and base paths allow the request), and `score` decides as before. Tests compare it with the full scan
//! on random registries.
use std::collections::HashMap;

use super::glob::Glob;
use super::model::{Api, ApiMatch};
use crate::event::SharedStr;

/// A matcher's place: (API index, matcher index in that API). Ordered as the registry file is, which breaks ties.
pub(super) type MatcherId = (u32, u32);

type Map<V> = HashMap<Box<str>, V, foldhash::fast::RandomState>;

/// Matchers by host: literal hosts by their lower-case text, the rest in two lists. A matcher without hosts whose
/// Services (or else server process names) are all literal is found by those instead (APIs told apart by the Service
/// or process serving them, as on Kubernetes).
#[derive(Debug, Default)]
pub(super) struct ApiIndex {
    /// Matchers by one of their literal hosts, lower case (host globs are case-insensitive).
    by_host: Map<PathIndex>,
    /// Matchers with a host pattern that has a wildcard: the glob decides.
    wildcard_host: PathIndex,
    /// Matchers without hosts, by one of their Services (`namespace/name`), all literal.
    by_service: Map<PathIndex>,
    /// Matchers without hosts or such Services, by one of their server process names, all literal.
    by_server_comm: Map<PathIndex>,
    /// The other matchers without a host criterion.
    any_host: PathIndex,
}

/// Matchers by base path (`/v1/orders` is found for `/v1/orders/42` by looking up each prefix of the path that ends
/// before a `/`).
#[derive(Debug, Default)]
struct PathIndex {
    by_base: Map<Vec<MatcherId>>,
    /// Matchers that may take any path as far as base paths go: none given, or `/` among them.
    any_path: Vec<MatcherId>,
    /// The longest base path in `by_base`: longer prefixes of a request path are not looked up, which bounds the
    /// lookups of a path with many segments.
    longest: usize,
}

impl PathIndex {
    fn add(&mut self, id: MatcherId, m: &ApiMatch) {
        if m.base_paths.is_empty() || m.base_paths.iter().any(|b| b.is_empty() || b == "/") {
            self.any_path.push(id);
            return;
        }
        for b in &m.base_paths {
            let ids = self.by_base.entry(b.as_str().into()).or_default();
            if ids.last() != Some(&id) {
                ids.push(id);
            }
            self.longest = self.longest.max(b.len());
        }
    }

    /// Calls `f` with every matcher whose base paths allow `path`. `has_path_prefix(path, base)` holds exactly when
    /// `base` is `path[..k]` with `k` the path's length or the place of a `/`: those are the prefixes looked up.
    fn each(&self, path: &str, f: &mut impl FnMut(MatcherId)) {
        self.any_path.iter().copied().for_each(&mut *f);
        if self.by_base.is_empty() {
            return;
        }
        let bytes = path.as_bytes();
        for k in 1..=bytes.len().min(self.longest) {
            if k == bytes.len() || bytes[k] == b'/' {
                // `k` is the end or precedes an ASCII byte: a char boundary.
                if let Some(ids) = self.by_base.get(&path[..k]) {
                    ids.iter().copied().for_each(&mut *f);
                }
            }
        }
    }
}

/// Hosts up to this length are lower-cased on the stack for the lookup; longer ones (rare, and at most 255 bytes in
/// DNS) in a string.
const HOST_BUF: usize = 256;

impl ApiIndex {
    pub(super) fn build(apis: &[Api]) -> Self {
        let mut index = ApiIndex::default();
        for (a, api) in apis.iter().enumerate() {
            for (i, m) in api.matchers.iter().enumerate() {
                let id = (a as u32, i as u32);
                if m.hosts.is_empty() {
                    let all_literal = |g: &[Glob]| !g.is_empty() && g.iter().all(Glob::is_literal);
                    if all_literal(&m.services) {
                        add_each(&mut index.by_service, &m.services, id, m);
                    } else if all_literal(&m.server_comm) {
                        add_each(&mut index.by_server_comm, &m.server_comm, id, m);
                    } else {
                        index.any_host.add(id, m);
                    }
                    continue;
                }
                if m.hosts.iter().any(|h| !h.is_literal()) {
                    index.wildcard_host.add(id, m);
                }
                let literal: Vec<Glob> =
                    m.hosts.iter().filter(|h| h.is_literal()).cloned().collect();
                add_each(&mut index.by_host, &literal, id, m);
            }
        }
        index
    }

    /// Calls `f` with every matcher that may match a request for `host` (without its port) and `path`, served by a
    /// process named `server_comm` behind `services`, and maybe with some that do not, or with one twice.
    pub(super) fn candidates(
        &self,
        host: &str,
        path: &str,
        server_comm: &str,
        services: &[SharedStr],
        mut f: impl FnMut(MatcherId),
    ) {
        if !self.by_host.is_empty() {
            let mut buf = [0u8; HOST_BUF];
            let owned;
            let lower = if !host.bytes().any(|b| b.is_ascii_uppercase()) {
                host
            } else if host.len() <= HOST_BUF {
                let b = &mut buf[..host.len()];
                b.copy_from_slice(host.as_bytes());
                b.make_ascii_lowercase();
                // ASCII lower-casing keeps UTF-8 valid.
                std::str::from_utf8(b).unwrap_or(host)
            } else {
                owned = host.to_ascii_lowercase();
                owned.as_str()
            };
            if let Some(p) = self.by_host.get(lower) {
                p.each(path, &mut f);
            }
        }
        self.wildcard_host.each(path, &mut f);
        if !self.by_service.is_empty() {
            for s in services {
                if let Some(p) = self.by_service.get(s.as_str()) {
                    p.each(path, &mut f);
                }
            }
        }
        if let Some(p) = self.by_server_comm.get(server_comm) {
            p.each(path, &mut f);
        }
        self.any_host.each(path, &mut f);
    }
}

/// Adds matcher `id` under the text of each of `literals`, each text once.
fn add_each(map: &mut Map<PathIndex>, literals: &[Glob], id: MatcherId, m: &ApiMatch) {
    let mut texts: Vec<&str> = literals.iter().map(Glob::as_str).collect();
    texts.sort_unstable();
    texts.dedup();
    for t in texts {
        map.entry(t.into()).or_default().add(id, m);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::matching::{score, ServerEnd, Snapshot};
    use super::super::model::{PathRegex, Registry};
    use super::*;
    use crate::registry::KeySecret;

    /// The draws the random-registry tests make, from a seeded generator: the same registries on every run.
    pub(crate) struct Rng(rand_chacha::ChaCha8Rng);

    impl Rng {
        pub fn seeded(seed: u64) -> Self {
            Rng(rand::SeedableRng::seed_from_u64(seed))
        }

        /// A number in `0..n` (`n` > 0).
        pub fn below(&mut self, n: usize) -> usize {
            rand::Rng::random_range(&mut self.0, 0..n)
        }

        pub fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }

        /// Up to `most` entries of `from`, each drawn independently (repeats allowed).
        pub fn some<'a>(&mut self, from: &[&'a str], most: usize) -> Vec<&'a str> {
            (0..self.below(most + 1)).map(|_| self.pick(from)).collect()
        }
    }

    const HOSTS: &[&str] = &[
        "a.com",
        "B.com",
        "*.a.com",
        "api-*.example.com",
        "api-1.example.com",
        "x.example.com",
        "*",
    ];
    const BASES: &[&str] = &[
        "/",
        "/v1",
        "/v1/orders",
        "/v1/orders/",
        "/v2",
        "/v1/users",
        "/admin",
        "*",
        "/v1/orders/42",
    ];
    const REQ_HOSTS: &[&str] = &[
        "a.com",
        "A.COM",
        "b.com",
        "sub.a.com",
        "api-1.example.com",
        "API-2.example.com",
        "x.example.com",
        "other.net",
        "",
    ];
    const REQ_PATHS: &[&str] = &[
        "/",
        "/v1",
        "/v1/",
        "/v1/orders",
        "/v1/orders/42",
        "/v1/orders//x",
        "/v1/ordersx",
        "/v2/a",
        "/admin",
        "/admin/x/y",
        "*",
        "",
        "/v1/users/7/orders",
    ];

    fn random_api(i: usize, r: &mut Rng) -> Api {
        let matchers = (0..1 + r.below(3))
            .map(|_| ApiMatch {
                hosts: r
                    .some(HOSTS, 2)
                    .into_iter()
                    .map(|h| Glob::new(h, true))
                    .collect(),
                base_paths: r.some(BASES, 2).into_iter().map(String::from).collect(),
                path_regex: r
                    .some(&["/v1/orders/\\d+", "/admin"], 1)
                    .into_iter()
                    .map(|p| PathRegex::new(p).expect("regex"))
                    .collect(),
                methods: r
                    .some(&["GET", "POST"], 1)
                    .into_iter()
                    .map(String::from)
                    .collect(),
                ports: r
                    .some(&["80", "443"], 1)
                    .into_iter()
                    .map(|p| p.parse().expect("port"))
                    .collect(),
                server_comm: r
                    .some(&["nginx", "java", "ngin*"], 2)
                    .into_iter()
                    .map(|c| Glob::new(c, false))
                    .collect(),
                services: r
                    .some(&["shop/orders", "shop/users", "shop/*"], 2)
                    .into_iter()
                    .map(|c| Glob::new(c, false))
                    .collect(),
                ..ApiMatch::default()
            })
            .collect();
        Api {
            id: format!("api-{i}"),
            name: String::new(),
            owner: String::new(),
            line_of_business: String::new(),
            matchers,
            auth: Vec::new(),
            routes: Vec::new(),
            openapi: None,
            max_inferred_routes: 10,
            line: i,
        }
    }

    /// What `match_api` answered before the index: every matcher of every API scored, in file order.
    fn full_scan(
        apis: &[Api],
        host: &str,
        port: u16,
        method: &str,
        path: &str,
        server: &ServerEnd,
    ) -> Option<usize> {
        let host = super::super::matching::strip_port(host);
        let mut best = None;
        for (i, api) in apis.iter().enumerate() {
            for m in &api.matchers {
                let Some(s) = score(m, host, port, method, path, server) else {
                    continue;
                };
                if best.is_none_or(|(_, b)| s > b) {
                    best = Some((i, s));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    #[test]
    fn the_index_chooses_the_api_a_full_scan_chooses() {
        let mut matched = 0;
        for seed in 1..=400u64 {
            let mut r = Rng::seeded(seed);
            let apis: Vec<Api> = (0..1 + r.below(12))
                .map(|i| random_api(i, &mut r))
                .collect();
            let registry = Registry {
                apis,
                ..Registry::default()
            };
            let snap = Snapshot::build(
                registry,
                KeySecret::from_bytes(b"index-test"),
                0,
                None,
                None,
            );
            for _ in 0..40 {
                let host = r.pick(REQ_HOSTS);
                let host = if r.below(4) == 0 {
                    format!("{host}:8080")
                } else {
                    host.to_string()
                };
                let (path, method) = (r.pick(REQ_PATHS), r.pick(&["GET", "POST", "get"]));
                let port = [80, 443, 8080][r.below(3)];
                let services: Vec<SharedStr> = r
                    .some(&["shop/orders", "shop/users", "pay/x"], 2)
                    .into_iter()
                    .map(SharedStr::from)
                    .collect();
                let server = ServerEnd {
                    comm: r.pick(&["nginx", "java", "envoy"]),
                    cgroup: "",
                    services: &services,
                };
                let want = full_scan(&snap.registry.apis, &host, port, method, path, &server);
                let got = snap.match_api(&host, port, method, path, &server);
                assert_eq!(
                    got, want,
                    "seed {seed}: {method} {host} {path} port {port} {server:?}\n{:#?}",
                    snap.registry.apis
                );
                matched += usize::from(got.is_some());
            }
        }
        // The registries are not so sparse that nothing matches.
        assert!(matched > 2_000, "{matched} requests matched an API");
    }

    #[test]
    fn hosts_are_found_whatever_their_case_and_length() {
        let long = format!("{}.example.com", "a".repeat(300));
        let m = |h: &str| ApiMatch {
            hosts: vec![Glob::new(h, true)],
            ..ApiMatch::default()
        };
        let index = ApiIndex::build(&[Api {
            matchers: vec![m("Api.Example.COM"), m(&long)],
            ..random_api(0, &mut Rng::seeded(1))
        }]);
        let found = |host: &str| {
            let mut ids = Vec::new();
            index.candidates(host, "/", "", &[], |id| ids.push(id));
            ids
        };
        assert_eq!(found("api.example.com"), [(0, 0)]);
        assert_eq!(found("API.EXAMPLE.com"), [(0, 0)]);
        assert_eq!(found(&long.to_ascii_uppercase()), [(0, 1)]);
        assert_eq!(found("other.example.com"), []);
    }
}
