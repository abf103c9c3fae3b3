//! Importing an OpenAPI 3 document (YAML or JSON): its servers become an API matcher, its security scheme the key
//! extraction, its paths x operations the route templates. Output is registry YAML to merge.
use std::path::Path;

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
    /// `METHOD /path` templates, base path included, in document order.
    pub routes: Vec<String>,
    pub auth: Option<ImportedAuth>,
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

/// Reads and parses an OpenAPI 3 document; errors say what is wrong (with a line where one applies).
pub fn read_spec(path: &Path) -> Result<OpenApiSpec, String> {
    let text =
        super::yaml::read_text(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_spec(&text)
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
    for (i, server) in root
        .get("servers")
        .and_then(Node::as_seq)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        let Some(url) = server.get("url").and_then(Node::as_str) else {
            continue;
        };
        let (host, port, path) = split_url(url);
        if let Some(h) = host.filter(|h| !h.contains('{')) {
            if !spec.hosts.contains(&h) {
                spec.hosts.push(h);
            }
        }
        if let Some(p) = port.filter(|p| !spec.ports.contains(p)) {
            spec.ports.push(p);
        }
        if i == 0 && !path.contains('{') {
            spec.base_path = path;
        }
    }
    let paths = root
        .get("paths")
        .and_then(Node::as_map)
        .ok_or_else(|| format!("line {}: document has no `paths` mapping", root.line))?;
    for (k, item) in paths {
        let Some(p) = k.as_str() else { continue };
        if !p.starts_with('/') {
            return Err(format!("line {}: path `{p}` must start with `/`", k.line));
        }
        let full = if spec.base_path.is_empty() {
            p.to_string()
        } else if p == "/" {
            spec.base_path.clone()
        } else {
            format!("{}{p}", spec.base_path)
        };
        let mut any = false;
        for (op, _) in item.as_map().unwrap_or(&[]) {
            if let Some(op) = op.as_str().filter(|o| OPERATIONS.contains(o)) {
                spec.routes
                    .push(format!("{} {full}", op.to_ascii_uppercase()));
                any = true;
            }
        }
        if !any {
            spec.routes.push(full);
        }
    }
    spec.auth = security(&root);
    Ok(spec)
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
    (Some(host.to_ascii_lowercase()), port, path)
}

fn security(root: &Node) -> Option<ImportedAuth> {
    let schemes = root.get("components")?.get("securitySchemes")?.as_map()?;
    // Prefer the first scheme the document requires globally, else the first defined.
    let required = root
        .get("security")
        .and_then(Node::as_seq)
        .and_then(|s| s.first())
        .and_then(Node::as_map)
        .and_then(|m| m.first())
        .and_then(|(k, _)| k.as_str());
    let (_, scheme) = schemes
        .iter()
        .find(|(k, _)| required.is_some() && k.as_str() == required)
        .or_else(|| schemes.first())?;
    let get = |k: &str| scheme.get(k).and_then(Node::as_str).unwrap_or("");
    match get("type") {
        "apiKey" => {
            let name = get("name").to_string();
            match get("in") {
                "header" => Some(ImportedAuth {
                    kind: AuthKind::ApiKey,
                    headers: vec![name],
                    query: vec![],
                }),
                "query" => Some(ImportedAuth {
                    kind: AuthKind::ApiKey,
                    headers: vec![],
                    query: vec![name],
                }),
                _ => None,
            }
        }
        "http" => match get("scheme").to_ascii_lowercase().as_str() {
            "bearer" => Some(ImportedAuth {
                kind: AuthKind::Bearer,
                headers: vec![],
                query: vec![],
            }),
            "basic" => Some(ImportedAuth {
                kind: AuthKind::Basic,
                headers: vec![],
                query: vec![],
            }),
            _ => None,
        },
        "oauth2" | "openIdConnect" => Some(ImportedAuth {
            kind: AuthKind::Bearer,
            headers: vec![],
            query: vec![],
        }),
        _ => None,
    }
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
    match &spec.auth {
        None => y.push_str("    # No usable security scheme in the document: keys are looked for in X-Api-Key / Api-Key.\n"),
        Some(a) => {
            y.push_str(&format!("    auth:\n      type: {}\n", a.kind.as_str()));
            if !a.headers.is_empty() {
                y.push_str(&format!("      headers: {}\n", flow_list(&a.headers)));
            }
            if !a.query.is_empty() {
                y.push_str(&format!("      query: {}\n", flow_list(&a.query)));
            }
        }
    }
    if spec.routes.is_empty() {
        y.push_str("    routes: []\n");
    } else {
        y.push_str("    routes:\n");
        for r in &spec.routes {
            y.push_str(&format!("      - {}\n", scalar(r)));
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
            spec.routes,
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
            Some(ImportedAuth {
                kind: AuthKind::ApiKey,
                headers: vec!["X-Api-Key".into()],
                query: vec![]
            }),
            "the globally required scheme is used"
        );
        let yaml = to_registry_yaml(&spec, "payments-openapi.yaml");
        let secret = KeySecret::from_bytes(b"openapi-import-secret");
        let r = load_str(&yaml, Path::new("."), &secret)
            .unwrap_or_else(|p| panic!("import output must validate: {p:?}\n{yaml}"))
            .registry;
        assert_eq!(r.apis[0].id, "payments-api");
        assert_eq!(r.apis[0].routes.len(), 7);
        assert_eq!(r.apis[0].matcher.base_paths, ["/v1"]);
    }

    #[test]
    fn json_and_other_security_schemes() {
        let json = r#"{"openapi": "3.1.0", "info": {"title": "Q", "version": "1"},
            "paths": {"/things": {"get": {}}, "/health": {}},
            "components": {"securitySchemes": {"k": {"type": "apiKey", "in": "query", "name": "key"}}}}"#;
        let spec = parse_spec(json).expect("JSON OpenAPI parses");
        assert_eq!(
            spec.routes,
            ["GET /things", "/health"],
            "path without operations matches any method"
        );
        assert_eq!(
            spec.auth.as_ref().map(|a| a.query.clone()),
            Some(vec!["key".to_string()])
        );
        let yaml = to_registry_yaml(&spec, "q.json");
        assert!(yaml.contains("The document names no server"), "{yaml}");
        let secret = KeySecret::from_bytes(b"openapi-import-secret");
        load_str(&yaml, Path::new("."), &secret).unwrap_or_else(|p| panic!("valid: {p:?}\n{yaml}"));
        let basic = "openapi: 3.0.0\npaths: {}\ncomponents:\n  securitySchemes:\n    b: {type: http, scheme: Basic}\n";
        assert_eq!(
            parse_spec(basic).expect("parses").auth.map(|a| a.kind),
            Some(AuthKind::Basic)
        );
        let err = parse_spec("openapi: 3.0.0\npaths:\n  things: {}\n")
            .expect_err("relative path refused");
        assert!(err.contains("line 3"), "{err}");
    }
}
