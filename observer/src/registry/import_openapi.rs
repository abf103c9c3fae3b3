//! Importing an OpenAPI 3 document (YAML or JSON): its servers become an API matcher, its security schemes the key
//! locations, its paths x operations the route templates. Output is registry YAML to merge. What cannot be carried
//! over exactly is kept as a note with the document's line, for the importer to report.
use std::path::Path;

use super::load::{is_header_name, is_host_shape, is_literal_path, Problem};
use super::model::AuthKind;
use super::yaml::{self, flow_list, scalar, Node};

/// What the registry takes from an OpenAPI document.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpenApiSpec {
    pub title: String,
    pub version: String,
    pub hosts: Vec<String>,
    pub ports: Vec<u16>,
    /// Path of the first server URL (routes are prefixed with it), "" when none.
    pub base_path: String,
    /// `METHOD /path` templates, server path included, in document order, with the line each comes from.
    pub routes: Vec<(String, usize)>,
    /// Key locations, in the order the document lists its schemes.
    pub auth: Vec<ImportedAuth>,
    /// What was dropped or approximated, at the document's line.
    pub notes: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedAuth {
    pub kind: AuthKind,
    pub headers: Vec<String>,
    pub query: Vec<String>,
}

const OPERATIONS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
/// Most hosts one server URL's variables expand to.
const MAX_VARIANTS: usize = 16;

/// Reads and parses an OpenAPI 3 document; errors say what is wrong (with a line where one applies).
pub fn read_spec(path: &Path) -> Result<OpenApiSpec, String> {
    let text = yaml::read_text(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_spec(&text)
}

impl OpenApiSpec {
    fn note(&mut self, line: usize, message: impl Into<String>) {
        self.notes.push(Problem {
            line,
            message: message.into(),
        });
    }
}

pub fn parse_spec(text: &str) -> Result<OpenApiSpec, String> {
    let root = yaml::parse(text)
        .map_err(|e| format!("YAML syntax error at line {}: {}", e.line, e.message))?;
    let version = root.get("openapi").and_then(Node::as_str).unwrap_or("");
    if !version.starts_with("3.") {
        return Err(match root.get("swagger") {
            Some(_) => "Swagger 2 documents are not supported; convert to OpenAPI 3".into(),
            None => format!(
                "line {}: not an OpenAPI 3 document (`openapi: 3.x` missing)",
                root.line
            ),
        });
    }
    let info = root.get("info");
    let mut spec = OpenApiSpec {
        title: info
            .and_then(|i| i.get("title"))
            .and_then(Node::as_str)
            .unwrap_or("")
            .to_string(),
        version: info
            .and_then(|i| i.get("version"))
            .and_then(Node::as_str)
            .unwrap_or("")
            .to_string(),
        ..Default::default()
    };
    let top_paths = servers(&mut spec, root.get("servers"));
    spec.base_path = top_paths.first().cloned().unwrap_or_default();
    if let Some(other) = top_paths.iter().find(|p| **p != spec.base_path) {
        let line = root.get("servers").map_or(root.line, |n| n.line);
        spec.note(
            line,
            format!(
                "servers have different paths (`{}` and `{other}`): routes use the first server's",
                spec.base_path
            ),
        );
    }
    let paths = match root.get("paths") {
        Some(p) => p
            .as_map()
            .ok_or_else(|| format!("line {}: `paths` must be a mapping", p.line))?,
        None if version.starts_with("3.0") => {
            return Err(format!(
                "line {}: document has no `paths` mapping",
                root.line
            ))
        }
        None => &[],
    };
    if let Some(w) = root.get("webhooks").and_then(Node::as_map) {
        if !w.is_empty() {
            let line = root.get("webhooks").map_or(root.line, |n| n.line);
            spec.note(
                line,
                format!("{} webhook(s) not imported: they are calls the API makes, not calls it receives", w.len()),
            );
        }
    }
    for (k, item) in paths {
        let Some(p) = k.as_str() else { continue };
        if p.starts_with("x-") {
            spec.note(k.line, format!("extension `{p}` under `paths` ignored"));
            continue;
        }
        if !p.starts_with('/') {
            return Err(format!("line {}: path `{p}` must start with `/`", k.line));
        }
        let item = match resolve(&root, item) {
            Ok(i) => i,
            Err(why) => {
                spec.note(
                    k.line,
                    format!("path `{p}`: {why}; imported for any method"),
                );
                item
            }
        };
        let item_paths = servers(&mut spec, item.get("servers"));
        let mut any = false;
        for (op, body) in item.as_map().unwrap_or(&[]) {
            let Some(op) = op.as_str().filter(|o| OPERATIONS.contains(o)) else {
                continue;
            };
            let op_paths = servers(&mut spec, body.get("servers"));
            let base = op_paths
                .first()
                .or(item_paths.first())
                .unwrap_or(&spec.base_path)
                .clone();
            let route = format!("{} {}", op.to_ascii_uppercase(), join(&base, p));
            push_route(&mut spec, route, k.line);
            any = true;
        }
        if !any {
            let base = item_paths.first().unwrap_or(&spec.base_path).clone();
            push_route(&mut spec, join(&base, p), k.line);
        }
    }
    spec.auth = security(&root, &mut spec.notes);
    Ok(spec)
}

/// `base` + `path` (`/v1` + `/` is `/v1`).
fn join(base: &str, path: &str) -> String {
    if base.is_empty() {
        path.to_string()
    } else if path == "/" {
        base.to_string()
    } else {
        format!("{base}{path}")
    }
}

/// Adds a route made valid for the registry, noting any rewrite.
fn push_route(spec: &mut OpenApiSpec, route: String, line: usize) {
    let (fixed, why) = valid_template(&route);
    if let Some(why) = why {
        spec.note(
            line,
            format!("route `{route}` imported as `{fixed}`: {why}"),
        );
    }
    if !spec.routes.iter().any(|(r, _)| *r == fixed) {
        spec.routes.push((fixed, line));
    }
}

/// Rewrites what the registry's templates refuse: a repeated parameter name gets a suffix (`{id}` .. `{id_2}`)
/// and adjacent parameters (`{a}{b}`) become one (`{a_b}`).
fn valid_template(route: &str) -> (String, Option<&'static str>) {
    let mut names: Vec<String> = Vec::new();
    let mut out = String::with_capacity(route.len());
    let mut why = None;
    let mut rest = route;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            out.push_str(&rest[open..]);
            return (out, why);
        };
        let mut name = rest[open + 1..open + close].to_string();
        rest = &rest[open + close + 1..];
        while rest.starts_with('{') {
            let Some(c) = rest.find('}') else { break };
            name = format!("{name}_{}", &rest[1..c]);
            rest = &rest[c + 1..];
            why = Some("adjacent parameters cannot be told apart, so they are one");
        }
        if names.contains(&name) {
            let mut n = 2;
            while names.contains(&format!("{name}_{n}")) {
                n += 1;
            }
            name = format!("{name}_{n}");
            why = Some("a parameter name repeats, so later ones are numbered");
        }
        out.push('{');
        out.push_str(&name);
        out.push('}');
        names.push(name);
    }
    out.push_str(rest);
    (out, why)
}

/// Follows a local `$ref` (`#/components/pathItems/x`), repeatedly; other references are refused with a reason.
fn resolve<'a>(root: &'a Node, mut node: &'a Node) -> Result<&'a Node, String> {
    for _ in 0..16 {
        let Some(r) = node.get("$ref").and_then(Node::as_str) else {
            return Ok(node);
        };
        let Some(pointer) = r.strip_prefix("#/") else {
            return Err(format!("reference `{r}` to another document not followed"));
        };
        let mut cur = root;
        for part in pointer.split('/') {
            let part = part.replace("~1", "/").replace("~0", "~");
            cur = cur
                .get(&part)
                .ok_or_else(|| format!("reference `{r}` not found in the document"))?;
        }
        node = cur;
    }
    Err("reference chain longer than 16".into())
}

/// Adds the hosts and ports of a `servers` list to `spec`; returns each server's path (variables substituted).
fn servers(spec: &mut OpenApiSpec, list: Option<&Node>) -> Vec<String> {
    let mut paths = Vec::new();
    for server in list.and_then(Node::as_seq).unwrap_or(&[]) {
        let Some(url) = server.get("url").and_then(Node::as_str) else {
            continue;
        };
        let urls = expand_variables(url, server.get("variables"));
        if urls.iter().any(|u| u.contains('{')) {
            spec.note(
                server.line,
                format!("server `{url}`: a variable without a default is left out of the matcher"),
            );
        }
        for u in &urls {
            let (host, port, path) = split_url(u);
            if let Some(h) = host.filter(|h| !h.contains('{')) {
                if !spec.hosts.contains(&h) {
                    spec.hosts.push(h);
                }
            }
            if let Some(p) = port.filter(|p| !spec.ports.contains(p)) {
                spec.ports.push(p);
            }
            // Only a path the registry takes as a base path (found by the openapi fuzz target: `htt\xff\xff/api...`).
            if (path.is_empty() || is_literal_path(&path)) && !paths.contains(&path) {
                paths.push(path);
            }
        }
    }
    paths
}

/// A server URL with its variables substituted: the default of each, plus the other `enum` values of variables in
/// the host (each such variable multiplies the URLs, up to [`MAX_VARIANTS`]).
fn expand_variables(url: &str, vars: Option<&Node>) -> Vec<String> {
    let mut urls = vec![url.to_string()];
    for (name, var) in vars.and_then(Node::as_map).unwrap_or(&[]) {
        let Some(name) = name.as_str() else { continue };
        let placeholder = format!("{{{name}}}");
        let default = var.get("default").and_then(Node::as_str);
        let in_host = url
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
            .is_some_and(|authority| authority.contains(&placeholder));
        let mut values: Vec<&str> = default.into_iter().collect();
        if in_host {
            for v in var.get("enum").and_then(Node::as_seq).unwrap_or(&[]) {
                if let Some(v) = v.as_str().filter(|v| !values.contains(v)) {
                    values.push(v);
                }
            }
        }
        if values.is_empty() {
            continue;
        }
        let mut next = Vec::new();
        for u in &urls {
            for v in &values {
                if next.len() < MAX_VARIANTS {
                    next.push(u.replace(&placeholder, v));
                }
            }
        }
        urls = next;
    }
    urls
}

/// `scheme://host:port/path` -> (host, port, path without trailing `/`). Relative URLs give only a path.
pub fn split_url(url: &str) -> (Option<String>, Option<u16>, String) {
    let (authority, path) = match url.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => (Some(&rest[..i]), &rest[i..]),
            None => (Some(rest), ""),
        },
        None => (None, url),
    };
    let path = path
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .trim_end_matches('/')
        .to_string();
    let Some(authority) = authority.filter(|a| !a.is_empty()) else {
        return (None, None, path);
    };
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse::<u16>() {
            Ok(port) => (h, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    };
    // A host the registry could not take (found by the openapi fuzz target: `https://api.exa# me.com/v1`) is none.
    let host = host.to_ascii_lowercase();
    let host = (is_host_shape(&host) && !host.contains(':')).then_some(host);
    (host, port, path)
}

/// Names of the schemes security requirements list (global and per operation), in order of appearance.
fn required_schemes(root: &Node) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |sec: Option<&Node>| {
        for req in sec.and_then(Node::as_seq).unwrap_or(&[]) {
            for (k, _) in req.as_map().unwrap_or(&[]) {
                if let Some(k) = k.as_str().filter(|k| !out.iter().any(|o| o == k)) {
                    out.push(k.to_string());
                }
            }
        }
    };
    add(root.get("security"));
    for (_, item) in root.get("paths").and_then(Node::as_map).unwrap_or(&[]) {
        for (_, op) in item.as_map().unwrap_or(&[]) {
            add(op.get("security"));
        }
    }
    out
}

/// Every scheme the document requires (all defined ones when it requires none), as key locations; schemes with no
/// key the registry can read are noted.
fn security(root: &Node, notes: &mut Vec<Problem>) -> Vec<ImportedAuth> {
    let Some(schemes) = root
        .get("components")
        .and_then(|c| c.get("securitySchemes"))
        .and_then(Node::as_map)
    else {
        return Vec::new();
    };
    let required = required_schemes(root);
    let mut out: Vec<ImportedAuth> = Vec::new();
    for (k, scheme) in schemes {
        let Some(name) = k.as_str() else { continue };
        if !required.is_empty() && !required.iter().any(|r| r == name) {
            continue;
        }
        let scheme = resolve(root, scheme).unwrap_or(scheme);
        let get = |k: &str| scheme.get(k).and_then(Node::as_str).unwrap_or("");
        let auth = |kind, headers: Vec<String>, query: Vec<String>| ImportedAuth {
            kind,
            headers,
            query,
        };
        let found = match get("type") {
            "apiKey" => match get("in") {
                // Only a name the registry takes as a header (found by the openapi fuzz target: `name: ""`).
                "header" if is_header_name(get("name")) => {
                    Some(auth(AuthKind::ApiKey, vec![get("name").into()], vec![]))
                }
                "query" => Some(auth(AuthKind::ApiKey, vec![], vec![get("name").into()])),
                _ => None,
            },
            "http" => match get("scheme").to_ascii_lowercase().as_str() {
                "bearer" => Some(auth(AuthKind::Bearer, vec![], vec![])),
                "basic" => Some(auth(AuthKind::Basic, vec![], vec![])),
                _ => None,
            },
            "oauth2" | "openIdConnect" => Some(auth(AuthKind::Bearer, vec![], vec![])),
            _ => None,
        };
        match found {
            Some(a) if !out.contains(&a) => out.push(a),
            Some(_) => {}
            None => notes.push(Problem {
                line: scheme.line,
                message: format!(
                    "security scheme `{name}` ({}) has no key the registry can read; not imported",
                    [get("type"), get("in"), get("scheme")]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            }),
        }
    }
    out
}

/// Lower-case id from a title: `Payments API v2` -> `payments-api-v2`.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "api".into()
    } else {
        out
    }
}

/// The header every importer prints: a placeholder team so the output validates on its own.
pub fn unassigned_team_yaml() -> String {
    "teams:\n  # Placeholder owner so this output validates on its own; point `owner`/`team` at real teams when merging.\n  - id: unassigned\n    name: Unassigned\n".into()
}

/// Registry YAML for one OpenAPI document.
pub fn to_registry_yaml(spec: &OpenApiSpec, source: &str) -> String {
    let id = slug(if spec.title.is_empty() {
        "api"
    } else {
        &spec.title
    });
    let mut y = String::new();
    y.push_str(&format!(
        "# Imported from OpenAPI document {source} (title {}, version {}).\n# Review the id, owner and matcher, then merge into your registry.\nversion: 1\n",
        scalar(&spec.title),
        scalar(&spec.version)
    ));
    y.push_str(&unassigned_team_yaml());
    y.push_str("apis:\n");
    y.push_str(&format!("  - id: {}\n", scalar(&id)));
    y.push_str(&format!(
        "    name: {}\n",
        scalar(if spec.title.is_empty() {
            &id
        } else {
            &spec.title
        })
    ));
    y.push_str("    owner: unassigned\n    match:\n");
    let mut matched = false;
    if !spec.hosts.is_empty() {
        y.push_str(&format!("      hosts: {}\n", flow_list(&spec.hosts)));
        matched = true;
    }
    if !spec.base_path.is_empty() {
        y.push_str(&format!("      base_path: {}\n", scalar(&spec.base_path)));
        matched = true;
    }
    if !matched {
        y.push_str(&format!(
            "      # The document names no server: set how to recognise this API.\n      hosts: [{}]\n",
            scalar(&id)
        ));
    }
    if spec.auth.is_empty() {
        y.push_str("    # No usable security scheme in the document: keys are looked for in X-Api-Key / Api-Key.\n");
    } else {
        y.push_str("    auth:\n");
        for a in &spec.auth {
            y.push_str(&format!("      - {{type: {}", a.kind.as_str()));
            if !a.headers.is_empty() {
                y.push_str(&format!(", headers: {}", flow_list(&a.headers)));
            }
            if !a.query.is_empty() {
                y.push_str(&format!(", query: {}", flow_list(&a.query)));
            }
            y.push_str("}\n");
        }
    }
    if spec.routes.is_empty() {
        y.push_str("    routes: []\n");
    } else {
        y.push_str("    routes:\n");
        for (r, line) in &spec.routes {
            // A path the registry's templates cannot read (an unclosed `{`) would make the whole output invalid:
            // left out, with the reason, where a reviewer sees it. (A registry's `openapi:` reference reports it
            // as an error instead.)
            match super::route::RouteTemplate::parse(r) {
                Ok(_) => y.push_str(&format!("      - {}\n", scalar(r))),
                Err(e) => y.push_str(&format!(
                    "      # not imported (document line {line}): {}: {}\n",
                    r.replace('\n', " "),
                    e.replace('\n', " ")
                )),
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("https://API.example.com:8443/v1/"),
            (Some("api.example.com".into()), Some(8443), "/v1".into())
        );
        assert_eq!(split_url("/v2"), (None, None, "/v2".into()));
        assert_eq!(split_url("http://h"), (Some("h".into()), None, "".into()));
        // Found by the openapi fuzz target: a host the registry refuses is no host.
        assert_eq!(
            split_url("htlps://api.exa# Me.com/v1"),
            (None, None, "/v1".into())
        );
    }

    #[test]
    fn refuses_non_openapi3() {
        let err = parse_spec("swagger: '2.0'\npaths: {}\n").expect_err("swagger 2 refused");
        assert!(err.contains("Swagger 2"), "{err}");
        let err = parse_spec("foo: 1\n").expect_err("not openapi refused");
        assert!(err.contains("not an OpenAPI 3 document"), "{err}");
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("Payments API (v2)"), "payments-api-v2");
        assert_eq!(slug("***"), "api");
    }
}

#[cfg(test)]
mod fixture_tests {
    use std::path::Path;

    use super::*;
    use crate::registry::{load_str, KeySecret};

    #[test]
    fn unparsable_path_is_left_out_of_the_imported_registry() {
        // Found by the `openapi` fuzz target: an unclosed `{` made the output a registry the loader rejects.
        let spec = parse_spec(
            "openapi: 3.0.0\ninfo: {title: T, version: '1'}\npaths:\n  /a/{id:\n    get: {}\n  /b:\n    get: {}\n",
        )
        .expect("spec parses");
        let yaml = to_registry_yaml(&spec, "t.yaml");
        assert!(
            yaml.contains("# not imported (document line 4): GET /a/{id: "),
            "the path left out is named where a reviewer sees it:\n{yaml}"
        );
        crate::registry::load_str(
            &yaml,
            std::path::Path::new("."),
            &crate::registry::KeySecret::from_bytes(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap_or_else(|p| panic!("importer output must load: {p:?}\n{yaml}"));
    }

    #[test]
    fn a_server_path_the_registry_refuses_is_left_out() {
        // Found by the `openapi` fuzz target: a relative server URL not starting with `/` became a base path.
        let spec = parse_spec(
            "openapi: 3.0.0\ninfo: {title: T, version: '1'}\nservers:\n  - url: 'htt\u{fffd}/api.example.com/v2'\n\
             paths:\n  /b:\n    get: {}\n",
        )
        .expect("spec parses");
        let yaml = to_registry_yaml(&spec, "t.yaml");
        assert!(!yaml.contains("api.example.com/v2"), "{yaml}");
        crate::registry::load_str(
            &yaml,
            std::path::Path::new("."),
            &crate::registry::KeySecret::from_bytes(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap_or_else(|p| panic!("importer output must load: {p:?}\n{yaml}"));
    }

    fn routes(spec: &OpenApiSpec) -> Vec<&str> {
        spec.routes.iter().map(|(r, _)| r.as_str()).collect()
    }

    fn notes(spec: &OpenApiSpec) -> Vec<(usize, &str)> {
        spec.notes
            .iter()
            .map(|n| (n.line, n.message.as_str()))
            .collect()
    }

    fn valid(spec: &OpenApiSpec) -> crate::registry::Registry {
        let yaml = to_registry_yaml(spec, "spec.yaml");
        let secret = KeySecret::from_bytes(b"openapi-import-secret");
        load_str(&yaml, Path::new("."), &secret)
            .unwrap_or_else(|p| panic!("import output must validate: {p:?}\n{yaml}"))
            .registry
    }

    #[test]
    fn several_security_schemes_are_several_key_locations() {
        // Stripe's shape: basic and bearer both accepted.
        let text = "openapi: 3.0.0\ninfo: {title: S, version: '1'}\nsecurity:\n  - basicAuth: []\n  - bearerAuth: []\npaths:\n  /v1/charges:\n    get:\n      security: [{apiKeyQuery: []}]\ncomponents:\n  securitySchemes:\n    basicAuth: {type: http, scheme: basic}\n    bearerAuth: {type: http, scheme: bearer}\n    apiKeyQuery: {type: apiKey, in: query, name: key}\n    cookie: {type: apiKey, in: cookie, name: sid}\n    tls: {type: mutualTLS}\n";
        let spec = parse_spec(text).expect("parses");
        let kinds: Vec<AuthKind> = spec.auth.iter().map(|a| a.kind).collect();
        assert_eq!(
            kinds,
            [AuthKind::Basic, AuthKind::Bearer, AuthKind::ApiKey],
            "every required scheme, operation-level too"
        );
        assert_eq!(spec.notes, [], "unrequired schemes are not reported");
        let r = valid(&spec);
        let auth: Vec<(AuthKind, Vec<String>)> = r.apis[0]
            .auth
            .iter()
            .map(|a| (a.kind, a.query.clone()))
            .collect();
        assert_eq!(
            auth,
            [
                (AuthKind::Basic, vec![]),
                (AuthKind::Bearer, vec![]),
                (AuthKind::ApiKey, vec!["key".to_string()])
            ]
        );
        // Shaped like the OAI 3.1 `securitySchemes.yaml` example: a client certificate or OAuth2 per operation.
        let mtls = "openapi: 3.1.0\npaths:\n  /pets:\n    get:\n      security: [{ClientCertificate: [read]}, {OAuth2: [read]}]\ncomponents:\n  securitySchemes:\n    OAuth2: {type: oauth2, flows: {}}\n    ClientCertificate: {type: mutualTLS}\n";
        let spec = parse_spec(mtls).expect("parses");
        assert_eq!(
            spec.auth.iter().map(|a| a.kind).collect::<Vec<_>>(),
            [AuthKind::Bearer]
        );
        assert_eq!(notes(&spec), [(9, "security scheme `ClientCertificate` (mutualTLS) has no key the registry can read; not imported")]);
        let only_defined = "openapi: 3.0.0\npaths: {}\ncomponents:\n  securitySchemes:\n    cookie: {type: apiKey, in: cookie, name: sid}\n    b: {type: http, scheme: bearer}\n";
        let spec = parse_spec(only_defined).expect("parses");
        assert_eq!(spec.auth.len(), 1);
        assert_eq!(notes(&spec), [(5, "security scheme `cookie` (apiKey cookie) has no key the registry can read; not imported")]);
    }

    #[test]
    fn path_item_refs_server_variables_and_operation_servers() {
        let text = "\
openapi: 3.1.0
info: {title: Vars, version: '2'}
servers:
  - url: https://{env}.api.example.com/{version}
    variables:
      env: {default: prod, enum: [prod, staging]}
      version: {default: v2}
paths:
  /items:
    $ref: '#/components/pathItems/Items'
  /upload:
    post:
      servers: [{url: 'https://upload.example.com/u'}]
  x-internal: {get: {}}
  /remote:
    $ref: 'other.yaml#/paths/~1remote'
components:
  pathItems:
    Items: {get: {}, post: {}}
";
        let spec = parse_spec(text).expect("parses");
        assert_eq!(
            spec.hosts,
            [
                "prod.api.example.com",
                "staging.api.example.com",
                "upload.example.com"
            ]
        );
        assert_eq!(spec.base_path, "/v2", "server variables substituted");
        assert_eq!(
            routes(&spec),
            [
                "GET /v2/items",
                "POST /v2/items",
                "POST /u/upload",
                "/v2/remote"
            ]
        );
        assert_eq!(
            notes(&spec),
            [
                (14, "extension `x-internal` under `paths` ignored"),
                (15, "path `/remote`: reference `other.yaml#/paths/~1remote` to another document not followed; imported for any method"),
            ]
        );
        valid(&spec);
    }

    #[test]
    fn webhooks_only_document_is_accepted() {
        let text =
            "openapi: 3.1.0\ninfo: {title: Hooks, version: '1'}\nwebhooks:\n  newPet: {post: {}}\n";
        let spec = parse_spec(text).expect("3.1 makes paths optional");
        assert!(spec.routes.is_empty());
        assert_eq!(
            notes(&spec),
            [(
                4,
                "1 webhook(s) not imported: they are calls the API makes, not calls it receives"
            )]
        );
        valid(&spec);
        let err = parse_spec("openapi: 3.0.3\ninfo: {title: H, version: '1'}\n")
            .expect_err("3.0 requires paths");
        assert!(err.contains("no `paths`"), "{err}");
    }

    #[test]
    fn templates_are_made_valid_and_the_rewrite_is_noted() {
        let text = "openapi: 3.0.0\npaths:\n  /a/{id}/b/{id}: {get: {}}\n  /files/{name}{ext}: {get: {}}\n";
        let spec = parse_spec(text).expect("parses");
        assert_eq!(
            routes(&spec),
            ["GET /a/{id}/b/{id_2}", "GET /files/{name_ext}"]
        );
        assert_eq!(
            notes(&spec),
            [
                (3, "route `GET /a/{id}/b/{id}` imported as `GET /a/{id}/b/{id_2}`: a parameter name repeats, so later ones are numbered"),
                (4, "route `GET /files/{name}{ext}` imported as `GET /files/{name_ext}`: adjacent parameters cannot be told apart, so they are one"),
            ]
        );
        valid(&spec);
    }

    #[test]
    fn byte_order_mark_does_not_hide_the_version() {
        let spec =
            parse_spec("\u{feff}{\"openapi\": \"3.0.0\", \"paths\": {\"/x\": {\"get\": {}}}}")
                .expect("BOM skipped");
        assert_eq!(routes(&spec), ["GET /x"]);
    }

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/payments-openapi.yaml")
    }

    #[test]
    fn openapi_fixture_imports_to_a_valid_registry() {
        let spec = read_spec(&fixture()).unwrap_or_else(|e| panic!("fixture parses: {e}"));
        assert_eq!(spec.title, "Payments API");
        assert_eq!(spec.hosts, ["api.example.com", "payments.internal"]);
        assert_eq!(spec.ports, [8443]);
        assert_eq!(spec.base_path, "/v1");
        assert_eq!(
            routes(&spec),
            [
                "GET /v1/payments",
                "POST /v1/payments",
                "GET /v1/payments/{id}",
                "POST /v1/payments/{id}/refunds",
                "GET /v1/payments/{id}/refunds",
                "GET /v1/payments/{id}/refunds/{refund_id}",
                "GET /v1/payments/search",
            ],
            "path-level `parameters` is not an operation"
        );
        assert_eq!(
            spec.auth,
            [ImportedAuth {
                kind: AuthKind::ApiKey,
                headers: vec!["X-Api-Key".into()],
                query: vec![]
            }],
            "the globally required scheme is used"
        );
        assert_eq!(spec.notes, [], "nothing dropped");
        let yaml = to_registry_yaml(&spec, "payments-openapi.yaml");
        let secret = KeySecret::from_bytes(b"openapi-import-secret");
        let r = load_str(&yaml, Path::new("."), &secret)
            .unwrap_or_else(|p| panic!("import output must validate: {p:?}\n{yaml}"))
            .registry;
        assert_eq!(r.apis[0].id, "payments-api");
        assert_eq!(r.apis[0].routes.len(), 7);
        assert_eq!(r.apis[0].matchers[0].base_paths, ["/v1"]);
    }

    #[test]
    fn json_and_other_security_schemes() {
        let json = r#"{"openapi": "3.1.0", "info": {"title": "Q", "version": "1"},
            "paths": {"/things": {"get": {}}, "/health": {}},
            "components": {"securitySchemes": {"k": {"type": "apiKey", "in": "query", "name": "key"}}}}"#;
        let spec = parse_spec(json).expect("JSON OpenAPI parses");
        assert_eq!(
            routes(&spec),
            ["GET /things", "/health"],
            "path without operations matches any method"
        );
        assert_eq!(
            spec.auth
                .iter()
                .map(|a| a.query.clone())
                .collect::<Vec<_>>(),
            [vec!["key".to_string()]]
        );
        let yaml = to_registry_yaml(&spec, "q.json");
        assert!(yaml.contains("The document names no server"), "{yaml}");
        let secret = KeySecret::from_bytes(b"openapi-import-secret");
        load_str(&yaml, Path::new("."), &secret).unwrap_or_else(|p| panic!("valid: {p:?}\n{yaml}"));
        let basic = "openapi: 3.0.0\npaths: {}\ncomponents:\n  securitySchemes:\n    b: {type: http, scheme: Basic}\n";
        assert_eq!(
            parse_spec(basic)
                .expect("parses")
                .auth
                .iter()
                .map(|a| a.kind)
                .collect::<Vec<_>>(),
            [AuthKind::Basic]
        );
        let err = parse_spec("openapi: 3.0.0\npaths:\n  things: {}\n")
            .expect_err("relative path refused");
        assert!(err.contains("line 3"), "{err}");
    }
}
