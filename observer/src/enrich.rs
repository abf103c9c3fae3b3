//! Per-event enrichment: joins each exchange with the registry (API, route, application, key state and how the
//! application was identified). Pure and allocation-light: fields are overwritten in place, the raw key is only
//! borrowed (or decoded into a stack buffer) and never stored.
use std::sync::Arc;

use crate::event::{AttributedBy, Event, Exchange, KeyState, Timestamp};
use crate::registry::{
    infer_template, key_suffix, write_hex, Application, Auth, AuthKind, LiveRegistry, Snapshot,
    DEFAULT_KEY_HEADERS,
};

/// Longest credential decoded from `Authorization: Basic` or a percent-encoded query value.
const SCRATCH: usize = 512;

/// Enriches exchanges against the live registry. Cheap to clone; use one per worker.
#[derive(Debug, Clone)]
pub struct Enricher {
    live: Arc<LiveRegistry>,
}

impl Enricher {
    pub fn new(live: Arc<LiveRegistry>) -> Self {
        Enricher { live }
    }

    pub fn live(&self) -> &Arc<LiveRegistry> {
        &self.live
    }

    /// Fills the business-context fields of `ex.event` from the current registry snapshot.
    pub fn enrich(&self, ex: &mut Exchange) {
        enrich(&self.live.load(), ex);
    }
}

fn set(field: &mut String, value: &str) {
    field.clear();
    field.push_str(value);
}

/// Fills `api_*`, `route`, `app_*`, `line_of_business`, `key_*` and `attributed_by` of `ex.event` from `snap`.
/// Key states are judged at the event's time (`ts`; now when unset).
pub fn enrich(snap: &Snapshot, ex: &mut Exchange) {
    let Exchange {
        event: ev,
        request_headers,
        raw_query,
    } = ex;
    let now = if ev.ts.0 > 0 { ev.ts } else { Timestamp::now() };

    // --- API and route ---
    let host = if ev.host.is_empty() {
        header(request_headers, "host").unwrap_or("")
    } else {
        ev.host.as_str()
    };
    let path = if ev.path.is_empty() { "/" } else { ev.path.as_str() };
    let api_idx = snap.match_api(host, ev.dst_port, path, &ev.server_comm, &ev.server_cgroup);
    let api = api_idx.map(|i| snap.api(i));
    match api {
        Some(a) => {
            set(&mut ev.api_id, &a.id);
            set(&mut ev.api_name, &a.name);
            set(&mut ev.api_owner, &a.owner);
        }
        None => {
            ev.api_id.clear();
            ev.api_name.clear();
            ev.api_owner.clear();
        }
    }
    match api_idx.and_then(|i| snap.match_route(i, &ev.method, path)) {
        Some(route) => set(&mut ev.route, route),
        None => {
            infer_template(path, &mut ev.route);
            snap.admit_inferred(api_idx, &mut ev.route);
        }
    }

    // --- key ---
    let default_auth;
    let auth = match api {
        Some(a) => &a.auth,
        None => {
            default_auth = Auth::default();
            &default_auth
        }
    };
    let mut scratch = [0u8; SCRATCH];
    let key = extract_key(auth, request_headers, raw_query, &mut scratch);
    let mut app: Option<&Application> = None;
    match key {
        None => {
            ev.key_fingerprint.clear();
            ev.key_suffix.clear();
            ev.key_state = KeyState::None;
        }
        Some(raw) => {
            let fp = snap.secret().fingerprint(raw);
            write_hex(&fp, &mut ev.key_fingerprint);
            set(&mut ev.key_suffix, std::str::from_utf8(raw).map(key_suffix).unwrap_or(""));
            match snap.key_by_fingerprint(&fp) {
                Some(k) => {
                    ev.key_state = k.state(api.map(|a| a.id.as_str()), now);
                    app = snap.application(&k.application);
                }
                None => ev.key_state = KeyState::Unknown,
            }
        }
    }
    scratch.fill(0);

    // --- application ---
    ev.attributed_by = if app.is_some() {
        AttributedBy::Key
    } else {
        app = snap.app_by_workload(&ev.client_comm, &ev.client_cgroup);
        if app.is_some() {
            AttributedBy::Workload
        } else {
            AttributedBy::None
        }
    };
    fill_app(ev, app);
}

fn fill_app(ev: &mut Event, app: Option<&Application>) {
    match app {
        Some(a) => {
            set(&mut ev.app_id, &a.id);
            set(&mut ev.app_name, &a.name);
            set(&mut ev.app_team, &a.team);
            set(&mut ev.line_of_business, &a.line_of_business);
        }
        None => {
            ev.app_id.clear();
            ev.app_name.clear();
            ev.app_team.clear();
            ev.line_of_business.clear();
        }
    }
}

/// First value of header `name` (case-insensitive).
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// The credential the API's auth config says to look at, as bytes borrowed from the request or decoded into
/// `scratch`. Traffic that matched no API uses the default (`X-Api-Key` / `Api-Key` headers).
pub fn extract_key<'a>(
    auth: &Auth,
    headers: &'a [(String, String)],
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
                .find_map(|name| query_param(raw_query, name))
                .filter(|v| !v.is_empty())
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
            let user_len = decoded.iter().position(|&b| b == b':').unwrap_or(decoded.len());
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

/// Percent-decodes (and `+` -> space) into `scratch` when needed; borrows `v` otherwise.
fn percent_decode<'a>(v: &'a str, scratch: &'a mut [u8; SCRATCH]) -> Option<&'a [u8]> {
    if !v.contains(['%', '+']) {
        return Some(v.as_bytes());
    }
    let b = v.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        if n == SCRATCH {
            return None;
        }
        let out = match b[i] {
            b'%' if i + 2 < b.len() => {
                let hi = (b[i + 1] as char).to_digit(16);
                let lo = (b[i + 2] as char).to_digit(16);
                match (hi, lo) {
                    (Some(h), Some(l)) => {
                        i += 2;
                        (h * 16 + l) as u8
                    }
                    _ => b'%',
                }
            }
            b'+' => b' ',
            c => c,
        };
        scratch[n] = out;
        n += 1;
        i += 1;
    }
    Some(&scratch[..n])
}

/// Standard base64 (padding optional) into `scratch`; None when invalid or too long.
fn base64_decode<'a>(input: &[u8], scratch: &'a mut [u8; SCRATCH]) -> Option<&'a [u8]> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let input = match input.iter().position(|&c| c == b'=') {
        Some(p) if input[p..].iter().all(|&c| c == b'=') => &input[..p],
        Some(_) => return None,
        None => input,
    };
    if input.len() % 4 == 1 || input.len() / 4 * 3 + 3 > SCRATCH {
        return None;
    }
    let mut n = 0;
    for chunk in input.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        let take = chunk.len() - 1;
        scratch[n..n + take].copy_from_slice(&bytes[1..1 + take]);
        n += take;
    }
    Some(&scratch[..n])
}
