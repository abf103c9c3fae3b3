//! A loaded registry compiled for the event path (`Snapshot`): API selection by host / port / base path / server
//! workload (most specific wins), route lookup, the inferred-route cardinality cap, key lookup by fingerprint and
//! application lookup by client workload. Lookups do not allocate.
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::RwLock;

use crate::event::{SharedStr, Timestamp};

use super::fingerprint::{key_suffix, parse_fingerprint, KeySecret};
use super::model::{Api, ApiMatch, Application, Key, Registry, Team, DEFAULT_MAX_INFERRED_ROUTES};

/// Route emitted once an API's inferred-route cap is reached.
pub const OVERFLOW_ROUTE: &str = "{other}";

/// Distinct inferred route templates of one API, capped. Each is kept once and handed to events shared.
#[derive(Debug)]
pub struct InferredRoutes {
    cap: usize,
    seen: RwLock<HashSet<SharedStr, foldhash::fast::RandomState>>,
    overflow: SharedStr,
}

impl InferredRoutes {
    pub fn new(cap: usize) -> Self {
        InferredRoutes {
            cap,
            seen: RwLock::default(),
            overflow: SharedStr::from(OVERFLOW_ROUTE),
        }
    }

    /// `template` if already known or room remains; otherwise [`OVERFLOW_ROUTE`].
    pub fn admit(&self, template: &str) -> SharedStr {
        {
            let seen = self.seen.read().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = seen.get(template) {
                return t.share();
            }
            if seen.len() >= self.cap {
                return self.overflow.share();
            }
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = seen.get(template) {
            return t.share();
        }
        if seen.len() < self.cap {
            let t = SharedStr::from(template);
            seen.insert(t.clone());
            t
        } else {
            self.overflow.share()
        }
    }

    pub fn len(&self) -> usize {
        self.seen.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn copy_from(&self, other: &InferredRoutes) {
        let theirs = other.seen.read().unwrap_or_else(|e| e.into_inner());
        let mut mine = self.seen.write().unwrap_or_else(|e| e.into_inner());
        for t in theirs.iter().take(self.cap) {
            mine.insert(t.clone());
        }
    }
}

/// One immutable version of the registry, ready for enrichment. Swapped whole on reload.
#[derive(Debug)]
pub struct Snapshot {
    pub registry: Registry,
    /// 0 for the registry loaded at start, then +1 per successful reload.
    pub generation: u64,
    pub loaded_at: Timestamp,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    pub(crate) secret: KeySecret,
    /// The API matchers a request may satisfy, by host (or Service, or server process) and base path.
    api_index: super::api_index::ApiIndex,
    /// Per API, its routes as a tree of path segments (most specific first where several match).
    route_index: Vec<super::route::RouteIndex>,
    inferred: Vec<InferredRoutes>,
    /// Inferred routes of traffic that matched no API.
    unmatched_inferred: InferredRoutes,
    key_by_fp: HashMap<[u8; 32], usize, foldhash::fast::RandomState>,
    /// Fingerprints of the keys presented lately (this snapshot's keys and secret).
    key_cache: super::key_cache::KeyCache,
    app_by_id: HashMap<String, usize, foldhash::fast::RandomState>,
    /// What events carry of the registry, by index in it: enrichment hands out shared copies.
    text: EventText,
    team_by_id: HashMap<String, usize>,
    /// (application index, selector index), most specific first, then file order: a selector's rank is its
    /// position here.
    selectors: Vec<(usize, usize)>,
    /// Selector ranks by a literal term, so that the workload lookup reads the few selectors that can match.
    selector_index: SelectorIndex,
}

/// Ranks of workload selectors (ascending in each list), each under one literal term it has: its `workload`, else its
/// `comm`, else its first label, else its `namespace` (a selector with a literal term matches only a client with that
/// value). Selectors with none of these (only wildcards and cgroup globs) are tried for every client. On Kubernetes, selectors name a namespace or workload rather than a
/// comm, and with only comms indexed a keyless event tried every selector: 1.7 µs of enrichment with 200 applications,
/// 0.29 µs with this index (`enrich/no_key_kubernetes_workload` in `cargo bench -p observer --bench enrich`).
#[derive(Debug, Default)]
struct SelectorIndex {
    by_workload: HashMap<String, Vec<usize>>,
    by_comm: HashMap<String, Vec<usize>>,
    /// By label key, then value (`matchLabels` compares values exactly).
    by_label: HashMap<String, HashMap<String, Vec<usize>>>,
    by_namespace: HashMap<String, Vec<usize>>,
    other: Vec<usize>,
}

impl SelectorIndex {
    fn build(registry: &Registry, selectors: &[(usize, usize)]) -> Self {
        let mut index = SelectorIndex::default();
        let literal = |g: &Option<super::glob::Glob>| {
            g.as_ref()
                .filter(|g| g.is_literal())
                .map(|g| g.as_str().to_string())
        };
        for (rank, &(a, s)) in selectors.iter().enumerate() {
            let sel = &registry.applications[a].workload[s];
            let list = if let Some(w) = literal(&sel.workload) {
                index.by_workload.entry(w).or_default()
            } else if let Some(c) = literal(&sel.comm) {
                index.by_comm.entry(c).or_default()
            } else if let Some((k, v)) = sel.labels.first() {
                index
                    .by_label
                    .entry(k.clone())
                    .or_default()
                    .entry(v.clone())
                    .or_default()
            } else if let Some(n) = literal(&sel.namespace) {
                index.by_namespace.entry(n).or_default()
            } else {
                &mut index.other
            };
            list.push(rank);
        }
        index
    }

    /// Calls `f` with each list of ranks that may hold a selector matching the client.
    fn lists<'a>(
        &'a self,
        comm: &str,
        pod: Option<&crate::kube::PodMeta>,
        mut f: impl FnMut(&'a [usize]),
    ) {
        if let Some(r) = self.by_comm.get(comm) {
            f(r);
        }
        if let Some(pod) = pod {
            if let Some(r) = self.by_workload.get(pod.workload.as_str()) {
                f(r);
            }
            if let Some(r) = self.by_namespace.get(pod.namespace.as_str()) {
                f(r);
            }
            if !self.by_label.is_empty() {
                for (k, v) in &pod.labels {
                    if let Some(r) = self.by_label.get(k).and_then(|by_value| by_value.get(v)) {
                        f(r);
                    }
                }
            }
        }
        f(&self.other);
    }
}

/// An API's values as events carry them (`api_id`, `api_name`, `api_owner`).
#[derive(Debug, Clone, Default)]
pub struct ApiText {
    pub id: SharedStr,
    pub name: SharedStr,
    pub owner: SharedStr,
}

/// An application's values as events carry them (`app_id`, `app_name`, `app_team`, `line_of_business`).
#[derive(Debug, Clone, Default)]
pub struct AppText {
    pub id: SharedStr,
    pub name: SharedStr,
    pub team: SharedStr,
    pub line_of_business: SharedStr,
}

/// The registry's values events carry, made once per snapshot and shared by reference count: enrichment clones
/// them instead of copying up to ten strings into every event (`cargo bench -p observer --bench replay`, an API and
/// route matched, key unknown, with the unknown key's fingerprint in one allocation: 15 -> 11 allocations and
/// 2.49-2.93 -> 2.43-2.63 µs per event, three runs each side by side at load 0.7 on the 2-vCPU box).
#[derive(Debug, Default)]
struct EventText {
    apis: Vec<ApiText>,
    /// Per API, its route templates (`route`), in `routes` order.
    routes: Vec<Vec<SharedStr>>,
    apps: Vec<AppText>,
    /// Per key, its fingerprint in lower-case hex (`key_fingerprint`), as enrichment writes unknown keys'.
    key_fps: Vec<SharedStr>,
}

impl EventText {
    fn of(registry: &Registry) -> Self {
        EventText {
            apis: registry
                .apis
                .iter()
                .map(|a| ApiText {
                    id: a.id.as_str().into(),
                    name: a.name.as_str().into(),
                    owner: a.owner.as_str().into(),
                })
                .collect(),
            routes: registry
                .apis
                .iter()
                .map(|a| a.routes.iter().map(|r| r.path.as_str().into()).collect())
                .collect(),
            apps: registry
                .applications
                .iter()
                .map(|a| AppText {
                    id: a.id.as_str().into(),
                    name: a.name.as_str().into(),
                    team: a.team.as_str().into(),
                    line_of_business: a.line_of_business.as_str().into(),
                })
                .collect(),
            key_fps: registry
                .keys
                .iter()
                .map(|k| {
                    let mut hex = String::new();
                    if let Some(fp) = parse_fingerprint(&k.fingerprint) {
                        super::fingerprint::write_hex(&fp, &mut hex);
                    }
                    SharedStr::from(hex)
                })
                .collect(),
        }
    }
}

impl Snapshot {
    /// Compiles `registry`. Inferred routes seen by `previous` carry over for APIs with the same id.
    pub fn build(
        registry: Registry,
        secret: KeySecret,
        generation: u64,
        source: Option<PathBuf>,
        previous: Option<&Snapshot>,
    ) -> Self {
        let api_index = super::api_index::ApiIndex::build(&registry.apis);
        let route_index = registry
            .apis
            .iter()
            .map(|a| super::route::RouteIndex::build(&a.routes))
            .collect();
        let inferred: Vec<InferredRoutes> = registry
            .apis
            .iter()
            .map(|a| InferredRoutes::new(a.max_inferred_routes))
            .collect();
        let unmatched_inferred = InferredRoutes::new(DEFAULT_MAX_INFERRED_ROUTES);
        if let Some(prev) = previous {
            for (api, inf) in registry.apis.iter().zip(&inferred) {
                if let Some(j) = prev.registry.apis.iter().position(|p| p.id == api.id) {
                    inf.copy_from(&prev.inferred[j]);
                }
            }
            unmatched_inferred.copy_from(&prev.unmatched_inferred);
        }
        let key_by_fp = registry
            .keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| Some((parse_fingerprint(&k.fingerprint)?, i)))
            .collect();
        let app_by_id = registry
            .applications
            .iter()
            .enumerate()
            .map(|(i, a)| (a.id.clone(), i))
            .collect();
        let team_by_id = registry
            .teams
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        let mut selectors: Vec<(usize, usize)> = registry
            .applications
            .iter()
            .enumerate()
            .flat_map(|(a, app)| (0..app.workload.len()).map(move |s| (a, s)))
            .collect();
        selectors.sort_by_key(|&(a, s)| {
            std::cmp::Reverse(registry.applications[a].workload[s].specificity())
        });
        let selector_index = SelectorIndex::build(&registry, &selectors);
        let text = EventText::of(&registry);
        Snapshot {
            text,
            registry,
            generation,
            loaded_at: Timestamp::now(),
            source,
            secret,
            api_index,
            route_index,
            inferred,
            unmatched_inferred,
            key_by_fp,
            key_cache: Default::default(),
            app_by_id,
            team_by_id,
            selectors,
            selector_index,
        }
    }

    /// An empty registry (no `--registry`): every exchange gets inferred routes and `unknown`/`none` keys.
    pub fn empty(secret: KeySecret) -> Self {
        Self::build(Registry::default(), secret, 0, None, None)
    }

    pub fn secret(&self) -> &KeySecret {
        &self.secret
    }

    pub fn api(&self, i: usize) -> &Api {
        &self.registry.apis[i]
    }

    pub fn team(&self, id: &str) -> Option<&Team> {
        self.team_by_id.get(id).map(|&i| &self.registry.teams[i])
    }

    pub fn application(&self, id: &str) -> Option<&Application> {
        self.app_by_id
            .get(id)
            .map(|&i| &self.registry.applications[i])
    }

    /// The fingerprint of a presented key, and the registry key it belongs to; computed once per key and then
    /// found by a keyed hash (`key_cache`).
    pub fn fingerprint_of(&self, raw: &[u8]) -> super::Fingerprinted {
        self.key_cache.get_or_insert(&self.secret, raw, |fp, raw| {
            let suffix = SharedStr::from(std::str::from_utf8(raw).map(key_suffix).unwrap_or(""));
            let hex = match self.key_by_fp.get(&fp) {
                Some(&i) => {
                    return super::Fingerprinted {
                        key: Some(i),
                        hex: self.text.key_fps[i].clone(),
                        suffix,
                    }
                }
                None => {
                    let mut hex_buf = [0u8; 64];
                    SharedStr::from(
                        hex::encode_to_slice(fp, &mut hex_buf)
                            .map_or("", |()| std::str::from_utf8(&hex_buf).unwrap_or("")),
                    )
                }
            };
            super::Fingerprinted {
                key: None,
                hex,
                suffix,
            }
        })
    }

    /// Registry key `i` (an index [`Snapshot::fingerprint_of`] gave).
    pub fn key(&self, i: usize) -> &Key {
        &self.registry.keys[i]
    }

    /// API `i`'s values as events carry them.
    pub fn api_text(&self, i: usize) -> &ApiText {
        &self.text.apis[i]
    }

    /// The application `id`'s values as events carry them.
    pub fn app_text(&self, id: &str) -> Option<&AppText> {
        self.app_by_id.get(id).map(|&i| &self.text.apps[i])
    }

    /// The most specific API matching the request, by index. `host` may carry a port (it is stripped).
    ///
    /// Specificity, compared in order: longer matching base path (or literal start of a matching path regex);
    /// literal host over wildcard host; more server workload criteria (comm, cgroup, service); a port criterion; a method criterion. Each
    /// API scores by its best matcher. Ties go to the API defined first (validation reports true ties).
    pub fn match_api(
        &self,
        host: &str,
        port: u16,
        method: &str,
        path: &str,
        server: &ServerEnd<'_>,
    ) -> Option<usize> {
        let host = strip_port(host);
        // The highest score wins; of equal scores, the matcher first in the file (as a scan in file order finds).
        let mut best: Option<(Score, super::api_index::MatcherId)> = None;
        self.api_index
            .candidates(host, path, server.comm, server.services, |id| {
                let m = &self.registry.apis[id.0 as usize].matchers[id.1 as usize];
                if let Some(s) = score(m, host, port, method, path, server) {
                    if best.is_none_or(|(b, bid)| s > b || (s == b && id < bid)) {
                        best = Some((s, id));
                    }
                }
            });
        best.map(|(_, id)| id.0 as usize)
    }

    /// The registered route template of API `api` matching the request, if any.
    pub fn match_route(&self, api: usize, method: &str, path: &str) -> Option<&SharedStr> {
        self.route_index[api]
            .find(&self.registry.apis[api].routes, method, path)
            .map(|i| &self.text.routes[api][i])
    }

    /// The inferred `template` under the inferred-route cap of `api` (or of unmatched traffic).
    pub fn admit_inferred(&self, api: Option<usize>, template: &str) -> SharedStr {
        match api {
            Some(i) => self.inferred[i].admit(template),
            None => self.unmatched_inferred.admit(template),
        }
    }

    /// Number of distinct inferred routes so far for `api` (None: unmatched traffic).
    pub fn inferred_count(&self, api: Option<usize>) -> usize {
        match api {
            Some(i) => self.inferred[i].len(),
            None => self.unmatched_inferred.len(),
        }
    }

    /// The application whose workload selectors match the client (most specific selector first, then file order),
    /// as events carry it.
    pub fn app_by_workload(
        &self,
        comm: &str,
        cgroup: &str,
        pod: Option<&crate::kube::PodMeta>,
    ) -> Option<&AppText> {
        // The lowest rank matching in any list: each list is ascending, so it is read up to its first match or up to
        // the best rank so far.
        let mut best: Option<usize> = None;
        self.selector_index.lists(comm, pod, |ranks| {
            let found = ranks
                .iter()
                .copied()
                .take_while(|&r| best.is_none_or(|b| r < b))
                .find(|&r| {
                    let (a, s) = self.selectors[r];
                    self.registry.applications[a].workload[s].matches(comm, cgroup, pod)
                });
            if found.is_some() {
                best = found;
            }
        });
        Some(&self.text.apps[self.selectors[best?].0])
    }
}

/// What is known of the server end of an exchange, for API matchers' workload criteria.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerEnd<'a> {
    pub comm: &'a str,
    pub cgroup: &'a str,
    /// The Kubernetes Services (`namespace/name`) the server's address backs (`--kubernetes`), else empty.
    pub services: &'a [crate::event::SharedStr],
}

/// (path, host, workload, port, method) specificity of a matching matcher.
pub(super) type Score = (usize, u8, u8, u8, u8);

/// How specifically `m` matches the request, or None when it does not.
pub(super) fn score(
    m: &ApiMatch,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    server: &ServerEnd<'_>,
) -> Option<Score> {
    let host_score = if m.hosts.is_empty() {
        0
    } else {
        m.hosts
            .iter()
            .filter(|g| g.matches(host))
            .map(|g| if g.is_literal() { 2 } else { 1 })
            .max()?
    };
    if !m.ports.is_empty() && !m.ports.contains(&port) {
        return None;
    }
    if !m.methods.is_empty() && !m.methods.iter().any(|x| x.eq_ignore_ascii_case(method)) {
        return None;
    }
    let base_score = if m.base_paths.is_empty() {
        0
    } else {
        m.base_paths
            .iter()
            .filter(|b| has_path_prefix(path, b))
            .map(|b| b.len() + 1)
            .max()?
    };
    let regex_score = if m.path_regex.is_empty() {
        0
    } else {
        m.path_regex
            .iter()
            .filter(|r| r.is_match(path))
            .map(|r| r.literal_prefix_len() + 1)
            .max()?
    };
    if !m.server_comm.is_empty() && !m.server_comm.iter().any(|g| g.matches(server.comm)) {
        return None;
    }
    if !m.server_cgroup.is_empty() && !m.server_cgroup.iter().any(|g| g.matches(server.cgroup)) {
        return None;
    }
    if !m.services.is_empty()
        && !m
            .services
            .iter()
            .any(|g| server.services.iter().any(|s| g.matches(s)))
    {
        return None;
    }
    let workload = !m.server_comm.is_empty() as u8
        + !m.server_cgroup.is_empty() as u8
        + !m.services.is_empty() as u8;
    Some((
        base_score.max(regex_score),
        host_score,
        workload,
        !m.ports.is_empty() as u8,
        !m.methods.is_empty() as u8,
    ))
}

/// `host:port` / `[v6]:port` -> host.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether `path` starts with the base path `base` on a segment boundary.
pub fn has_path_prefix(path: &str, base: &str) -> bool {
    if base == "/" {
        return true;
    }
    match path.strip_prefix(base) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::event::SharedStr;
    use crate::registry::load_str;

    #[test]
    fn strip_port_drops_a_numeric_port_only() {
        for (host, bare) in [
            ("api.example.com:8080", "api.example.com"),
            ("api.example.com", "api.example.com"),
            ("api.example.com:", "api.example.com"),
            ("api.example.com:http", "api.example.com:http"),
            ("[::1]:8080", "::1"),
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("fe80::1:443", "fe80::1:443"),
            ("", ""),
            (":80", ""),
        ] {
            assert_eq!(strip_port(host), bare, "{host:?}");
        }
    }

    fn snapshot(text: &str) -> Snapshot {
        let secret = KeySecret::from_bytes(b"matching-test-secret");
        let loaded =
            load_str(text, Path::new("."), &secret).unwrap_or_else(|p| panic!("valid: {p:?}"));
        Snapshot::build(loaded.registry, secret, 0, None, None)
    }

    #[test]
    fn each_matcher_keeps_its_own_hosts_paths_and_methods() {
        let snap = snapshot("teams: [{id: t}]\napis:\n  - id: admin\n    owner: t\n    match:\n      - {hosts: a.com, base_path: /admin}\n      - {hosts: b.com, base_path: /api, methods: [GET]}\n  - id: users\n    owner: t\n    match: {hosts: b.com, path_regex: '/users/\\d+'}\n  - id: fallback\n    owner: t\n    match: {hosts: [a.com, b.com]}\n");
        let api = |host: &str, method: &str, path: &str| {
            snap.match_api(host, 80, method, path, &ServerEnd::default())
                .map(|i| snap.api(i).id.as_str())
        };
        assert_eq!(api("a.com", "GET", "/admin/x"), Some("admin"));
        assert_eq!(api("b.com", "GET", "/api/x"), Some("admin"));
        assert_eq!(
            api("b.com", "GET", "/admin/x"),
            Some("fallback"),
            "host B with /admin is not the first route's"
        );
        assert_eq!(
            api("b.com", "POST", "/api/x"),
            Some("fallback"),
            "the route's methods hold"
        );
        assert_eq!(
            api("b.com", "GET", "/users/42/x"),
            Some("users"),
            "regex anchored at the start"
        );
        assert_eq!(
            api("b.com", "GET", "/users/me"),
            Some("fallback"),
            "regex does not widen to the host"
        );
        assert_eq!(api("c.com", "GET", "/admin"), None);
    }

    #[test]
    fn a_service_term_matches_the_servers_services() {
        let snap = snapshot("teams: [{id: t}]\napis:\n  - id: checkout\n    owner: t\n    match: {service: shop/checkout}\n  - id: shop-any\n    owner: t\n    match: {service: \"shop/*\", ports: 8080}\n  - id: by-port\n    owner: t\n    match: {ports: 8080}\n  - id: checkout-admin\n    owner: t\n    match: {service: shop/checkout, base_path: /admin}\n");
        let api = |services: &[&str], port: u16, path: &str| {
            let services: Vec<SharedStr> = services.iter().map(|s| SharedStr::from(*s)).collect();
            let server = ServerEnd {
                services: &services,
                ..ServerEnd::default()
            };
            snap.match_api("10.0.0.1", port, "GET", path, &server)
                .map(|i| snap.api(i).id.as_str())
        };
        assert_eq!(api(&["shop/checkout"], 80, "/"), Some("checkout"));
        assert_eq!(
            api(&["default/x", "shop/checkout"], 80, "/"),
            Some("checkout"),
            "any of the server's Services"
        );
        assert_eq!(
            api(&["shop/cart"], 8080, "/"),
            Some("shop-any"),
            "a glob, and a port beside it: more specific than the port alone"
        );
        assert_eq!(api(&["shop/cart"], 9090, "/"), None);
        assert_eq!(api(&[], 8080, "/"), Some("by-port"), "no Service known");
        assert_eq!(
            api(&["shop/checkout"], 8080, "/admin/users"),
            Some("checkout-admin"),
            "a base path beside the Service wins"
        );
    }

    #[test]
    fn the_selector_index_finds_the_application_a_full_scan_finds() {
        use super::super::glob::Glob;
        use super::super::model::{Application, WorkloadSelector};
        use crate::kube::PodMeta;
        use crate::registry::api_index::tests::Rng;
        let glob = |r: &mut Rng, from: &[&str]| {
            let g = r.pick(from);
            (!g.is_empty()).then(|| Glob::new(g, false))
        };
        let mut found = 0;
        for seed in 1..=300u64 {
            let mut r = Rng::seeded(seed);
            let applications: Vec<Application> = (0..1 + r.below(10))
                .map(|i| Application {
                    id: format!("app-{i}"),
                    name: String::new(),
                    team: String::new(),
                    line_of_business: String::new(),
                    created_by: String::new(),
                    created_at: None,
                    predecessor: None,
                    workload: (0..1 + r.below(2))
                        .map(|_| WorkloadSelector {
                            comm: glob(&mut r, &["", "", "worker", "work*", "java"]),
                            cgroup: r
                                .some(&["/kubepods/**/app-1-*", "/system.slice/x.service"], 1)
                                .first()
                                .map(|c| Glob::path(c)),
                            namespace: glob(&mut r, &["", "", "shop", "sh*", "pay"]),
                            workload: glob(
                                &mut r,
                                &["", "", "Deployment/checkout", "Deployment/check*", "Job/x"],
                            ),
                            labels: r
                                .some(&["a", "b"], 1)
                                .into_iter()
                                .map(|v| ("app".to_string(), v.to_string()))
                                .collect(),
                            line: 0,
                        })
                        .collect(),
                    line: i,
                })
                .collect();
            let registry = Registry {
                applications,
                ..Registry::default()
            };
            let snap = Snapshot::build(registry, KeySecret::from_bytes(b"t"), 0, None, None);
            for _ in 0..30 {
                let comm = r.pick(&["worker", "workers", "java", "nginx"]);
                let cgroup = r.pick(&[
                    "/kubepods/burstable/app-1-x",
                    "/system.slice/x.service",
                    "/",
                ]);
                let pod = (r.below(4) != 0).then(|| PodMeta {
                    namespace: r.pick(&["shop", "shops", "pay"]).into(),
                    workload: r
                        .pick(&["Deployment/checkout", "Deployment/checkouts", "Job/x", ""])
                        .into(),
                    labels: r
                        .some(&["a", "b"], 1)
                        .into_iter()
                        .map(|v| ("app".to_string(), v.to_string()))
                        .collect(),
                    ..PodMeta::default()
                });
                // Every selector in rank order, the first that matches.
                let want = snap.selectors.iter().find(|&&(a, s)| {
                    snap.registry.applications[a].workload[s].matches(comm, cgroup, pod.as_ref())
                });
                let want = want.map(|&(a, _)| snap.registry.applications[a].id.as_str());
                let got = snap
                    .app_by_workload(comm, cgroup, pod.as_ref())
                    .map(|t| t.id.as_str());
                assert_eq!(got, want, "seed {seed}: {comm} {cgroup} {pod:?}");
                found += usize::from(got.is_some());
            }
        }
        assert!(found > 1_000, "{found} clients matched an application");
    }
}
