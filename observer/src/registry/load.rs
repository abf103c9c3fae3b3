//! Loading and validating a registry file: every problem is collected with the line it is on (unknown references,
//! duplicate ids, overlapping API matchers, unparsable route templates, dates out of order, ...), so
//! `registry check` can print them all as `FILE:LINE: message`.
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::event::Timestamp;

use super::fingerprint::{key_suffix, parse_fingerprint, KeySecret, SecretError};
use super::glob::Glob;
use super::model::*;
use super::route::RouteTemplate;
use super::yaml::{self, Node};

/// One problem in a registry file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

/// Problems rendered one per line as `FILE:LINE: message`.
pub struct Problems<'a> {
    pub path: &'a Path,
    pub problems: &'a [Problem],
}

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}: {}", self.path.display(), p.line, p.message)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: cannot read registry: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} problem(s) in registry:\n{}", problems.len(), Problems { path, problems })]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{path}: {message}")]
    Import { path: PathBuf, message: String },
    #[error("cannot read the key from standard input: {0}")]
    Stdin(std::io::Error),
    #[error("empty key: give the API key as an argument or on standard input")]
    EmptyKey,
}

/// A successfully loaded registry with what it was built from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub registry: Registry,
    /// Files the registry read besides itself (OpenAPI documents, key files): a change to any triggers a reload.
    pub dependencies: Vec<PathBuf>,
}

/// Reads and validates the registry at `path`. Relative paths inside it resolve against its directory.
pub fn load_file(path: &Path, secret: &KeySecret) -> Result<Loaded, RegistryError> {
    let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, base, secret).map_err(|problems| RegistryError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Validates registry text. `base_dir` resolves relative `openapi:` and `key_file:` paths.
pub fn load_str(text: &str, base_dir: &Path, secret: &KeySecret) -> Result<Loaded, Vec<Problem>> {
    let root = yaml::parse(text).map_err(|e| {
        vec![Problem {
            line: e.line,
            message: format!("YAML syntax error at column {}: {}", e.col, e.message),
        }]
    })?;
    let mut cx = Ctx {
        problems: Vec::new(),
        base_dir: base_dir.to_path_buf(),
        secret,
        dependencies: Vec::new(),
    };
    let registry = cx.registry(&root);
    if cx.problems.is_empty() {
        Ok(Loaded {
            registry,
            dependencies: cx.dependencies,
        })
    } else {
        let mut problems = cx.problems;
        problems.sort_by_key(|p| p.line);
        Err(problems)
    }
}

struct Ctx<'s> {
    problems: Vec<Problem>,
    base_dir: PathBuf,
    secret: &'s KeySecret,
    dependencies: Vec<PathBuf>,
}

/// What an item is called in messages: `api `payments`` or `apis[3]` before its id is known.
fn label(kind: &str, section: &str, index: usize, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{kind} `{id}`"),
        None => format!("{section}[{index}]"),
    }
}

/// A date as written in registries: `2026-03-02` at midnight UTC, else RFC 3339.
fn show(t: Timestamp) -> String {
    let s = t.to_rfc3339();
    if t.0 % 86_400_000_000 == 0 {
        s[..10].to_string()
    } else {
        s
    }
}

fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'))
}

impl Ctx<'_> {
    fn err(&mut self, line: usize, message: impl Into<String>) {
        self.problems.push(Problem {
            line,
            message: message.into(),
        });
    }

    /// Checks `node` is a mapping with only `allowed` keys, each once. Returns false when it is not a mapping.
    fn fields(&mut self, node: &Node, what: &str, allowed: &[&str]) -> bool {
        let Some(entries) = node.as_map() else {
            self.err(
                node.line,
                format!("{what}: expected a mapping, found {}", node.kind()),
            );
            return false;
        };
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (k, _) in entries {
            let Some(name) = k.as_str() else {
                self.err(k.line, format!("{what}: keys must be plain names"));
                continue;
            };
            if let Some(first) = seen.insert(name, k.line) {
                self.err(
                    k.line,
                    format!("{what}: duplicate field `{name}` (first at line {first})"),
                );
            }
            if !allowed.contains(&name) {
                self.err(
                    k.line,
                    format!(
                        "{what}: unknown field `{name}` (expected one of: {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
        true
    }

    fn opt_str(&mut self, node: &Node, key: &str, what: &str) -> Option<(String, usize)> {
        let v = node.get(key)?;
        if v.is_null() {
            return None;
        }
        match v.as_str() {
            Some(s) => Some((s.to_string(), v.line)),
            None => {
                self.err(
                    v.line,
                    format!("{what}: `{key}` must be a string, found {}", v.kind()),
                );
                None
            }
        }
    }

    fn req_str(&mut self, node: &Node, key: &str, what: &str) -> Option<(String, usize)> {
        let v = self.opt_str(node, key, what);
        if v.is_none() && node.get(key).is_none_or(Node::is_null) {
            self.err(node.line, format!("{what}: missing required field `{key}`"));
        }
        v
    }

    /// A string or a list of strings.
    fn strings(&mut self, node: &Node, key: &str, what: &str) -> Vec<(String, usize)> {
        let Some(v) = node.get(key) else {
            return Vec::new();
        };
        if let Some(s) = v.as_str() {
            return vec![(s.to_string(), v.line)];
        }
        if v.is_null() {
            return Vec::new();
        }
        let Some(items) = v.as_seq() else {
            self.err(
                v.line,
                format!(
                    "{what}: `{key}` must be a string or a list of strings, found {}",
                    v.kind()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items {
            match item.as_str() {
                Some(s) => out.push((s.to_string(), item.line)),
                None => self.err(
                    item.line,
                    format!(
                        "{what}: `{key}` entries must be strings, found {}",
                        item.kind()
                    ),
                ),
            }
        }
        out
    }

    fn opt_date(&mut self, node: &Node, key: &str, what: &str) -> Option<(Timestamp, usize)> {
        let (s, line) = self.opt_str(node, key, what)?;
        match parse_date(&s) {
            Some(t) => Some((t, line)),
            None => {
                self.err(
                    line,
                    format!(
                        "{what}: `{key}` value `{s}` is not a date (use YYYY-MM-DD or RFC 3339 like 2026-03-02T10:00:00Z)"
                    ),
                );
                None
            }
        }
    }

    fn section<'n>(&mut self, root: &'n Node, key: &str) -> &'n [Node] {
        match root.get(key) {
            None => &[],
            Some(n) if n.is_null() => &[],
            Some(n) => match n.as_seq() {
                Some(items) => items,
                None => {
                    self.err(
                        n.line,
                        format!("`{key}` must be a list, found {}", n.kind()),
                    );
                    &[]
                }
            },
        }
    }

    fn id(
        &mut self,
        node: &Node,
        kind: &str,
        section: &str,
        index: usize,
    ) -> Option<(String, usize)> {
        let what = label(kind, section, index, None);
        let (id, line) = self.req_str(node, "id", &what)?;
        if !is_valid_id(&id) {
            self.err(
                line,
                format!("{what}: id `{id}` must be non-empty letters, digits, `-`, `_`, `.`, `:` or `/`"),
            );
        }
        Some((id, line))
    }

    fn registry(&mut self, root: &Node) -> Registry {
        if root.is_null() {
            return Registry::default();
        }
        if !self.fields(
            root,
            "registry",
            &["version", "teams", "apis", "applications", "keys"],
        ) {
            return Registry::default();
        }
        if let Some((v, line)) = self.opt_str(root, "version", "registry") {
            if v != "1" {
                self.err(
                    line,
                    format!("unsupported registry version `{v}` (expected 1)"),
                );
            }
        }
        let teams: Vec<Team> = self
            .section(root, "teams")
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.team(n, i))
            .collect();
        let apis: Vec<Api> = self
            .section(root, "apis")
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.api(n, i))
            .collect();
        let applications: Vec<Application> = self
            .section(root, "applications")
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.application(n, i))
            .collect();
        let keys: Vec<Key> = self
            .section(root, "keys")
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.key(n, i))
            .collect();
        let mut reg = Registry {
            teams,
            apis,
            applications,
            keys,
        };
        self.cross_check(&mut reg);
        reg
    }

    fn team(&mut self, n: &Node, i: usize) -> Option<Team> {
        let what = label("team", "teams", i, n.get("id").and_then(Node::as_str));
        if !self.fields(
            n,
            &what,
            &["id", "name", "line_of_business", "alert_contact"],
        ) {
            return None;
        }
        let (id, _) = self.id(n, "team", "teams", i)?;
        let name = self
            .opt_str(n, "name", &what)
            .map(|v| v.0)
            .unwrap_or_else(|| id.clone());
        Some(Team {
            name,
            line_of_business: self
                .opt_str(n, "line_of_business", &what)
                .map(|v| v.0)
                .unwrap_or_default(),
            alert_contact: self
                .opt_str(n, "alert_contact", &what)
                .map(|v| v.0)
                .unwrap_or_default(),
            id,
            line: n.line,
        })
    }

    fn api(&mut self, n: &Node, i: usize) -> Option<Api> {
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
        let matcher = match n.get("match") {
            Some(m) if !m.is_null() => self.api_match(m, &what),
            _ => {
                self.err(
                    n.line,
                    format!("{what}: missing required field `match` (hosts, ports, base_path, server_comm or server_cgroup)"),
                );
                ApiMatch::default()
            }
        };
        let auth = self.auth(n.get("auth"), &what);
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
                match super::import_openapi::read_spec(&path) {
                    Ok(spec) => {
                        for text in &spec.routes {
                            match RouteTemplate::parse(text) {
                                Ok(r) => {
                                    let k = (r.method.clone(), r.path.clone());
                                    if let std::collections::hash_map::Entry::Vacant(e) = route_lines.entry(k) {
                                        e.insert(line);
                                        routes.push(r);
                                    }
                                }
                                Err(e) => self.err(
                                    line,
                                    format!("{what}: OpenAPI file {file}: unparsable path `{text}`: {e}"),
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
            matcher,
            auth,
            routes,
            openapi,
            max_inferred_routes,
            line: n.line,
        })
    }

    fn api_match(&mut self, m: &Node, api: &str) -> ApiMatch {
        let what = format!("{api} match");
        if !self.fields(
            m,
            &what,
            &[
                "hosts",
                "ports",
                "base_path",
                "server_comm",
                "server_cgroup",
            ],
        ) {
            return ApiMatch::default();
        }
        let mut out = ApiMatch::default();
        for (h, line) in self.strings(m, "hosts", &what) {
            if h.is_empty() || h.contains(['/', ' ']) {
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
            if !b.starts_with('/') || b.contains(['?', '#', '*', '{']) {
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
        let given = [
            "hosts",
            "ports",
            "base_path",
            "server_comm",
            "server_cgroup",
        ]
        .iter()
        .any(|k| m.get(k).is_some_and(|v| !v.is_null()));
        if !given {
            self.err(
                m.line,
                format!("{what}: no criteria; give at least one of hosts, ports, base_path, server_comm, server_cgroup"),
            );
        }
        out
    }

    fn auth(&mut self, node: Option<&Node>, api: &str) -> Auth {
        let what = format!("{api} auth");
        let Some(node) = node.filter(|n| !n.is_null()) else {
            return Auth::default();
        };
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
            if h.is_empty()
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
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

    fn application(&mut self, n: &Node, i: usize) -> Option<Application> {
        let what = label(
            "application",
            "applications",
            i,
            n.get("id").and_then(Node::as_str),
        );
        if !self.fields(
            n,
            &what,
            &[
                "id",
                "name",
                "team",
                "line_of_business",
                "created_by",
                "created_at",
                "predecessor",
                "workload",
            ],
        ) {
            return None;
        }
        let id = self.id(n, "application", "applications", i).map(|v| v.0);
        let team = self.req_str(n, "team", &what).map(|v| v.0);
        let name = self.opt_str(n, "name", &what).map(|v| v.0);
        let lob = self
            .opt_str(n, "line_of_business", &what)
            .map(|v| v.0)
            .unwrap_or_default();
        let created_by = self
            .opt_str(n, "created_by", &what)
            .map(|v| v.0)
            .unwrap_or_default();
        let created_at = self.opt_date(n, "created_at", &what).map(|v| v.0);
        let predecessor = self.opt_str(n, "predecessor", &what).map(|v| v.0);
        let mut workload = Vec::new();
        if let Some(w) = n.get("workload").filter(|w| !w.is_null()) {
            let sels: Vec<&Node> = match w.as_seq() {
                Some(items) => items.iter().collect(),
                None => vec![w],
            };
            for s in sels {
                let sw = format!("{what} workload selector");
                if !self.fields(s, &sw, &["comm", "cgroup"]) {
                    continue;
                }
                let comm = self.opt_str(s, "comm", &sw).map(|v| Glob::new(&v.0, false));
                let cgroup = self.opt_str(s, "cgroup", &sw).map(|v| Glob::path(&v.0));
                if comm.is_none() && cgroup.is_none() {
                    self.err(s.line, format!("{sw}: give `comm` and/or `cgroup`"));
                    continue;
                }
                workload.push(WorkloadSelector {
                    comm,
                    cgroup,
                    line: s.line,
                });
            }
        }
        let id = id?;
        Some(Application {
            name: name.unwrap_or_else(|| id.clone()),
            id,
            team: team?,
            line_of_business: lob,
            created_by,
            created_at,
            predecessor,
            workload,
            line: n.line,
        })
    }

    fn window(&mut self, n: &Node, what: &str, require_grant: bool) -> Window {
        let granted_by = self.opt_str(n, "granted_by", what);
        let granted_at = self.opt_date(n, "granted_at", what);
        let expires_at = self.opt_date(n, "expires_at", what);
        let revoked_at = self.opt_date(n, "revoked_at", what);
        let revoked_by = self.opt_str(n, "revoked_by", what);
        if require_grant {
            if granted_by.is_none() && n.get("granted_by").is_none_or(Node::is_null) {
                self.err(
                    n.line,
                    format!("{what}: missing required field `granted_by`"),
                );
            }
            if granted_at.is_none() && n.get("granted_at").is_none_or(Node::is_null) {
                self.err(
                    n.line,
                    format!("{what}: missing required field `granted_at`"),
                );
            }
        }
        if let (Some((g, _)), Some((e, line))) = (granted_at, expires_at) {
            if e <= g {
                self.err(
                    line,
                    format!(
                        "{what}: dates out of order: expires_at {} is not after granted_at {}",
                        show(e),
                        show(g)
                    ),
                );
            }
        }
        if let (Some((g, _)), Some((r, line))) = (granted_at, revoked_at) {
            if r < g {
                self.err(
                    line,
                    format!(
                        "{what}: dates out of order: revoked_at {} is before granted_at {}",
                        show(r),
                        show(g)
                    ),
                );
            }
        }
        match (&revoked_at, &revoked_by) {
            (Some((_, line)), None) => self.err(
                *line,
                format!("{what}: `revoked_at` needs `revoked_by` (who revoked it)"),
            ),
            (None, Some((_, line))) => {
                self.err(*line, format!("{what}: `revoked_by` without `revoked_at`"))
            }
            _ => {}
        }
        Window {
            granted_by: granted_by.map(|v| v.0).unwrap_or_default(),
            granted_at: granted_at.map(|v| v.0),
            expires_at: expires_at.map(|v| v.0),
            revoked_at: revoked_at.map(|v| v.0),
            revoked_by: revoked_by.map(|v| v.0).unwrap_or_default(),
        }
    }

    fn key(&mut self, n: &Node, i: usize) -> Option<Key> {
        let what = label("key", "keys", i, n.get("id").and_then(Node::as_str));
        if !self.fields(
            n,
            &what,
            &[
                "id",
                "application",
                "fingerprint",
                "key_env",
                "key_file",
                "suffix",
                "granted_by",
                "granted_at",
                "expires_at",
                "revoked_at",
                "revoked_by",
                "apis",
                "grants",
            ],
        ) {
            return None;
        }
        let id = self.id(n, "key", "keys", i).map(|v| v.0);
        let application = self.req_str(n, "application", &what).map(|v| v.0);
        let fp = self.opt_str(n, "fingerprint", &what);
        let env = self.opt_str(n, "key_env", &what);
        let file = self.opt_str(n, "key_file", &what);
        let mut suffix = self
            .opt_str(n, "suffix", &what)
            .map(|v| v.0)
            .unwrap_or_default();
        let given = fp.is_some() as u8 + env.is_some() as u8 + file.is_some() as u8;
        if given != 1 {
            self.err(
                n.line,
                format!("{what}: give exactly one of `fingerprint`, `key_env` or `key_file` (found {given})"),
            );
        }
        let (fingerprint, source) = if let Some((f, line)) = fp {
            if parse_fingerprint(&f).is_none() {
                self.err(
                    line,
                    format!("{what}: fingerprint must be 64 hex characters (see `observer registry fingerprint`), found {} characters", f.len()),
                );
            }
            (f.to_ascii_lowercase(), KeySource::Fingerprint)
        } else if let Some((var, line)) = env {
            match std::env::var(&var) {
                Ok(raw) if !raw.trim().is_empty() => {
                    let raw = raw.trim();
                    if suffix.is_empty() {
                        suffix = key_suffix(raw).to_string();
                    }
                    (
                        self.secret.fingerprint_hex(raw.as_bytes()),
                        KeySource::Env(var),
                    )
                }
                _ => {
                    self.err(
                        line,
                        format!("{what}: environment variable `{var}` is not set or empty"),
                    );
                    (String::new(), KeySource::Env(var))
                }
            }
        } else if let Some((f, line)) = file {
            let path = self.base_dir.join(&f);
            self.dependencies.push(path.clone());
            match std::fs::read_to_string(&path) {
                Ok(raw) if !raw.trim().is_empty() => {
                    let raw = raw.trim();
                    if suffix.is_empty() {
                        suffix = key_suffix(raw).to_string();
                    }
                    (
                        self.secret.fingerprint_hex(raw.as_bytes()),
                        KeySource::File(path),
                    )
                }
                Ok(_) => {
                    self.err(
                        line,
                        format!("{what}: key file {} is empty", path.display()),
                    );
                    (String::new(), KeySource::File(path))
                }
                Err(e) => {
                    self.err(
                        line,
                        format!("{what}: cannot read key file {}: {e}", path.display()),
                    );
                    (String::new(), KeySource::File(path))
                }
            }
        } else {
            (String::new(), KeySource::Fingerprint)
        };
        let window = self.window(n, &what, false);
        let mut grants = Vec::new();
        let short = self.strings(n, "apis", &what);
        if !short.is_empty() {
            if window.granted_by.is_empty() || window.granted_at.is_none() {
                self.err(
                    n.line,
                    format!("{what}: `apis` needs key-level `granted_by` and `granted_at` (every grant is dated), or use `grants` entries"),
                );
            }
            for (api, line) in short {
                grants.push(Grant {
                    api,
                    window: window.clone(),
                    note: String::new(),
                    line,
                });
            }
        }
        if let Some(list) = n.get("grants").filter(|g| !g.is_null()) {
            match list.as_seq() {
                Some(items) => {
                    for g in items {
                        let gw = format!("{what} grant");
                        if !self.fields(
                            g,
                            &gw,
                            &[
                                "api",
                                "granted_by",
                                "granted_at",
                                "expires_at",
                                "revoked_at",
                                "revoked_by",
                                "note",
                            ],
                        ) {
                            continue;
                        }
                        let api = self.req_str(g, "api", &gw);
                        let gw = match &api {
                            Some((a, _)) => format!("{what} grant of api `{a}`"),
                            None => gw,
                        };
                        let w = self.window(g, &gw, true);
                        let note = self
                            .opt_str(g, "note", &gw)
                            .map(|v| v.0)
                            .unwrap_or_default();
                        if let Some((api, _)) = api {
                            grants.push(Grant {
                                api,
                                window: w,
                                note,
                                line: g.line,
                            });
                        }
                    }
                }
                None => self.err(
                    list.line,
                    format!("{what}: `grants` must be a list, found {}", list.kind()),
                ),
            }
        }
        Some(Key {
            id: id?,
            application: application?,
            fingerprint,
            suffix,
            source,
            window,
            grants,
            line: n.line,
        })
    }

    fn cross_check(&mut self, reg: &mut Registry) {
        let mut teams: HashMap<String, usize> = HashMap::new();
        for t in &reg.teams {
            if let Some(first) = teams.get(&t.id) {
                self.err(
                    t.line,
                    format!(
                        "duplicate team id `{}` (first defined at line {first})",
                        t.id
                    ),
                );
            } else {
                teams.insert(t.id.clone(), t.line);
            }
        }
        let team_lob: HashMap<&str, &str> = reg
            .teams
            .iter()
            .map(|t| (t.id.as_str(), t.line_of_business.as_str()))
            .collect();

        let mut apis: HashMap<String, usize> = HashMap::new();
        for a in &mut reg.apis {
            if let Some(first) = apis.get(&a.id) {
                self.problems.push(Problem {
                    line: a.line,
                    message: format!(
                        "duplicate api id `{}` (first defined at line {first})",
                        a.id
                    ),
                });
            } else {
                apis.insert(a.id.clone(), a.line);
            }
            match team_lob.get(a.owner.as_str()) {
                None => self.problems.push(Problem {
                    line: a.line,
                    message: format!("api `{}`: owner `{}` is not a defined team", a.id, a.owner),
                }),
                Some(lob) if a.line_of_business.is_empty() => a.line_of_business = lob.to_string(),
                Some(_) => {}
            }
        }
        for (i, a) in reg.apis.iter().enumerate() {
            for b in &reg.apis[i + 1..] {
                if a.id != b.id {
                    if let Some(why) = overlap(&a.matcher, &b.matcher) {
                        self.err(
                            b.line,
                            format!(
                                "api `{}` has overlapping matchers with api `{}` (line {}): {why}; make one more specific (host, base_path, port or server workload)",
                                b.id, a.id, a.line
                            ),
                        );
                    }
                }
            }
        }

        let mut apps: HashMap<String, usize> = HashMap::new();
        for a in &mut reg.applications {
            if let Some(first) = apps.get(&a.id) {
                self.problems.push(Problem {
                    line: a.line,
                    message: format!(
                        "duplicate application id `{}` (first defined at line {first})",
                        a.id
                    ),
                });
            } else {
                apps.insert(a.id.clone(), a.line);
            }
            match team_lob.get(a.team.as_str()) {
                None => self.problems.push(Problem {
                    line: a.line,
                    message: format!(
                        "application `{}`: team `{}` is not a defined team",
                        a.id, a.team
                    ),
                }),
                Some(lob) if a.line_of_business.is_empty() => a.line_of_business = lob.to_string(),
                Some(_) => {}
            }
        }
        let pred: HashMap<&str, &str> = reg
            .applications
            .iter()
            .filter_map(|a| Some((a.id.as_str(), a.predecessor.as_deref()?)))
            .collect();
        for a in &reg.applications {
            let Some(p) = a.predecessor.as_deref() else {
                continue;
            };
            if p == a.id {
                self.err(
                    a.line,
                    format!("application `{}`: predecessor is itself", a.id),
                );
            } else if !apps.contains_key(p) {
                self.err(
                    a.line,
                    format!(
                        "application `{}`: predecessor `{p}` is not a defined application",
                        a.id
                    ),
                );
            } else {
                // Walk the chain; a loop back to this app is an error.
                let mut cur = p;
                for _ in 0..pred.len() {
                    match pred.get(cur) {
                        Some(&next) if next == a.id => {
                            self.err(
                                a.line,
                                format!(
                                    "application `{}`: predecessor chain loops back to it",
                                    a.id
                                ),
                            );
                            break;
                        }
                        Some(&next) => cur = next,
                        None => break,
                    }
                }
            }
        }
        let mut selectors: Vec<(&WorkloadSelector, &str)> = Vec::new();
        for a in &reg.applications {
            for s in &a.workload {
                if let Some((_, other)) = selectors
                    .iter()
                    .find(|(o, _)| o.comm == s.comm && o.cgroup == s.cgroup)
                {
                    self.problems.push(Problem {
                        line: s.line,
                        message: format!(
                            "application `{}`: workload selector is identical to one of application `{other}`",
                            a.id
                        ),
                    });
                } else {
                    selectors.push((s, a.id.as_str()));
                }
            }
        }

        let mut keys: HashMap<&str, usize> = HashMap::new();
        let mut fps: HashMap<&str, (&str, usize)> = HashMap::new();
        for k in &reg.keys {
            if let Some(first) = keys.insert(k.id.as_str(), k.line) {
                self.problems.push(Problem {
                    line: k.line,
                    message: format!(
                        "duplicate key id `{}` (first defined at line {first})",
                        k.id
                    ),
                });
            }
            if !k.fingerprint.is_empty() {
                if let Some((other, line)) =
                    fps.insert(k.fingerprint.as_str(), (k.id.as_str(), k.line))
                {
                    self.problems.push(Problem {
                        line: k.line,
                        message: format!("key `{}`: same key as key `{other}` (line {line})", k.id),
                    });
                }
            }
            if !apps.contains_key(&k.application) {
                self.problems.push(Problem {
                    line: k.line,
                    message: format!(
                        "key `{}`: application `{}` is not a defined application",
                        k.id, k.application
                    ),
                });
            }
            let mut last: HashMap<&str, (Timestamp, usize)> = HashMap::new();
            for g in &k.grants {
                if !apis.contains_key(&g.api) {
                    self.problems.push(Problem {
                        line: g.line,
                        message: format!(
                            "key `{}`: granted api `{}` is not a defined api",
                            k.id, g.api
                        ),
                    });
                }
                if let Some(at) = g.window.granted_at {
                    if let Some((prev, line)) = last.get(g.api.as_str()) {
                        if at < *prev {
                            self.problems.push(Problem {
                                line: g.line,
                                message: format!(
                                    "key `{}`: dates out of order: grant of api `{}` at {} is before the previous entry for that api (line {line}); list grant history chronologically",
                                    k.id,
                                    g.api,
                                    show(at)
                                ),
                            });
                        }
                    }
                    last.insert(g.api.as_str(), (at, g.line));
                }
            }
        }
    }
}

/// Why two API matchers are ambiguous (some request matches both with equal specificity), or None.
///
/// They are when they constrain the same kinds of criteria, share a base path (or have none), and every constrained
/// kind has a common value: a port, process/cgroup patterns that may overlap, or host patterns of the same kind
/// (literal vs. wildcard) that may overlap. A more specific matcher (a longer base path, a literal host over a
/// wildcard, an extra criterion) wins at match time and is not reported.
pub fn overlap(a: &ApiMatch, b: &ApiMatch) -> Option<String> {
    let kinds = |m: &ApiMatch| {
        [
            m.hosts.is_empty(),
            m.ports.is_empty(),
            m.base_paths.is_empty(),
            m.server_comm.is_empty(),
            m.server_cgroup.is_empty(),
        ]
    };
    if kinds(a) != kinds(b) {
        return None;
    }
    let mut why = Vec::new();
    if !a.hosts.is_empty() {
        let h = a.hosts.iter().find_map(|x| {
            b.hosts
                .iter()
                .find(|y| x.is_literal() == y.is_literal() && x.may_overlap(y))
                .map(|y| (x, y))
        })?;
        why.push(if h.0 == h.1 {
            format!("host {}", h.0.as_str())
        } else {
            format!("hosts {} and {}", h.0.as_str(), h.1.as_str())
        });
    }
    if !a.ports.is_empty() {
        let p = a.ports.iter().find(|p| b.ports.contains(p))?;
        why.push(format!("port {p}"));
    }
    if !a.base_paths.is_empty() {
        let p = a.base_paths.iter().find(|p| b.base_paths.contains(p))?;
        why.push(format!("base_path {p}"));
    }
    for (x, y, name) in [
        (&a.server_comm, &b.server_comm, "server_comm"),
        (&a.server_cgroup, &b.server_cgroup, "server_cgroup"),
    ] {
        if !x.is_empty() {
            let g = x.iter().find(|g| y.iter().any(|h| g.may_overlap(h)))?;
            why.push(format!("{name} {}", g.as_str()));
        }
    }
    Some(format!("both match {}", why.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::KeyState;

    fn secret() -> KeySecret {
        KeySecret::from_bytes(b"test-secret-test-secret")
    }

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    fn load(text: &str) -> Result<Loaded, Vec<Problem>> {
        load_str(text, &examples(), &secret())
    }

    fn problems(text: &str) -> Vec<Problem> {
        match load(text) {
            Ok(_) => panic!("registry should be invalid:\n{text}"),
            Err(p) => p,
        }
    }

    /// Asserts that a problem on `line` contains `want`.
    fn assert_problem(text: &str, line: usize, want: &str) {
        let ps = problems(text);
        assert!(
            ps.iter()
                .any(|p| p.line == line && p.message.contains(want)),
            "expected a problem at line {line} containing {want:?}, got:\n{}",
            Problems {
                path: Path::new("t.yaml"),
                problems: &ps
            }
        );
    }

    const FP: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    const BASE: &str = "\
teams:
  - id: t
    line_of_business: Retail
apis:
  - id: a
    owner: t
    match: {hosts: a.example.com}
applications:
  - id: app
    team: t
";

    #[test]
    fn example_registry_is_valid() {
        let path = examples().join("registry.yaml");
        let secret = KeySecret::load_or_create(&examples().join("example-key-secret"))
            .expect("example secret loads");
        let loaded = load_file(&path, &secret)
            .unwrap_or_else(|e| panic!("examples/registry.yaml must be valid: {e}"));
        let r = &loaded.registry;
        assert_eq!(
            (
                r.teams.len(),
                r.apis.len(),
                r.applications.len(),
                r.keys.len()
            ),
            (4, 4, 4, 4)
        );
        let pay = &r.apis[0];
        assert_eq!(
            pay.line_of_business, "Retail",
            "inherited from the owner team"
        );
        assert!(
            pay.routes.iter().any(|t| t.path == "/v1/payments/search"),
            "routes from the OpenAPI file are added"
        );
        assert_eq!(
            loaded.dependencies,
            vec![examples().join("payments-openapi.yaml")]
        );
        let pp = r
            .applications
            .iter()
            .find(|a| a.id == "partner-portal")
            .expect("partner-portal");
        assert_eq!(
            pp.line_of_business, "Partnerships",
            "own LoB overrides the team's"
        );
        let legacy = r
            .keys
            .iter()
            .find(|k| k.id == "legacy-checkout-prod")
            .expect("legacy key");
        assert_eq!(legacy.grants.len(), 1, "apis shorthand becomes a grant");
        assert_eq!(
            legacy.state(
                Some("payments-api"),
                parse_date("2026-04-01").expect("date")
            ),
            KeyState::Revoked
        );
        assert_eq!(
            secret.fingerprint_hex(b"sk_live_mobile_checkout_7Hq2x93f9a"),
            r.keys[0].fingerprint,
            "example fingerprint matches its documented example key"
        );
    }

    #[test]
    fn empty_registry_is_valid() {
        let l = load("").expect("empty file is an empty registry");
        assert_eq!(l.registry, Registry::default());
        let l = load("version: 1\nteams: []\n").expect("empty sections are fine");
        assert!(l.registry.apis.is_empty());
        load(BASE).expect("base fixture is valid");
    }

    #[test]
    fn syntax_error_has_line() {
        assert_problem("teams:\n  - id: t\n  - id: [x\n", 4, "YAML syntax error");
    }

    #[test]
    fn structure_problems() {
        assert_problem("version: 2\n", 1, "unsupported registry version `2`");
        assert_problem("teams: {}\n", 1, "`teams` must be a list");
        assert_problem("colors: []\n", 1, "unknown field `colors`");
        assert_problem(
            "teams:\n  - id: t\n    id: u\n",
            3,
            "duplicate field `id` (first at line 2)",
        );
        assert_problem(
            "teams:\n  - name: x\n",
            2,
            "teams[0]: missing required field `id`",
        );
        assert_problem("teams:\n  - id: \"a b\"\n", 2, "id `a b` must be");
        assert_problem("teams:\n  - just-a-string\n", 2, "expected a mapping");
        assert_problem("teams:\n  - id: [x]\n", 2, "`id` must be a string");
    }

    #[test]
    fn duplicate_ids() {
        assert_problem(
            "teams:\n  - id: t\n  - id: t\n",
            3,
            "duplicate team id `t` (first defined at line 2)",
        );
        let text = "teams: [{id: t}]\napis:\n  - id: a\n    owner: t\n    match: {hosts: a.com}\n  - id: a\n    owner: t\n    match: {hosts: b.com}\n";
        assert_problem(text, 6, "duplicate api id `a` (first defined at line 3)");
        let text = format!("{BASE}  - id: app\n    team: t\n");
        assert_problem(
            &text,
            11,
            "duplicate application id `app` (first defined at line 9)",
        );
        let text = format!(
            "{BASE}keys:\n  - id: k\n    application: app\n    fingerprint: {FP}\n  - id: k\n    application: app\n    fingerprint: {}\n",
            "b".repeat(64)
        );
        assert_problem(&text, 15, "duplicate key id `k` (first defined at line 12)");
        let text = format!(
            "{BASE}keys:\n  - id: k\n    application: app\n    fingerprint: {FP}\n  - id: k2\n    application: app\n    fingerprint: {}\n",
            FP.to_uppercase()
        );
        assert_problem(&text, 15, "same key as key `k` (line 12)");
    }

    #[test]
    fn unknown_references() {
        assert_problem(
            "apis:\n  - id: a\n    owner: ghost\n    match: {ports: 80}\n",
            2,
            "owner `ghost` is not a defined team",
        );
        assert_problem(
            "applications:\n  - id: x\n    team: ghost\n",
            2,
            "team `ghost` is not a defined team",
        );
        let text =
            format!("{BASE}keys:\n  - id: k\n    application: ghost\n    fingerprint: {FP}\n");
        assert_problem(
            &text,
            12,
            "application `ghost` is not a defined application",
        );
        let text = format!(
            "{BASE}keys:\n  - id: k\n    application: app\n    fingerprint: {FP}\n    grants:\n      - api: ghost\n        granted_by: me\n        granted_at: 2026-01-01\n"
        );
        assert_problem(&text, 16, "granted api `ghost` is not a defined api");
        let text = format!("{BASE}    predecessor: ghost\n");
        assert_problem(&text, 9, "predecessor `ghost` is not a defined application");
        let text = format!("{BASE}    predecessor: app\n");
        assert_problem(&text, 9, "predecessor is itself");
        let text =
            format!("{BASE}    predecessor: b\n  - id: b\n    team: t\n    predecessor: app\n");
        assert_problem(&text, 9, "predecessor chain loops");
    }

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
    fn overlapping_matchers() {
        let two = |a: &str, b: &str| {
            format!("teams: [{{id: t}}]\napis:\n  - id: a\n    owner: t\n    match: {a}\n  - id: b\n    owner: t\n    match: {b}\n")
        };
        let text = two("{hosts: [x.com, y.com]}", "{hosts: Y.COM}");
        assert_problem(
            &text,
            6,
            "api `b` has overlapping matchers with api `a` (line 3): both match host y.com",
        );
        assert_problem(
            &two(
                "{hosts: x.com, base_path: /v1}",
                "{hosts: x.com, base_path: /v1/}",
            ),
            6,
            "both match host x.com, base_path /v1",
        );
        assert_problem(
            &two("{hosts: \"*.x.com\"}", "{hosts: \"*.X.com\"}"),
            6,
            "overlapping matchers",
        );
        assert_problem(&two("{ports: [80, 8080]}", "{ports: 8080}"), 6, "port 8080");
        assert_problem(
            &two("{server_comm: \"pay*\"}", "{server_comm: payments}"),
            6,
            "server_comm",
        );
        for (a, b) in [
            (
                "{hosts: x.com, base_path: /v1/a}",
                "{hosts: x.com, base_path: /v1/b}",
            ),
            (
                "{hosts: x.com, base_path: /v1}",
                "{hosts: x.com, base_path: /v1/pay}",
            ),
            ("{hosts: x.com}", "{hosts: x.com, ports: 80}"),
            ("{hosts: \"*.x.com\"}", "{hosts: a.x.com}"),
            ("{hosts: x.com}", "{hosts: y.com}"),
            ("{ports: 80}", "{ports: 81}"),
        ] {
            load(&two(a, b)).unwrap_or_else(|p| panic!("{a} vs {b} should not overlap: {p:?}"));
        }
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
        assert_problem(
            &api("{type: bearer, headers: X-Key}"),
            6,
            "only apply to type api_key",
        );
        assert_problem(&api("{headers: \"X Key\"}"), 6, "not a valid header name");
        let ok = load(&api("{query: [key, api_key]}")).expect("query-only api_key auth is valid");
        let auth = &ok.registry.apis[0].auth;
        assert_eq!(auth.kind, AuthKind::ApiKey);
        assert_eq!(
            auth.headers,
            vec!["X-Api-Key", "Api-Key"],
            "default headers kept"
        );
        assert_eq!(auth.query, vec!["key", "api_key"]);
        assert_eq!(
            load(&api("basic")).expect("valid").registry.apis[0]
                .auth
                .kind,
            AuthKind::Basic
        );
    }

    #[test]
    fn workload_problems() {
        let text = format!("{BASE}    workload: {{}}\n");
        assert_problem(&text, 11, "give `comm` and/or `cgroup`");
        let text = format!("{BASE}    workload: {{pid: 1}}\n");
        assert_problem(&text, 11, "unknown field `pid`");
        let text = format!("{BASE}    workload: {{comm: x}}\n  - id: b\n    team: t\n    workload:\n      - comm: x\n");
        assert_problem(&text, 15, "identical to one of application `app`");
    }

    #[test]
    fn key_problems() {
        let key = |body: &str| format!("{BASE}keys:\n  - id: k\n    application: app\n{body}");
        assert_problem(
            &key(""),
            12,
            "exactly one of `fingerprint`, `key_env` or `key_file` (found 0)",
        );
        assert_problem(
            &key(&format!("    fingerprint: {FP}\n    key_env: X\n")),
            12,
            "(found 2)",
        );
        assert_problem(
            &key("    fingerprint: xyz\n"),
            14,
            "fingerprint must be 64 hex characters",
        );
        assert_problem(
            &key("    key_env: OBSERVER_TEST_SURELY_UNSET_VAR\n"),
            14,
            "environment variable `OBSERVER_TEST_SURELY_UNSET_VAR` is not set",
        );
        assert_problem(
            &key("    key_file: no-such-key-file\n"),
            14,
            "cannot read key file",
        );
        assert_problem(
            &key(&format!("    fingerprint: {FP}\n    apis: [a]\n")),
            12,
            "`apis` needs key-level `granted_by` and `granted_at`",
        );
        assert_problem(
            &key(&format!(
                "    fingerprint: {FP}\n    grants:\n      - api: a\n"
            )),
            16,
            "missing required field `granted_by`",
        );
        assert_problem(
            &key(&format!("    fingerprint: {FP}\n    grants:\n      - api: a\n        granted_by: me\n        granted_at: someday\n")),
            18,
            "`granted_at` value `someday` is not a date",
        );
        assert_problem(
            &key(&format!("    fingerprint: {FP}\n    grants: {{}}\n")),
            15,
            "`grants` must be a list",
        );
    }

    #[test]
    fn date_order_problems() {
        let key = |body: &str| {
            format!("{BASE}keys:\n  - id: k\n    application: app\n    fingerprint: {FP}\n{body}")
        };
        assert_problem(
            &key("    granted_by: me\n    granted_at: 2026-03-02\n    expires_at: 2026-03-02\n"),
            17,
            "dates out of order: expires_at 2026-03-02 is not after granted_at 2026-03-02",
        );
        assert_problem(
            &key("    granted_by: me\n    granted_at: 2026-03-02\n    revoked_at: 2026-03-01T23:59:59Z\n    revoked_by: x\n"),
            17,
            "revoked_at 2026-03-01T23:59:59.000000Z is before granted_at 2026-03-02",
        );
        assert_problem(
            &key("    revoked_at: 2026-03-01\n"),
            15,
            "`revoked_at` needs `revoked_by`",
        );
        assert_problem(
            &key("    revoked_by: x\n"),
            15,
            "`revoked_by` without `revoked_at`",
        );
        let grants = "    grants:\n      - api: a\n        granted_by: me\n        granted_at: 2026-05-01\n      - api: a\n        granted_by: me\n        granted_at: 2026-04-01\n";
        assert_problem(
            &key(grants),
            19,
            "grant of api `a` at 2026-04-01 is before the previous entry for that api (line 16)",
        );
    }

    #[test]
    fn key_env_and_file_are_fingerprinted() {
        let dir =
            std::env::temp_dir().join(format!("observer-load-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("k.txt"), "file-key-0123456789abcd\n").expect("write key file");
        std::env::set_var("OBSERVER_TEST_KEY_ENV_FP", "env-key-0123456789wxyz");
        let text = format!(
            "{BASE}keys:\n  - id: e\n    application: app\n    key_env: OBSERVER_TEST_KEY_ENV_FP\n  - id: f\n    application: app\n    key_file: k.txt\n"
        );
        let l = load_str(&text, &dir, &secret())
            .unwrap_or_else(|p| panic!("env/file keys valid: {p:?}"));
        let keys = &l.registry.keys;
        assert_eq!(
            keys[0].fingerprint,
            secret().fingerprint_hex(b"env-key-0123456789wxyz")
        );
        assert_eq!(keys[0].suffix, "wxyz");
        assert_eq!(
            keys[1].fingerprint,
            secret().fingerprint_hex(b"file-key-0123456789abcd"),
            "file content trimmed"
        );
        assert_eq!(keys[1].suffix, "abcd");
        assert_eq!(
            l.dependencies,
            vec![dir.join("k.txt")],
            "key file is watched"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn every_problem_is_reported_in_line_order() {
        let text = "teams:\n  - id: t\n  - id: t\napis:\n  - id: a\n    owner: x\n    match: {ports: 99999}\n";
        let ps = problems(text);
        assert!(ps.len() >= 3, "all problems collected: {ps:?}");
        assert!(
            ps.windows(2).all(|w| w[0].line <= w[1].line),
            "sorted by line: {ps:?}"
        );
        let err = RegistryError::Invalid {
            path: PathBuf::from("reg.yaml"),
            problems: ps,
        };
        let msg = err.to_string();
        assert!(
            msg.contains("reg.yaml:3: duplicate team id"),
            "FILE:LINE: message format: {msg}"
        );
        assert!(msg.contains("reg.yaml:7: "), "{msg}");
    }
}
