//! Per-event enrichment: joins each exchange with the registry (API, route, application, key state and how the
//! application was identified). Pure and allocation-light: the registry's values are shared with the event (reference
//! counted, see `registry::ApiText`), not copied into it; the raw key is only
//! borrowed (or decoded into a stack buffer) and never stored. The agent's capture thread calls
//! [`Enricher::enrich`] on every exchange before it goes to the sinks.
use std::sync::Arc;

use crate::event::{AttributedBy, Event, Exchange, KeyState, RequestExtras, SharedStr, Timestamp};
use crate::http::Headers;
use crate::registry::{
    infer_template, AppText, Auth, AuthKind, LiveRegistry, ServerEnd, Snapshot, DEFAULT_KEY_HEADERS,
};

/// Longest credential decoded from `Authorization: Basic` or a percent-encoded query value.
const SCRATCH: usize = 512;

/// Enriches exchanges against the live registry. Cheap to clone; use one per worker.
#[derive(Debug, Clone)]
pub struct Enricher {
    live: Arc<LiveRegistry>,
    /// Pod identity (`--kubernetes`), for the registry's Kubernetes selector terms.
    pods: Option<Arc<crate::kube::PodIdentity>>,
}

impl Enricher {
    pub fn new(live: Arc<LiveRegistry>) -> Self {
        Enricher { live, pods: None }
    }

    /// Looks up the client's pod by its cgroup for workload selectors with Kubernetes terms.
    pub fn with_pods(mut self, pods: Option<Arc<crate::kube::PodIdentity>>) -> Self {
        self.pods = pods;
        self
    }

    pub fn live(&self) -> &Arc<LiveRegistry> {
        &self.live
    }

    /// Fills the business-context fields of `ev` from the current registry snapshot and what its request
    /// carried (and, with `--kubernetes`, the pod fields from the current pod index).
    pub fn enrich(&self, ev: &mut Event, req: &RequestExtras) {
        let snap = self.live.load();
        match &self.pods {
            None => enrich_with(&snap, ev, req, KubeEnds::default()),
            Some(pods) => enrich_on_kubernetes(&snap, &pods.view(), ev, req),
        }
    }
}

/// [`enrich`] on Kubernetes: sets the pod fields of both ends from `pods` (see [`crate::kube::PodIndex::fill`]),
/// then matches APIs with the Services the server's address backs and applications with the client's pod.
pub fn enrich_on_kubernetes(
    snap: &Snapshot,
    pods: &crate::kube::PodIndex,
    ev: &mut Event,
    req: &RequestExtras,
) {
    let client = pods.fill(ev);
    let kube = KubeEnds {
        client: client.map(|p| &**p),
        server_services: pods.services(ev.dst_ip, ev.dst_port),
    };
    enrich_with(snap, ev, req, kube);
}

/// What pod identity (`--kubernetes`) knows of an exchange's ends, for the registry's Kubernetes terms.
#[derive(Debug, Clone, Copy, Default)]
pub struct KubeEnds<'a> {
    /// The client's pod, for application selectors by namespace, workload and labels.
    pub client: Option<&'a crate::kube::PodMeta>,
    /// The Services (`namespace/name`) the server's address backs, for API matchers by `service`.
    pub server_services: &'a [crate::event::SharedStr],
}

/// Fills `api_*`, `route`, `app_*`, `line_of_business`, `key_*` and `attributed_by` of `ex.event` from `snap`.
/// Key states are judged at the event's time (`ts`; now when unset).
pub fn enrich(snap: &Snapshot, ex: &mut Exchange) {
    enrich_with(snap, &mut ex.event, &ex.request, KubeEnds::default())
}

/// [`enrich`], with what is known of the ends on Kubernetes (for the registry's Kubernetes terms).
pub fn enrich_with(snap: &Snapshot, ev: &mut Event, req: &RequestExtras, kube: KubeEnds<'_>) {
    let RequestExtras {
        headers: request_headers,
        raw_query,
        body_prefix,
        propagated,
    } = req;
    let now = if ev.ts.0 > 0 { ev.ts } else { Timestamp::now() };

    // --- API and route ---
    let host = if ev.host.is_empty() {
        header(request_headers, "host").unwrap_or("")
    } else {
        ev.host.as_str()
    };
    let path = if ev.path.is_empty() {
        "/"
    } else {
        ev.path.as_str()
    };
    let api_idx = snap.match_api(
        host,
        ev.dst_port,
        &ev.method,
        path,
        &ServerEnd {
            comm: &ev.server_comm,
            cgroup: &ev.server_cgroup,
            services: kube.server_services,
        },
    );
    let api = api_idx.map(|i| snap.api(i));
    if let Some(t) = api_idx.map(|i| snap.api_text(i)) {
        (ev.api_id, ev.api_name, ev.api_owner) = (t.id.share(), t.name.share(), t.owner.share());
    } else {
        (ev.api_id, ev.api_name, ev.api_owner) = Default::default();
    }
    ev.request_hash = request_hash(
        snap.secret(),
        &ev.method,
        host,
        path,
        raw_query,
        body_prefix.as_slice(),
    );
    (ev.trace_id_hash, ev.request_id_hash) = match propagated {
        Some(at) => {
            let value =
                |at: Option<crate::http::ValueAt>| at.map(|at| request_headers.value_at(at));
            propagated_id_hashes_of(snap.secret(), value(at.traceparent), value(at.request_id))
        }
        None => propagated_id_hashes(snap.secret(), request_headers),
    };
    ev.route = match api_idx.and_then(|i| snap.match_route(i, &ev.method, path)) {
        Some(route) => route.share(),
        None => {
            let mut template = String::with_capacity(path.len() + 8);
            infer_template(path, &mut template);
            snap.admit_inferred(api_idx, &template)
        }
    };

    // --- key ---
    let default_auth;
    let auths: &[Auth] = match api {
        Some(a) => &a.auth,
        None => {
            default_auth = [Auth::default()];
            &default_auth
        }
    };
    let mut scratch = [0u8; SCRATCH];
    // The first location holding a credential wins; with several, it is extracted again so the probe's borrow of
    // `scratch` ends (one location, nearly every API, is read once).
    let key = match auths {
        [only] => extract_key(only, request_headers, raw_query, &mut scratch),
        _ => auths
            .iter()
            .position(|a| extract_key(a, request_headers, raw_query, &mut scratch).is_some())
            .and_then(|i| extract_key(&auths[i], request_headers, raw_query, &mut scratch)),
    };
    let mut app: Option<&AppText> = None;
    match key {
        None => {
            ev.key_fingerprint = SharedStr::default();
            ev.key_suffix = SharedStr::default();
            ev.key_state = KeyState::None;
        }
        Some(raw) => {
            let found = snap.fingerprint_of(raw);
            ev.key_fingerprint = found.hex;
            ev.key_suffix = found.suffix;
            match found.key.map(|i| snap.key(i)) {
                Some(k) => {
                    ev.key_state = k.state(api.map(|a| a.id.as_str()), now);
                    app = snap.app_text(&k.application);
                }
                None => ev.key_state = KeyState::Unknown,
            }
        }
    }
    // Decoded credentials do not linger on the stack.
    scratch.fill(0);
    std::hint::black_box(&scratch);

    // --- application ---
    ev.attributed_by = if app.is_some() {
        AttributedBy::Key
    } else {
        app = snap.app_by_workload(&ev.client_comm, &ev.client_cgroup, kube.client);
        if app.is_some() {
            AttributedBy::Workload
        } else {
            AttributedBy::None
        }
    };
    fill_app(ev, app);
}

/// The event's `request_hash`: SipHash-1-3, keyed from the deployment's key secret, of method, host, path, raw
/// query (values included) and body prefix (at most [`crate::event::BODY_PREFIX`] bytes, as
/// [`crate::event::BodyPrefix`] keeps them), each length-prefixed so fields cannot run into each other. Two events
/// have the same hash when they carry the same request; the hash keeps none of the values. Never 0 (0 is "none").
/// 32 bits (the high half 0): it only tells requests apart within a minute or a trace, where 1,000 distinct requests
/// collide (one repeat counted too many) about once in 8,600 such minutes, and a ClickHouse row stores 4 bytes, not 8.
///
/// Per-event cost (`cargo bench -p observer --bench enrich`, `enrich/request_hash`, 120 bytes hashed of which a
/// 64-byte body prefix, the most [`crate::event::BodyPrefix`] keeps): 0.38 µs [0.37, 0.40] at 18e19e2 on the shared
/// 2-vCPU box at load average ~15 (0.54 µs in an earlier loaded run); keeping the prefix in flow is one copy of at
/// most 64 bytes per request with a body. One SipHash pass,
/// where HMAC-SHA256 would take two SHA-256 compressions per 64 bytes plus its finalization.
pub fn request_hash(
    secret: &crate::registry::KeySecret,
    method: &str,
    host: &str,
    path: &str,
    raw_query: &str,
    body_prefix: &[u8],
) -> u64 {
    use std::hash::Hasher;
    let mut h = secret.request_hasher();
    for part in [
        method.as_bytes(),
        host.as_bytes(),
        path.as_bytes(),
        raw_query.as_bytes(),
        body_prefix,
    ] {
        h.write_usize(part.len());
        h.write(part);
    }
    u64::from((h.finish() as u32).max(1))
}

/// Bits kept of `trace_id_hash` and `request_id_hash` (the high byte is 0, and the columns' T64 codec stores 7 bytes:
/// the 30-day mean of `http_requests` went from 31.0 to 30.0 B/row, README "Storage in ClickHouse"). They are join
/// keys: `origin join` matches a root to exchanges with an equal hash in flight within about 2 s, so the expected
/// false matches are roots/s x hashed exchanges/s x 2 s / 2^56, at 100,000 a second each 0.024 a day (one in six
/// weeks). `origin join` compares these bits only, so rows of agents that kept 64 bits still join.
pub const PROPAGATED_ID_BITS: u32 = 56;
/// [`PROPAGATED_ID_BITS`] as a mask.
pub const PROPAGATED_ID_MASK: u64 = (1 << PROPAGATED_ID_BITS) - 1;

/// The event's `trace_id_hash` and `request_id_hash`: keyed like [`request_hash`] (with a different first byte
/// each), of the trace id of `traceparent` and of `X-Request-Id`, trimmed and lowercased as the origin tracker
/// compares them, in [`PROPAGATED_ID_BITS`] bits; 0 when absent. Nodes sharing the key secret agree, so ClickHouse
/// can join hops across nodes.
pub fn propagated_id_hashes(
    secret: &crate::registry::KeySecret,
    headers: &crate::http::Headers,
) -> (u64, u64) {
    propagated_id_hashes_of(
        secret,
        headers.get("traceparent"),
        headers.get("x-request-id"),
    )
}

/// [`propagated_id_hashes`] of the values of `traceparent` and `X-Request-Id`.
pub fn propagated_id_hashes_of(
    secret: &crate::registry::KeySecret,
    traceparent: Option<&str>,
    request_id: Option<&str>,
) -> (u64, u64) {
    use std::hash::Hasher;
    let hash = |kind: u8, value: &str| {
        let value = value.trim();
        if value.is_empty() {
            return 0;
        }
        let mut h = secret.request_hasher();
        h.write_u8(kind);
        // Lowercased a chunk at a time into a stack buffer: SipHash takes a slice far faster than byte by byte
        // (the same bytes in the same order, so the same hash).
        let mut buf = [0u8; 64];
        for chunk in value.as_bytes().chunks(buf.len()) {
            let lower = &mut buf[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            h.write(lower);
        }
        (h.finish() & PROPAGATED_ID_MASK).max(1)
    };
    let trace = traceparent
        .and_then(crate::http::traceparent_trace_id)
        .map_or(0, |t| hash(b't', t));
    let request = request_id.map_or(0, |r| hash(b'r', r));
    (trace, request)
}

fn fill_app(ev: &mut Event, app: Option<&AppText>) {
    (ev.app_id, ev.app_name, ev.app_team, ev.line_of_business) = match app {
        Some(a) => (
            a.id.share(),
            a.name.share(),
            a.team.share(),
            a.line_of_business.share(),
        ),
        None => Default::default(),
    };
}

/// First value of header `name` (case-insensitive).
fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.get(name).map(str::trim)
}

/// The credential the API's auth config says to look at, as bytes borrowed from the request or decoded into
/// `scratch`. Traffic that matched no API uses the default (`X-Api-Key` / `Api-Key` headers).
pub fn extract_key<'a>(
    auth: &Auth,
    headers: &'a Headers,
    raw_query: &'a str,
    scratch: &'a mut [u8; SCRATCH],
) -> Option<&'a [u8]> {
    match auth.kind {
        AuthKind::Anonymous => None,
        AuthKind::ApiKey => {
            let from_header = if auth.headers.is_empty() {
                DEFAULT_KEY_HEADERS.iter().find_map(|h| header(headers, h))
            } else {
                auth.headers.iter().find_map(|h| header(headers, h))
            };
            if let Some(v) = from_header.filter(|v| !v.is_empty()) {
                return Some(v.as_bytes());
            }
            auth.query
                .iter()
                .find_map(|name| query_param(raw_query, name).filter(|v| !v.is_empty()))
                .and_then(|v| percent_decode(v, scratch))
        }
        AuthKind::Bearer => {
            let v = header(headers, "authorization")?;
            let token = strip_scheme(v, "bearer")?;
            (!token.is_empty()).then_some(token.as_bytes())
        }
        AuthKind::Basic => {
            let v = header(headers, "authorization")?;
            let encoded = strip_scheme(v, "basic")?;
            let decoded = base64_decode(encoded.as_bytes(), scratch)?;
            let user_len = decoded
                .iter()
                .position(|&b| b == b':')
                .unwrap_or(decoded.len());
            (user_len > 0).then(|| &decoded[..user_len])
        }
    }
}

/// `Scheme rest` -> `rest` when the scheme matches case-insensitively.
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Raw (still percent-encoded) value of query parameter `name`.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Percent-decodes (and `+` -> space, as forms encode it) into `scratch` when needed; borrows `v` otherwise.
/// `None` when the decoded value does not fit.
fn percent_decode<'a>(v: &'a str, scratch: &'a mut [u8; SCRATCH]) -> Option<&'a [u8]> {
    if !v.contains(['%', '+']) {
        return Some(v.as_bytes());
    }
    let mut n = 0;
    for b in crate::http::form_decoded(v) {
        *scratch.get_mut(n)? = b;
        n += 1;
    }
    Some(&scratch[..n])
}

/// Base64 as `Authorization: Basic` carries it: the standard alphabet or the URL-safe one, padding optional.
const BASE64: [base64::engine::GeneralPurpose; 2] = {
    use base64::engine::{
        general_purpose::GeneralPurposeConfig, DecodePaddingMode, GeneralPurpose,
    };
    let cfg = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    [
        GeneralPurpose::new(&base64::alphabet::STANDARD, cfg),
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, cfg),
    ]
};

/// Base64 (see [`BASE64`]) into `scratch`; None when invalid or too long.
fn base64_decode<'a>(input: &[u8], scratch: &'a mut [u8; SCRATCH]) -> Option<&'a [u8]> {
    use base64::Engine;
    let n = BASE64
        .iter()
        .find_map(|e| e.decode_slice(input, &mut scratch[..]).ok())?;
    Some(&scratch[..n])
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::registry::{load_file, load_str, parse_date, KeySecret, OVERFLOW_ROUTE};

    const MOBILE_KEY: &str = "sk_live_mobile_checkout_7Hq2x93f9a";
    const LEGACY_KEY: &str = "sk_live_legacy_checkout_Zp81k2b7c1";
    const PARTNER_KEY: &str = "sk_test_partner_portal_Qm4t0a5e02";

    fn examples() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    fn example_secret() -> KeySecret {
        KeySecret::example()
    }

    fn example() -> Snapshot {
        let secret = example_secret();
        let loaded = load_file(&examples().join("registry.yaml"), &secret)
            .unwrap_or_else(|e| panic!("example registry must load: {e}"));
        Snapshot::build(loaded.registry, secret, 0, None, None)
    }

    fn ts(s: &str) -> Timestamp {
        parse_date(s).unwrap_or_else(|| panic!("bad test date {s:?}"))
    }

    fn exchange(method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Exchange {
        Exchange {
            event: Event {
                ts: ts("2026-03-10"),
                method: method.into(),
                host: host.into(),
                path: path.into(),
                dst_port: 443,
                ..Event::default()
            },
            request: RequestExtras {
                headers: headers.iter().copied().collect(),
                ..RequestExtras::default()
            },
        }
    }

    fn run(snap: &Snapshot, mut ex: Exchange) -> Event {
        enrich(snap, &mut ex);
        ex.event
    }

    #[test]
    fn propagated_ids_found_by_flow_hash_as_looked_up_ones() {
        let snap = example();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let fields = [
            ("Accept", "*/*"),
            ("Traceparent", tp),
            ("X-Request-Id", "req-7"),
        ];
        let looked_up = {
            let mut ex = exchange("GET", "h", "/", &fields);
            enrich(&snap, &mut ex);
            (ex.event.trace_id_hash, ex.event.request_id_hash)
        };
        assert!(looked_up.0 != 0 && looked_up.1 != 0);
        let mut ex = exchange("GET", "h", "/", &fields);
        ex.request.propagated = Some(crate::event::PropagatedAt {
            request_id: ex.request.headers.find("x-request-id"),
            traceparent: ex.request.headers.find("traceparent"),
        });
        enrich(&snap, &mut ex);
        assert_eq!(
            (ex.event.trace_id_hash, ex.event.request_id_hash),
            looked_up
        );
        // Found absent: no hash, whatever the headers hold.
        let mut ex = exchange("GET", "h", "/", &fields);
        ex.request.propagated = Some(crate::event::PropagatedAt::default());
        enrich(&snap, &mut ex);
        assert_eq!((ex.event.trace_id_hash, ex.event.request_id_hash), (0, 0));
    }

    #[test]
    fn propagated_id_hashes_agree_on_an_id_however_written_and_keep_56_bits() {
        let secret = example_secret();
        let headers = |pairs: &[(&str, &str)]| pairs.iter().copied().collect::<Headers>();
        let tp = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        let (t, r) = propagated_id_hashes(
            &secret,
            &headers(&[("traceparent", tp), ("x-request-id", " Req-1 ")]),
        );
        let (t2, r2) = propagated_id_hashes(
            &secret,
            &headers(&[
                ("traceparent", &tp.to_ascii_lowercase()),
                ("x-request-id", "req-1"),
            ]),
        );
        assert_eq!(
            (t, r),
            (t2, r2),
            "case and surrounding blanks do not matter"
        );
        assert!(t != 0 && r != 0 && t != r);
        assert!(t <= PROPAGATED_ID_MASK && r <= PROPAGATED_ID_MASK);
        // Ids past the 64-byte chunk hash whole: only a difference at the end tells them apart.
        let long = |last: char| format!("{}{last}", "a".repeat(130));
        let h = |id: &str| propagated_id_hashes(&secret, &headers(&[("x-request-id", id)])).1;
        assert_ne!(h(&long('b')), h(&long('c')));
        assert_eq!(propagated_id_hashes(&secret, &headers(&[])), (0, 0));
        let other = KeySecret::from_bytes(b"another deployment's secret");
        assert_ne!(
            propagated_id_hashes(&other, &headers(&[("x-request-id", "req-1")])).1,
            r,
            "keyed by the deployment's secret"
        );
    }

    #[test]
    fn key_attributes_application_and_route() {
        let snap = example();
        let ev = run(
            &snap,
            exchange(
                "POST",
                "api.example.com",
                "/v1/payments/42/refunds",
                &[("x-api-key", MOBILE_KEY)],
            ),
        );
        assert_eq!(ev.api_id, "payments-api");
        assert_eq!(ev.api_name, "Payments API");
        assert_eq!(ev.api_owner, "payments");
        assert_eq!(ev.route, "/v1/payments/{id}/refunds");
        assert_eq!(ev.app_id, "mobile-checkout");
        assert_eq!(ev.app_name, "Mobile Checkout");
        assert_eq!(ev.app_team, "payments-ux");
        assert_eq!(ev.line_of_business, "Retail");
        assert_eq!(
            ev.key_fingerprint,
            example_secret().fingerprint_hex(MOBILE_KEY.as_bytes())
        );
        assert_eq!(ev.key_suffix, "3f9a");
        assert_eq!(ev.key_state, KeyState::Valid);
        assert_eq!(ev.attributed_by, AttributedBy::Key);
        assert!(
            !format!("{ev:?}").contains(MOBILE_KEY),
            "raw key must not end up in the event"
        );
    }

    #[test]
    fn strings_an_event_takes_again_are_pinned() {
        let snap = example();
        let ex = || {
            exchange(
                "POST",
                "api.example.com",
                "/v1/payments/42/refunds",
                &[("x-api-key", MOBILE_KEY)],
            )
        };
        // Pinning is process-wide: another test may have pinned these values already, so only the second event is
        // checked.
        run(&snap, ex());
        let ev = run(&snap, ex());
        let fields = [
            &ev.api_id,
            &ev.api_name,
            &ev.api_owner,
            &ev.route,
            &ev.app_id,
            &ev.app_name,
            &ev.app_team,
            &ev.line_of_business,
            &ev.key_fingerprint,
            &ev.key_suffix,
        ];
        for f in fields {
            assert!(!f.is_empty() && f.is_pinned(), "{f} not pinned");
        }
        let unknown = || exchange("GET", "unknown.example", "/v9/widgets/7", &[]);
        assert!(
            !run(&snap, unknown()).route.is_pinned(),
            "inferred, seen once"
        );
        let again = run(&snap, unknown());
        assert_eq!(again.route, "/v9/widgets/{id}");
        assert!(again.route.is_pinned(), "inferred, seen twice");
    }

    #[test]
    fn key_states_follow_grant_history() {
        let snap = example();
        let bearer = format!("Bearer {MOBILE_KEY}");
        let at = |date: &str| {
            let mut ex = exchange(
                "GET",
                "api.example.com",
                "/v1/orders/A-1",
                &[("Authorization", &bearer)],
            );
            ex.event.ts = ts(date);
            run(&snap, ex)
        };
        assert_eq!(
            at("2026-03-01").key_state,
            KeyState::NotYetValid,
            "before the first grant"
        );
        assert_eq!(at("2026-03-02").key_state, KeyState::Valid, "at granted_at");
        let revoked = Timestamp(ts("2026-05-01T12:00:00Z").0 - 1);
        let mut ex = exchange(
            "GET",
            "api.example.com",
            "/v1/orders/A-1",
            &[("Authorization", &bearer)],
        );
        ex.event.ts = revoked;
        assert_eq!(
            run(&snap, ex).key_state,
            KeyState::Valid,
            "1µs before revoked_at"
        );
        let ev = at("2026-05-01T12:00:00Z");
        assert_eq!(ev.key_state, KeyState::Revoked, "at revoked_at");
        assert_eq!(
            ev.app_id, "mobile-checkout",
            "a revoked key still identifies its application"
        );
        assert_eq!(ev.attributed_by, AttributedBy::Key);
        assert_eq!(ev.api_id, "orders-api");
        assert_eq!(ev.route, "/v1/orders/{order_id}");
        assert_eq!(at("2026-06-01").key_state, KeyState::Valid, "re-granted");
        assert_eq!(
            at("2027-06-01").key_state,
            KeyState::Expired,
            "at expires_at of the re-grant"
        );
    }

    #[test]
    fn key_wide_revocation_and_expiry() {
        let snap = example();
        let mut ex = exchange(
            "GET",
            "payments.internal:8443",
            "/v1/payments",
            &[("X-Api-Key", LEGACY_KEY)],
        );
        ex.event.ts = ts("2026-04-01");
        let ev = run(&snap, ex);
        assert_eq!(
            (ev.key_state, ev.app_id.as_str()),
            (KeyState::Revoked, "legacy-checkout")
        );
        assert_eq!(ev.key_suffix, "b7c1");

        let partner = |date: &str, api_host: &str, path: &str| {
            let mut ex = exchange("GET", api_host, path, &[]);
            ex.request.raw_query = format!("limit=5&api_key={PARTNER_KEY}");
            ex.event.ts = ts(date);
            run(&snap, ex)
        };
        assert_eq!(
            partner("2026-01-14", "api.example.com", "/v1/payments").key_state,
            KeyState::NotYetValid
        );
        let ev = partner("2026-01-15", "api.example.com", "/v1/payments");
        assert_eq!(
            ev.key_state,
            KeyState::Valid,
            "key from the query parameter"
        );
        assert_eq!(
            ev.line_of_business, "Partnerships",
            "application's own line of business"
        );
        assert_eq!(
            partner("2026-07-15", "api.example.com", "/v1/payments").key_state,
            KeyState::Expired
        );
    }

    #[test]
    fn not_granted_unknown_and_none() {
        let snap = example();
        let ev = run(
            &snap,
            exchange(
                "GET",
                "api.example.com",
                "/v1/payments",
                &[("X-Api-Key", "warehouse-sync")],
            ),
        );
        assert_eq!(
            ev.key_state,
            KeyState::NotGrantedForApi,
            "known key, other API"
        );
        assert_eq!(ev.app_id, "warehouse-sync");

        let mut ex = exchange(
            "GET",
            "api.example.com",
            "/v1/payments",
            &[("X-Api-Key", "sk_live_nobody_knows_this_1234")],
        );
        ex.event.client_comm = "checkout-app".into();
        ex.event.client_cgroup = "/kubepods.slice/pod-1/checkout-7f9".into();
        let ev = run(&snap, ex);
        assert_eq!(ev.key_state, KeyState::Unknown);
        assert_eq!(ev.key_suffix, "1234");
        assert_eq!(ev.key_fingerprint.len(), 64);
        assert_eq!(
            (ev.app_id.as_str(), ev.attributed_by),
            ("mobile-checkout", AttributedBy::Workload),
            "unknown key falls back to workload"
        );

        let mut ex = exchange("GET", "api.example.com", "/v1/payments", &[]);
        ex.event.client_comm = "curl".into();
        ex.event.client_cgroup = "/user.slice/user-1000.slice".into();
        let ev = run(&snap, ex);
        assert_eq!(
            (ev.key_state, ev.attributed_by),
            (KeyState::None, AttributedBy::None),
            "shadow consumer"
        );
        assert!(ev.app_id.is_empty() && ev.key_fingerprint.is_empty() && ev.key_suffix.is_empty());
        assert_eq!(ev.api_id, "payments-api", "API still recognised");
    }

    #[test]
    fn auth_style_decides_where_the_key_is() {
        let snap = example();
        // orders-api is bearer: an X-Api-Key header is not its credential.
        let ev = run(
            &snap,
            exchange(
                "GET",
                "api.example.com",
                "/v1/orders/1",
                &[("X-Api-Key", MOBILE_KEY)],
            ),
        );
        assert_eq!(ev.key_state, KeyState::None);
        // Basic: the username is the key.
        let mut ex = exchange(
            "GET",
            "inventory.internal",
            "/stock/SKU-1",
            &[("Authorization", "Basic d2FyZWhvdXNlLXN5bmM6cHc=")],
        );
        ex.event.server_comm = "inventory-svc".into();
        ex.event.dst_port = 9090;
        let ev = run(&snap, ex.clone());
        assert_eq!(
            ev.api_id, "inventory-api",
            "matched by server process and port"
        );
        assert_eq!(
            (ev.key_state, ev.app_id.as_str()),
            (KeyState::Valid, "warehouse-sync")
        );
        assert_eq!(ev.route, "/stock/{sku}");
        ex.request.headers = [("authorization", "basic d2FyZWhvdXNlLXN5bmM")]
            .into_iter()
            .collect();
        assert_eq!(
            run(&snap, ex.clone()).key_state,
            KeyState::Valid,
            "unpadded base64, no password, lower-case scheme"
        );
        ex.request.headers = [("authorization", "Basic !!!")].into_iter().collect();
        assert_eq!(
            run(&snap, ex.clone()).key_state,
            KeyState::None,
            "undecodable basic credential"
        );
        ex.event.dst_port = 9091;
        assert_eq!(run(&snap, ex).api_id, "", "wrong port: no API");
        // Anonymous APIs never look for a key.
        let ev = run(
            &snap,
            exchange(
                "GET",
                "status.example.com",
                "/",
                &[("X-Api-Key", MOBILE_KEY)],
            ),
        );
        assert_eq!(
            (ev.api_id.as_str(), ev.key_state),
            ("status-api", KeyState::None)
        );
    }

    #[test]
    fn the_first_auth_location_holding_a_key_wins() {
        let text = format!(
            "teams: [{{id: t}}]\napis:\n  - id: s\n    owner: t\n    match: {{hosts: s.com}}\n    auth: [basic, bearer]\napplications: [{{id: app, team: t}}]\nkeys:\n  - id: k\n    application: app\n    fingerprint: {}\n    grants: [{{api: s, granted_by: me, granted_at: 2026-01-01}}]\n",
            example_secret().fingerprint_hex(b"bearer-key-0123456789")
        );
        let reg = load_str(&text, Path::new("."), &example_secret()).expect("valid registry");
        let snap = Snapshot::build(reg.registry, example_secret(), 0, None, None);
        let bearer = run(
            &snap,
            exchange(
                "GET",
                "s.com",
                "/",
                &[("Authorization", "Bearer bearer-key-0123456789")],
            ),
        );
        assert_eq!(
            (bearer.key_state, bearer.app_id.as_str()),
            (KeyState::Valid, "app"),
            "second location"
        );
        let basic = run(
            &snap,
            exchange(
                "GET",
                "s.com",
                "/",
                &[("Authorization", "Basic dW5rbm93bjpwdw==")],
            ),
        );
        assert_eq!(
            basic.key_state,
            KeyState::Unknown,
            "first location: user `unknown` is not a registered key"
        );
        let none = run(
            &snap,
            exchange(
                "GET",
                "s.com",
                "/",
                &[("X-Api-Key", "bearer-key-0123456789")],
            ),
        );
        assert_eq!(
            none.key_state,
            KeyState::None,
            "a header neither location names"
        );
    }

    #[test]
    fn extraction_details() {
        let auth = |kind, headers: &[&str], query: &[&str]| Auth {
            kind,
            headers: headers.iter().map(|s| s.to_string()).collect(),
            query: query.iter().map(|s| s.to_string()).collect(),
        };
        let hs = |v: &[(&str, &str)]| v.iter().copied().collect::<Headers>();
        let mut scratch = [0u8; SCRATCH];
        let h = hs(&[("API-KEY", " k1 ")]);
        assert_eq!(
            extract_key(&Auth::default(), &h, "", &mut scratch),
            Some(&b"k1"[..]),
            "default Api-Key header, trimmed"
        );
        let h = hs(&[("X-Custom", "k2"), ("X-Api-Key", "other")]);
        assert_eq!(
            extract_key(
                &auth(AuthKind::ApiKey, &["x-custom"], &[]),
                &h,
                "",
                &mut scratch
            ),
            Some(&b"k2"[..])
        );
        let h = hs(&[]);
        let a = auth(AuthKind::ApiKey, &["X-Api-Key"], &["key", "api_key"]);
        assert_eq!(
            extract_key(&a, &h, "a=1&api_key=ab%2Bc%3D+d&key=", &mut scratch),
            Some(&b"ab+c= d"[..]),
            "percent-decoded; empty values skipped"
        );
        assert_eq!(
            extract_key(&a, &h, "api_keyx=1&xapi_key=2", &mut scratch),
            None,
            "exact parameter names only"
        );
        let h = hs(&[("Authorization", "Bearer   tok.en  ")]);
        assert_eq!(
            extract_key(&auth(AuthKind::Bearer, &[], &[]), &h, "", &mut scratch),
            Some(&b"tok.en"[..])
        );
        let h = hs(&[("Authorization", "Basic dG9rLmVu")]);
        assert_eq!(
            extract_key(&auth(AuthKind::Bearer, &[], &[]), &h, "", &mut scratch),
            None,
            "bearer API ignores basic"
        );
        let h = hs(&[("Authorization", "Bearer ")]);
        assert_eq!(
            extract_key(&auth(AuthKind::Bearer, &[], &[]), &h, "", &mut scratch),
            None,
            "empty token"
        );
        let h = hs(&[("Authorization", "Basic OnB3")]);
        assert_eq!(
            extract_key(&auth(AuthKind::Basic, &[], &[]), &h, "", &mut scratch),
            None,
            "empty username (\":pw\")"
        );
        let long = "A".repeat(SCRATCH * 2);
        let h = hs(&[("Authorization", &format!("Basic {long}"))]);
        assert_eq!(
            extract_key(&auth(AuthKind::Basic, &[], &[]), &h, "", &mut scratch),
            None,
            "oversized credential refused"
        );
    }

    #[test]
    fn host_from_header_and_port_stripping() {
        let snap = example();
        let ev = run(
            &snap,
            exchange(
                "GET",
                "",
                "/v1/payments/7",
                &[("Host", "API.example.com:443"), ("X-Api-Key", MOBILE_KEY)],
            ),
        );
        assert_eq!(
            ev.api_id, "payments-api",
            "Host header used when event.host is empty"
        );
        assert_eq!(ev.route, "/v1/payments/{id}");
        let ev = run(
            &snap,
            exchange("GET", "api.example.com", "/v1/paymentsX/7", &[]),
        );
        assert_eq!(ev.api_id, "", "base path matches on segment boundaries");
        assert_eq!(strip_port_for_test("[::1]:8080"), "::1");
    }

    fn strip_port_for_test(h: &str) -> &str {
        crate::registry::strip_port(h)
    }

    #[test]
    fn unmatched_traffic_gets_inferred_routes_and_default_key() {
        let snap = example();
        let ev = run(
            &snap,
            exchange(
                "GET",
                "unknown.example.net",
                "/v2/users/12345/orders/3f2504e0-4f89-11d3-9a0c-0305e82c3301",
                &[("Api-Key", MOBILE_KEY)],
            ),
        );
        assert_eq!(ev.api_id, "");
        assert_eq!(ev.route, "/v2/users/{id}/orders/{id}");
        assert_eq!(ev.key_state, KeyState::Valid, "no API: the key-wide state");
        assert_eq!(ev.app_id, "mobile-checkout");
        let ev = run(
            &snap,
            exchange("DELETE", "api.example.com", "/v1/payments/42", &[]),
        );
        assert_eq!(
            ev.route, "/v1/payments/{id}",
            "registered API, unregistered method: inferred"
        );
        let ev = run(
            &snap,
            exchange("GET", "api.example.com", "/v1/payments/search", &[]),
        );
        assert_eq!(
            ev.route, "/v1/payments/search",
            "literal route (from OpenAPI) wins over {{id}}"
        );
    }

    #[test]
    fn request_hash_tells_the_same_request_apart_from_another_without_keeping_values() {
        let snap = example();
        let with_query = |q: &str| {
            let mut ex = exchange("GET", "api.example.com", "/v1/payments/42", &[]);
            ex.request.raw_query = q.into();
            run(&snap, ex).request_hash
        };
        let a = with_query("page=2&size=50");
        assert_ne!(a, 0);
        assert_eq!(a, with_query("page=2&size=50"), "the same request again");
        assert_ne!(a, with_query("page=3&size=50"), "query values count");
        assert_ne!(a, with_query(""));
        let secret = snap.secret();
        let h = |m: &str, host: &str, p: &str, q: &str, b: &[u8]| {
            request_hash(secret, m, host, p, q, b)
        };
        assert_eq!(
            a,
            h(
                "GET",
                "api.example.com",
                "/v1/payments/42",
                "page=2&size=50",
                b""
            )
        );
        assert_ne!(
            h("POST", "a", "/p", "", b"{\"n\":1}"),
            h("POST", "a", "/p", "", b"{\"n\":2}")
        );
        assert_ne!(
            h("GET", "a", "/pq", "", b""),
            h("GET", "a", "/p", "q", b""),
            "fields do not run together"
        );
        assert_ne!(h("POST", "a", "/p", "", b""), h("PUT", "a", "/p", "", b""));
        let other = KeySecret::from_bytes(b"another-deployment-secret");
        assert_ne!(
            a,
            request_hash(
                &other,
                "GET",
                "api.example.com",
                "/v1/payments/42",
                "page=2&size=50",
                b""
            ),
            "keyed: another deployment's hash differs"
        );
        // The Host header stands in for an empty host, as for API matching.
        let mut ex = exchange("GET", "", "/v1/payments/42", &[("Host", "api.example.com")]);
        ex.request.raw_query = "page=2&size=50".into();
        assert_eq!(run(&snap, ex).request_hash, a);
        // The captured body prefix counts: the same request with another body is another request.
        let with_body = |body: &[u8]| {
            let mut ex = exchange("POST", "api.example.com", "/v1/payments", &[]);
            ex.request.body_prefix = body.into();
            run(&snap, ex).request_hash
        };
        assert_eq!(with_body(b"{\"amount\":10}"), with_body(b"{\"amount\":10}"));
        assert_ne!(with_body(b"{\"amount\":10}"), with_body(b"{\"amount\":11}"));
        assert_ne!(with_body(b"{\"amount\":10}"), with_body(b""));
    }

    #[test]
    fn inferred_routes_are_capped_per_api() {
        let text = "teams: [{id: t}]\napis:\n  - id: a\n    owner: t\n    match: {hosts: a.com}\n    max_inferred_routes: 2\n  - id: b\n    owner: t\n    match: {hosts: b.com}\n";
        let secret = KeySecret::from_bytes(b"cap-test-secret-0123");
        let loaded =
            load_str(text, Path::new("."), &secret).unwrap_or_else(|p| panic!("valid: {p:?}"));
        let snap = Snapshot::build(loaded.registry, secret.clone(), 0, None, None);
        let route = |host: &str, path: &str| run(&snap, exchange("GET", host, path, &[])).route;
        assert_eq!(route("a.com", "/x/1"), "/x/{id}");
        assert_eq!(route("a.com", "/y/2"), "/y/{id}");
        assert_eq!(
            route("a.com", "/z/3"),
            OVERFLOW_ROUTE,
            "third distinct route over the cap"
        );
        assert_eq!(
            route("a.com", "/x/99"),
            "/x/{id}",
            "known routes still reported"
        );
        assert_eq!(route("b.com", "/z/3"), "/z/{id}", "caps are per API");
        assert_eq!(snap.inferred_count(Some(0)), 2);
        // A reload keeps what was seen for APIs with the same id.
        let again = load_str(text, Path::new("."), &secret).expect("valid");
        let next = Snapshot::build(again.registry, secret, 1, None, Some(&snap));
        assert_eq!(
            next.inferred_count(Some(0)),
            2,
            "inferred routes carried over"
        );
        assert_eq!(
            run(&next, exchange("GET", "a.com", "/q/1", &[])).route,
            OVERFLOW_ROUTE
        );
    }

    #[test]
    fn most_specific_api_wins() {
        let text = "teams: [{id: t}]\napis:
  - {id: wild, owner: t, match: {hosts: \"*.x.com\"}}
  - {id: exact, owner: t, match: {hosts: api.x.com}}
  - {id: v1, owner: t, match: {hosts: api.x.com, base_path: /v1}}
  - {id: v1pay, owner: t, match: {hosts: api.x.com, base_path: /v1/pay}}
  - {id: port, owner: t, match: {ports: 8443}}
  - {id: svc, owner: t, match: {server_cgroup: \"/system.slice/*.service\"}}
";
        let secret = KeySecret::from_bytes(b"specific-test-secret");
        let loaded =
            load_str(text, Path::new("."), &secret).unwrap_or_else(|p| panic!("valid: {p:?}"));
        let snap = Snapshot::build(loaded.registry, secret, 0, None, None);
        let api = |host: &str, port: u16, path: &str, cgroup: &str| {
            let mut ex = exchange("GET", host, path, &[]);
            ex.event.dst_port = port;
            ex.event.server_cgroup = cgroup.into();
            run(&snap, ex).api_id
        };
        assert_eq!(api("a.x.com", 443, "/", ""), "wild");
        assert_eq!(
            api("api.x.com", 443, "/", ""),
            "exact",
            "literal host beats wildcard"
        );
        assert_eq!(
            api("api.x.com", 443, "/v1/orders", ""),
            "v1",
            "base path beats none"
        );
        assert_eq!(
            api("api.x.com", 443, "/v1/pay/1", ""),
            "v1pay",
            "longer base path wins"
        );
        assert_eq!(api("api.x.com", 8443, "/", ""), "exact", "host beats port");
        assert_eq!(api("other", 8443, "/", ""), "port");
        assert_eq!(api("other", 80, "/", "/system.slice/pay.service"), "svc");
        assert_eq!(
            api("other", 80, "/", "/system.slice/a/pay.service"),
            "",
            "* stays in one cgroup segment"
        );
    }

    #[test]
    fn fields_are_overwritten_on_reuse() {
        let snap = example();
        let mut ex = exchange(
            "POST",
            "api.example.com",
            "/v1/payments/42/refunds",
            &[("X-Api-Key", MOBILE_KEY)],
        );
        enrich(&snap, &mut ex);
        assert_eq!(ex.event.app_id, "mobile-checkout");
        ex.event.host = "elsewhere.net".into();
        ex.request.headers.clear();
        enrich(&snap, &mut ex);
        let ev = &ex.event;
        assert!(
            ev.api_id.is_empty()
                && ev.api_name.is_empty()
                && ev.api_owner.is_empty()
                && ev.app_id.is_empty()
                && ev.app_name.is_empty()
                && ev.app_team.is_empty()
                && ev.line_of_business.is_empty()
                && ev.key_fingerprint.is_empty()
                && ev.key_suffix.is_empty(),
            "stale enrichment left behind: {ev:?}"
        );
        assert_eq!(
            (ev.key_state, ev.attributed_by),
            (KeyState::None, AttributedBy::None)
        );
    }

    #[test]
    fn unset_timestamp_uses_now_and_empty_registry_works() {
        let snap = Snapshot::empty(KeySecret::from_bytes(b"empty-registry-secret"));
        let mut ex = exchange("GET", "h", "", &[("X-Api-Key", "some-key-material-1234")]);
        ex.event.ts = Timestamp(0);
        enrich(&snap, &mut ex);
        assert_eq!(ex.event.route, "/", "empty path is the root");
        assert_eq!(ex.event.key_state, KeyState::Unknown);
        assert_eq!(ex.event.attributed_by, AttributedBy::None);
    }

    #[test]
    fn enricher_uses_the_live_snapshot() {
        let live = LiveRegistry::open(None, KeySecret::from_bytes(b"live-enricher-secret"))
            .expect("empty registry opens");
        let enricher = Enricher::new(live.clone());
        let mut ex = exchange("GET", "h", "/a/1", &[]);
        enricher.enrich(&mut ex.event, &ex.request);
        assert_eq!(ex.event.route, "/a/{id}");
        assert_eq!(enricher.live().generation(), 0);
    }

    #[test]
    fn on_kubernetes_remote_ends_are_named_by_ip_and_apis_matched_by_service() {
        use crate::kube::store::{PodRecord, SliceRecord, Store};
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        let secret = example_secret();
        let text = "teams: [{id: t}]\napis:\n  - id: cart-api\n    owner: t\n    match: {service: shop/cart}\napplications:\n  - id: checkout\n    team: t\n    workload: {namespace: shop, labels: {app: checkout}}\n";
        let loaded = load_str(text, Path::new("."), &secret).unwrap_or_else(|p| panic!("{p:?}"));
        let snap = Snapshot::build(loaded.registry, secret, 0, None, None);
        let mut store = Store::new(1000, true);
        let remote = store.remote_pods.as_mut().expect("remote pods");
        for (uid, name, addr) in [
            ("c", "checkout-0", "10.244.1.5"),
            ("k", "cart-0", "10.244.2.7"),
        ] {
            let app = name.trim_end_matches("-0");
            remote.apply(
                uid.into(),
                PodRecord {
                    uid: uid.into(),
                    name: name.into(),
                    namespace: "shop".into(),
                    labels: [("app".to_string(), app.to_string())].into(),
                    ips: vec![ip(addr)],
                    ..PodRecord::default()
                },
            );
        }
        store.endpointslices.apply(
            ("shop".into(), "cart-x1".into()),
            SliceRecord {
                service: ("shop".into(), "cart".into()),
                addresses: vec![ip("10.244.2.7")],
                ports: vec![8080],
            },
        );
        let index = store.index(&["app".to_string()]);
        let at = |dst: &str, port: u16| {
            let mut ex = exchange("GET", "cart.shop.svc", "/items", &[]);
            ex.event.src_ip = ip("10.244.1.5");
            ex.event.dst_ip = ip(dst);
            ex.event.dst_port = port;
            enrich_on_kubernetes(&snap, &index, &mut ex.event, &ex.request);
            ex.event
        };
        let ev = at("10.244.2.7", 8080);
        assert_eq!(
            (
                ev.client_pod.as_str(),
                ev.client_namespace.as_str(),
                ev.client_labels.clone()
            ),
            ("checkout-0", "shop", vec!["app=checkout".to_string()])
        );
        assert_eq!(
            (ev.server_pod.as_str(), ev.server_namespace.as_str()),
            ("cart-0", "shop")
        );
        assert_eq!(ev.api_id, "cart-api", "the server backs shop/cart");
        assert_eq!(
            ev.app_id, "checkout",
            "the remote client's pod selects the application"
        );
        assert_eq!(ev.attributed_by, AttributedBy::Workload);
        let ev = at("10.244.2.7", 9090);
        assert_eq!(ev.api_id, "", "not a port of the Service");
        assert_eq!(ev.server_pod, "cart-0");
        let ev = at("10.244.9.9", 8080);
        assert_eq!((ev.api_id.as_str(), ev.server_pod.as_str()), ("", ""));
    }
}
