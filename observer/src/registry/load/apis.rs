//! The `apis` section: matcher, auth, route templates (written and from an OpenAPI document) and the inferred-route
//! cap.
use std::collections::HashMap;

use super::super::glob::Glob;
use super::super::model::*;
use super::super::route::RouteTemplate;
use super::super::yaml::Node;
use super::fields::label;
use super::Ctx;

/// Criteria of one matcher (`methods` last: it narrows, but alone does not recognise an API).
const MATCH_FIELDS: &[&str] = &[
    "hosts",
    "ports",
    "base_path",
    "path_regex",
    "server_comm",
    "server_cgroup",
    "service",
    "methods",
];

impl Ctx<'_> {
    pub(super) fn api(&mut self, n: &Node, i: usize) -> Option<Api> {
        let what = label("api", "apis", i, n.get("id").and_then(Node::as_str));
        if !self.fields(
            n,
            &what,
            &[
                "id",
                "name",
                "owner",
                "line_of_business",
                "match",
                "auth",
                "routes",
                "openapi",
                "max_inferred_routes",
            ],
        ) {
            return None;
        }
        let id = self.id(n, "api", "apis", i).map(|v| v.0);
        let owner = self.req_str(n, "owner", &what).map(|v| v.0);
        let name = self.opt_str(n, "name", &what).map(|v| v.0);
        let lob = self
            .opt_str(n, "line_of_business", &what)
            .map(|v| v.0)
            .unwrap_or_default();
        let matchers = match n.get("match") {
            Some(m) if !m.is_null() => match m.as_seq() {
                Some([]) => {
                    self.err(m.line, format!("{what}: `match` is an empty list"));
                    Vec::new()
                }
                Some(items) => items.iter().map(|m| self.api_match(m, &what)).collect(),
                None => vec![self.api_match(m, &what)],
            },
            _ => {
                self.err(
                    n.line,
                    format!("{what}: missing required field `match` (one matcher or a list of them: {})", MATCH_FIELDS.join(", ")),
                );
                Vec::new()
            }
        };
        let auth = self.auths(n.get("auth"), &what);
        let mut routes: Vec<RouteTemplate> = Vec::new();
        let mut route_lines: HashMap<(Option<String>, String), usize> = HashMap::new();
        for (text, line) in self.strings(n, "routes", &what) {
            match RouteTemplate::parse(&text) {
                Ok(r) => {
                    let k = (r.method.clone(), r.path.clone());
                    if let Some(first) = route_lines.get(&k) {
                        self.err(
                            line,
                            format!("{what}: duplicate route `{text}` (first at line {first})"),
                        );
                    } else {
                        route_lines.insert(k, line);
                        routes.push(r);
                    }
                }
                Err(e) => self.err(
                    line,
                    format!("{what}: unparsable route template `{text}`: {e}"),
                ),
            }
        }
        let openapi = match self.opt_str(n, "openapi", &what) {
            Some((file, line)) => {
                let path = self.base_dir.join(&file);
                self.dependencies.push(path.clone());
                match self
                    .source
                    .read_file(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|text| super::super::import_openapi::parse_spec(&text))
                {
                    Ok(spec) => {
                        for (text, spec_line) in &spec.routes {
                            match RouteTemplate::parse(text) {
                                Ok(r) => {
                                    let k = (r.method.clone(), r.path.clone());
                                    if let std::collections::hash_map::Entry::Vacant(e) =
                                        route_lines.entry(k)
                                    {
                                        e.insert(line);
                                        routes.push(r);
                                    }
                                }
                                Err(e) => self.err(
                                    line,
                                    format!("{what}: OpenAPI file {file} line {spec_line}: unparsable path `{text}`: {e}"),
                                ),
                            }
                        }
                    }
                    Err(e) => self.err(line, format!("{what}: OpenAPI file {file}: {e}")),
                }
                Some(path)
            }
            None => None,
        };
        let max_inferred_routes = match self.opt_str(n, "max_inferred_routes", &what) {
            Some((s, line)) => match s.parse::<usize>() {
                Ok(v) => v,
                Err(_) => {
                    self.err(
                        line,
                        format!("{what}: `max_inferred_routes` must be a non-negative integer, found `{s}`"),
                    );
                    DEFAULT_MAX_INFERRED_ROUTES
                }
            },
            None => DEFAULT_MAX_INFERRED_ROUTES,
        };
        let id = id?;
        Some(Api {
            name: name.unwrap_or_else(|| id.clone()),
            id,
            owner: owner?,
            line_of_business: lob,
            matchers,
            auth,
            routes,
            openapi,
            max_inferred_routes,
            line: n.line,
        })
    }

    pub(super) fn api_match(&mut self, m: &Node, api: &str) -> ApiMatch {
        let what = format!("{api} match");
        let mut out = ApiMatch {
            line: m.line,
            ..ApiMatch::default()
        };
        if !self.fields(m, &what, MATCH_FIELDS) {
            return out;
        }
        for (h, line) in self.strings(m, "hosts", &what) {
            if !is_host_shape(&h) {
                self.err(
                    line,
                    format!("{what}: `{h}` is not a host name or host glob"),
                );
            } else if h.contains(':') {
                self.err(
                    line,
                    format!("{what}: host `{h}` must not include a port (use `ports`)"),
                );
            } else {
                out.hosts.push(Glob::new(&h, true));
            }
        }
        for (p, line) in self.strings(m, "ports", &what) {
            match p.parse::<u16>() {
                Ok(port) if port > 0 => out.ports.push(port),
                _ => self.err(
                    line,
                    format!("{what}: `{p}` is not a port number (1-65535)"),
                ),
            }
        }
        for (b, line) in self.strings(m, "base_path", &what) {
            if !is_literal_path(&b) {
                self.err(
                    line,
                    format!("{what}: base_path `{b}` must be a literal path starting with `/`"),
                );
            } else {
                let trimmed = b.trim_end_matches('/');
                out.base_paths.push(if trimmed.is_empty() {
                    "/".into()
                } else {
                    trimmed.into()
                });
            }
        }
        for (r, line) in self.strings(m, "path_regex", &what) {
            match PathRegex::new(&r) {
                Ok(re) if r.starts_with('/') || r.starts_with('^') => out.path_regex.push(re),
                Ok(_) => self.err(
                    line,
                    format!("{what}: path_regex `{r}` must start with `/`"),
                ),
                Err(e) => self.err(
                    line,
                    format!("{what}: path_regex `{r}` is not a regular expression: {e}"),
                ),
            }
        }
        for (x, line) in self.strings(m, "methods", &what) {
            if x.is_empty()
                || !x
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                self.err(line, format!("{what}: `{x}` is not a request method"));
            } else {
                out.methods.push(x.to_ascii_uppercase());
            }
        }
        for (c, line) in self.strings(m, "server_comm", &what) {
            if c.is_empty() {
                self.err(line, format!("{what}: empty server_comm pattern"));
            } else {
                out.server_comm.push(Glob::new(&c, false));
            }
        }
        for (c, line) in self.strings(m, "server_cgroup", &what) {
            if c.is_empty() {
                self.err(line, format!("{what}: empty server_cgroup pattern"));
            } else {
                out.server_cgroup.push(Glob::path(&c));
            }
        }
        for (x, line) in self.strings(m, "service", &what) {
            if let Err(why) = service_name(&x) {
                self.err(
                    line,
                    format!("{what}: service `{x}` must be namespace/name (globs allowed): {why}"),
                );
            } else {
                out.services.push(Glob::new(&x, false));
            }
        }
        let given = MATCH_FIELDS
            .iter()
            .filter(|k| **k != "methods")
            .any(|k| m.get(k).is_some_and(|v| !v.is_null()));
        if !given {
            self.err(
                m.line,
                format!(
                    "{what}: no criteria; give at least one of {}",
                    MATCH_FIELDS[..MATCH_FIELDS.len() - 1].join(", ")
                ),
            );
        }
        out
    }

    /// `auth`: one location (a type name or a mapping) or a list of them, tried in order.
    pub(super) fn auths(&mut self, node: Option<&Node>, api: &str) -> Vec<Auth> {
        let Some(node) = node.filter(|n| !n.is_null()) else {
            return vec![Auth::default()];
        };
        let Some(items) = node.as_seq() else {
            return vec![self.auth(node, api)];
        };
        if items.is_empty() {
            self.err(
                node.line,
                format!("{api} auth: empty list; give at least one location (or `anonymous`)"),
            );
            return vec![Auth::default()];
        }
        let out: Vec<Auth> = items.iter().map(|n| self.auth(n, api)).collect();
        if out.len() > 1 && out.iter().any(|a| a.kind == AuthKind::Anonymous) {
            self.err(
                node.line,
                format!("{api} auth: `anonymous` cannot be combined with other locations"),
            );
        }
        for (i, a) in out.iter().enumerate() {
            if out[..i].contains(a) {
                self.err(
                    items[i].line,
                    format!("{api} auth: location `{}` listed twice", a.kind.as_str()),
                );
            }
        }
        out
    }

    pub(super) fn auth(&mut self, node: &Node, api: &str) -> Auth {
        let what = format!("{api} auth");
        let parse_kind = |cx: &mut Self, s: &str, line: usize| match AuthKind::parse(s) {
            Some(k) => k,
            None => {
                cx.err(
                    line,
                    format!("{what}: unknown auth type `{s}` (expected api_key, bearer, basic or anonymous)"),
                );
                AuthKind::ApiKey
            }
        };
        if let Some(s) = node.as_str() {
            let kind = parse_kind(self, s, node.line);
            return Auth {
                kind,
                ..Auth::default()
            };
        }
        if !self.fields(node, &what, &["type", "headers", "header", "query"]) {
            return Auth::default();
        }
        let kind = match self.opt_str(node, "type", &what) {
            Some((s, line)) => parse_kind(self, &s, line),
            None => AuthKind::ApiKey,
        };
        let mut headers = self.strings(node, "headers", &what);
        headers.extend(self.strings(node, "header", &what));
        let query = self.strings(node, "query", &what);
        if kind != AuthKind::ApiKey {
            if let Some((_, line)) = headers.first().or(query.first()) {
                self.err(
                    *line,
                    format!(
                        "{what}: `headers`/`query` only apply to type api_key, not {}",
                        kind.as_str()
                    ),
                );
            }
        }
        for (h, line) in &headers {
            if !is_header_name(h) {
                self.err(*line, format!("{what}: `{h}` is not a valid header name"));
            }
        }
        Auth {
            kind,
            headers: if headers.is_empty() {
                Auth::default().headers
            } else {
                headers.into_iter().map(|v| v.0).collect()
            },
            query: query.into_iter().map(|v| v.0).collect(),
        }
    }
}

/// Checks a `service` term: a namespace and a Service name, each a DNS label (lower-case letters, digits and `-`,
/// at most 63 characters) or a glob of one (`*`, `?`).
fn service_name(s: &str) -> Result<(), &'static str> {
    let (ns, name) = s.split_once('/').ok_or("no `/`")?;
    for part in [ns, name] {
        if part.is_empty() {
            return Err("empty namespace or name");
        }
        if part.contains('/') {
            return Err("more than one `/`");
        }
        if part.len() > 63 {
            return Err("longer than 63 characters");
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-*?".contains(&b))
        {
            return Err("only lower-case letters, digits, `-` and the globs `*` `?`");
        }
    }
    Ok(())
}

/// A header name the registry takes: letters, digits, `-` and `_` (the importers keep only such names).
pub(crate) fn is_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A `base_path` the registry takes: a literal path starting with `/`.
pub(crate) fn is_literal_path(b: &str) -> bool {
    b.starts_with('/') && !b.contains(['?', '#', '*', '{'])
}

/// Could be a host name or glob in `match.hosts` (a port is refused separately, with its own message).
pub(crate) fn is_host_shape(h: &str) -> bool {
    !h.is_empty() && !h.contains(['/', ' '])
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use crate::registry::model::*;

    #[test]
    fn api_matcher_problems() {
        let api = |m: &str| {
            format!("teams: [{{id: t}}]\napis:\n  - id: a\n    owner: t\n    match:\n{m}")
        };
        assert_problem(&api("      ports: [0]\n"), 6, "`0` is not a port number");
        assert_problem(
            &api("      ports: http\n"),
            6,
            "`http` is not a port number",
        );
        assert_problem(
            &api("      hosts: a.com:8080\n"),
            6,
            "must not include a port",
        );
        assert_problem(
            &api("      base_path: v1\n"),
            6,
            "must be a literal path starting with `/`",
        );
        assert_problem(
            &api("      server_cgroup: \"\"\n"),
            6,
            "empty server_cgroup pattern",
        );
        assert_problem(&api("      host: a.com\n"), 6, "unknown field `host`");
        assert_problem(
            "teams: [{id: t}]\napis:\n  - id: a\n    owner: t\n    match: {}\n",
            5,
            "no criteria",
        );
        assert_problem(
            "teams: [{id: t}]\napis:\n  - id: a\n    owner: t\n",
            3,
            "missing required field `match`",
        );
    }

    #[test]
    fn route_problems() {
        let text = "teams: [{id: t}]\napis:\n  - id: a\n    owner: t\n    match: {ports: 80}\n    routes:\n      - GET /ok\n      - /v1/{id\n      - GET /ok\n";
        assert_problem(text, 8, "unparsable route template `/v1/{id`: unclosed `{`");
        assert_problem(text, 9, "duplicate route `GET /ok` (first at line 7)");
        let text = "teams: [{id: t}]\napis:\n  - id: a\n    owner: t\n    match: {ports: 80}\n    max_inferred_routes: lots\n";
        assert_problem(
            text,
            6,
            "`max_inferred_routes` must be a non-negative integer",
        );
        let text = "teams: [{id: t}]\napis:\n  - id: a\n    owner: t\n    match: {ports: 80}\n    openapi: missing.yaml\n";
        assert_problem(text, 6, "OpenAPI file missing.yaml: cannot read");
    }

    #[test]
    fn auth_problems() {
        let api = |auth: &str| {
            format!("teams: [{{id: t}}]\napis:\n  - id: a\n    owner: t\n    match: {{ports: 80}}\n    auth: {auth}\n")
        };
        assert_problem(&api("oauth"), 6, "unknown auth type `oauth`");
        assert_problem(&api("[]"), 6, "empty list");
        assert_problem(
            &api("[anonymous, bearer]"),
            6,
            "`anonymous` cannot be combined",
        );
        assert_problem(
            &api("[bearer, bearer]"),
            6,
            "location `bearer` listed twice",
        );
        let several = load(&api("[basic, {type: api_key, query: key}, bearer]"))
            .expect("several locations are valid");
        let kinds: Vec<AuthKind> = several.registry.apis[0]
            .auth
            .iter()
            .map(|a| a.kind)
            .collect();
        assert_eq!(
            kinds,
            [AuthKind::Basic, AuthKind::ApiKey, AuthKind::Bearer],
            "in order"
        );
        assert_eq!(
            several.registry.apis[0].auth_label(),
            "basic,api_key,bearer"
        );
        assert_problem(
            &api("{type: bearer, headers: X-Key}"),
            6,
            "only apply to type api_key",
        );
        assert_problem(&api("{headers: \"X Key\"}"), 6, "not a valid header name");
        let ok = load(&api("{query: [key, api_key]}")).expect("query-only api_key auth is valid");
        let auth = &ok.registry.apis[0].auth[0];
        assert_eq!(auth.kind, AuthKind::ApiKey);
        assert_eq!(
            auth.headers,
            vec!["X-Api-Key", "Api-Key"],
            "default headers kept"
        );
        assert_eq!(auth.query, vec!["key", "api_key"]);
        assert_eq!(
            load(&api("basic")).expect("valid").registry.apis[0].auth[0].kind,
            AuthKind::Basic
        );
    }

    #[test]
    fn openapi_routes_come_from_the_source() {
        let dir = std::path::Path::new("/specs");
        let spec = "openapi: 3.0.3\nservers: [{url: /v2}]\npaths:\n  /items/{id}: {get: {}, delete: {}}\n  /health: {}\n";
        let source = InMemory::default().file(dir.join("s.yaml"), spec);
        let text = "teams: [{id: t}]\napis:\n  - id: a\n    owner: t\n    match: {ports: 80}\n    routes: [\"GET /items/{id}\"]\n    openapi: s.yaml\n";
        let l = load_with(text, dir, &secret(), &source).unwrap_or_else(|p| panic!("valid: {p:?}"));
        let routes: Vec<String> = l.registry.apis[0]
            .routes
            .iter()
            .map(|r| format!("{} {}", r.method.as_deref().unwrap_or("*"), r.path))
            .collect();
        assert_eq!(
            routes,
            [
                "GET /items/{id}",
                "GET /v2/items/{id}",
                "DELETE /v2/items/{id}",
                "* /v2/health"
            ],
            "written routes first, then the document's under its server path"
        );
        assert_eq!(
            l.dependencies,
            [dir.join("s.yaml")],
            "the document is watched"
        );
        let bad = InMemory::default().file(
            dir.join("s.yaml"),
            "openapi: 3.0.3\npaths:\n  /ok: {get: {}}\n  /items/{id: {get: {}}\n",
        );
        let ps = load_with(text, dir, &secret(), &bad).expect_err("unparsable spec path");
        assert!(
            ps.iter().any(|p| p.line == 7
                && p.message
                    .contains("OpenAPI file s.yaml line 4: unparsable path `GET /items/{id`")),
            "the spec's own line is named: {ps:?}"
        );
    }

    #[test]
    fn several_matchers_with_methods_and_path_regexes() {
        let text = "teams: [{id: t}]\napis:\n  - id: a\n    owner: t\n    match:\n      - {hosts: a.com, base_path: /admin, methods: [get, POST]}\n      - {hosts: b.com, path_regex: '/users/\\d+'}\n";
        let l = load(text).unwrap_or_else(|p| panic!("valid: {p:?}"));
        let m = &l.registry.apis[0].matchers;
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].line, m[0].methods.clone()),
            (6, vec!["GET".to_string(), "POST".to_string()])
        );
        assert_eq!(m[1].path_regex[0].as_str(), "/users/\\d+");
        assert_eq!(l.registry.apis[0].hosts(), ["a.com", "b.com"]);
        let api = |m: &str| {
            format!("teams: [{{id: t}}]\napis:\n  - id: a\n    owner: t\n    match: {m}\n")
        };
        assert_problem(&api("[]"), 5, "`match` is an empty list");
        assert_problem(&api("{methods: GET}"), 5, "no criteria");
        assert_problem(
            &api("{hosts: a.com, methods: 'GE T'}"),
            5,
            "`GE T` is not a request method",
        );
        assert_problem(
            &api("{path_regex: '/a/('}"),
            5,
            "path_regex `/a/(` is not a regular expression",
        );
        assert_problem(&api("{path_regex: 'a'}"), 5, "must start with `/`");
    }

    #[test]
    fn service_terms() {
        let api = |m: &str| {
            format!("teams: [{{id: t}}]\napis:\n  - id: a\n    owner: t\n    match:\n{m}")
        };
        let l = load(&api("      service: [shop/checkout, \"pay*/api-?\"]\n"))
            .unwrap_or_else(|p| panic!("valid: {p:?}"));
        let m = &l.registry.apis[0].matchers[0];
        assert_eq!(
            m.services.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            ["shop/checkout", "pay*/api-?"]
        );
        for (bad, why) in [
            ("checkout", "no `/`"),
            ("/checkout", "empty namespace or name"),
            ("shop/", "empty namespace or name"),
            ("a/b/c", "more than one `/`"),
            ("Shop/checkout", "only lower-case letters"),
            ("shop/check_out", "only lower-case letters"),
        ] {
            assert_problem(
                &api(&format!("      service: {bad}\n")),
                6,
                &format!("service `{bad}` must be namespace/name (globs allowed): {why}"),
            );
        }
        let long = "x".repeat(64);
        assert_problem(
            &api(&format!("      service: shop/{long}\n")),
            6,
            "longer than 63 characters",
        );
        // `service` alone is a criterion; with `methods` it still is one.
        load(&api("      service: shop/checkout\n      methods: GET\n"))
            .unwrap_or_else(|p| panic!("valid: {p:?}"));
    }
}
