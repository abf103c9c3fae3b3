//! Importing a Kong declarative config (nested, or the flat shape `kong config db_export` and decK dumps write, with
//! references by id or name): each Kong route becomes one matcher of its service's API (its own hosts, paths and
//! methods; regex paths as `path_regex`; simple expression routes parsed), consumers become applications,
//! key-auth / basic-auth credentials key fingerprints (or `key_env` for environment placeholders) and ACL groups
//! grants. Output is registry YAML to merge; what cannot be carried over exactly is a note with the config's line.
mod render;

use std::collections::HashSet;

use super::fingerprint::KeySecret;
use super::import_openapi::{slug, split_url};
use super::load::{is_header_name, Problem};
use super::yaml::{self, Node};
use render::{render, render_keys};

/// Top-level keys of a Kong declarative config (any one makes a file one).
const KONG_KEYS: &[&str] = &[
    "_format_version",
    "services",
    "routes",
    "consumers",
    "plugins",
    "keyauth_credentials",
    "basicauth_credentials",
    "acls",
    "upstreams",
];

/// One Kong route as a registry matcher.
#[derive(Debug, Clone, Default, PartialEq)]
struct Matcher {
    hosts: Vec<String>,
    paths: Vec<String>,
    regex: Vec<String>,
    methods: Vec<String>,
    ports: Vec<u16>,
    /// The route's line in the Kong config (the service's for an upstream matcher).
    line: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Service {
    /// Kong's id and name, for references.
    refs: Vec<String>,
    id: String,
    name: String,
    line: usize,
    matchers: Vec<Matcher>,
    /// No route names hosts or paths: the one matcher is the upstream's host and port.
    by_upstream: bool,
    upstream_host: Option<String>,
    upstream_port: Option<u16>,
    key_auth: Option<KeyAuth>,
    basic_auth: bool,
    acl_allow: Option<Vec<String>>,
    acl_deny: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct KeyAuth {
    key_names: Vec<String>,
    in_query: bool,
}

/// A credential's value as written: a literal, an environment variable, or a vault reference.
#[derive(Debug, Clone, PartialEq)]
enum Secret {
    Literal(String),
    Env(String),
    Vault(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Credential {
    basic: bool,
    secret: Secret,
    line: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Consumer {
    refs: Vec<String>,
    id: String,
    username: String,
    line: usize,
    credentials: Vec<Credential>,
    groups: Vec<String>,
}

fn s<'a>(n: &'a Node, key: &str) -> Option<&'a str> {
    n.get(key).and_then(Node::as_str)
}

fn list<'a>(n: &'a Node, key: &str) -> &'a [Node] {
    n.get(key).and_then(Node::as_seq).unwrap_or(&[])
}

fn str_list(n: &Node, key: &str) -> Vec<String> {
    list(n, key)
        .iter()
        .filter_map(Node::as_str)
        .map(str::to_string)
        .collect()
}

/// A reference to a service/consumer/route: an id or name string, or `{id|name|username: ...}`.
fn reference(n: &Node, key: &str) -> Option<String> {
    let v = n.get(key)?;
    v.as_str()
        .or_else(|| s(v, "id"))
        .or_else(|| s(v, "name"))
        .or_else(|| s(v, "username"))
        .map(str::to_string)
}

/// The names an entity can be referred to by.
fn refs(n: &Node, keys: &[&str]) -> Vec<String> {
    keys.iter()
        .filter_map(|k| s(n, k))
        .map(str::to_string)
        .collect()
}

/// Classifies a credential: `$VAR`, `${VAR}` and decK's `${{ env "VAR" }}` are environment variables, Kong's
/// `{vault://env/name}` the variable `NAME`, other `{vault://...}` references stay references.
fn classify(raw: &str) -> Secret {
    let is_var = |v: &str| {
        !v.is_empty()
            && !v.starts_with(|c: char| c.is_ascii_digit())
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let t = raw.trim();
    if let Some(inner) = t
        .strip_prefix("${{")
        .and_then(|r| r.strip_suffix("}}"))
        .map(str::trim)
        .and_then(|r| r.strip_prefix("env"))
    {
        let v = inner.trim().trim_matches('"');
        if is_var(v) {
            return Secret::Env(v.to_string());
        }
    }
    if let Some(v) = t.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        if is_var(v) {
            return Secret::Env(v.to_string());
        }
    }
    if let Some(v) = t.strip_prefix('$') {
        if is_var(v) {
            return Secret::Env(v.to_string());
        }
    }
    if let Some(r) = t
        .strip_prefix("{vault://")
        .and_then(|r| r.strip_suffix('}'))
    {
        if let Some(name) = r.strip_prefix("env/") {
            let var = name.split('/').next().unwrap_or(name).replace('-', "_");
            let var = var.to_ascii_uppercase();
            if is_var(&var) {
                return Secret::Env(var);
            }
        }
        return Secret::Vault(t.to_string());
    }
    Secret::Literal(raw.to_string())
}

/// Parses a simple Kong expression route (`http.host == "a" && http.path ^= "/x"`): `&&` of host, path and method
/// comparisons. Anything else is refused with the reason.
fn parse_expression(expr: &str) -> Result<Matcher, String> {
    if expr.contains("||") || expr.contains('(') || expr.contains('!') {
        return Err(
            "only `&&` of http.host, http.path and http.method comparisons is understood".into(),
        );
    }
    let mut m = Matcher::default();
    for clause in expr.split("&&") {
        let clause = clause.trim();
        let (field, rest) = clause
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("cannot read `{clause}`"))?;
        let (op, value) = rest
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("cannot read `{clause}`"))?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| {
                value
                    .strip_prefix("r#\"")
                    .and_then(|v| v.strip_suffix("\"#"))
            })
            .ok_or_else(|| format!("`{clause}`: expected a quoted value"))?;
        match (field, op) {
            ("http.host", "==") => m.hosts.push(value.to_ascii_lowercase()),
            ("http.path", "^=") => m.paths.push(value.to_string()),
            ("http.path", "==") => m.regex.push(format!("{}$", regex_escape(value))),
            ("http.path", "~") => m.regex.push(value.trim_start_matches('^').to_string()),
            ("http.method", "==") => m.methods.push(value.to_ascii_uppercase()),
            _ => return Err(format!("`{field} {op}` is not understood")),
        }
    }
    Ok(m)
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The import in progress: entities so far and the notes about them.
#[derive(Default)]
struct Importer {
    services: Vec<Service>,
    /// Kong route id/name -> service index, for plugins attached to a route.
    routes: Vec<(Vec<String>, usize)>,
    consumers: Vec<Consumer>,
    notes: Vec<Problem>,
}

impl Importer {
    fn note(&mut self, line: usize, message: impl Into<String>) {
        self.notes.push(Problem {
            line,
            message: message.into(),
        });
    }

    fn service(&self, name: &str) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.refs.iter().any(|r| r == name))
    }

    fn consumer(&self, name: &str) -> Option<usize> {
        self.consumers
            .iter()
            .position(|c| c.refs.iter().any(|r| r == name))
    }

    fn add_service(&mut self, n: &Node) {
        let name = s(n, "name")
            .or_else(|| s(n, "id"))
            .unwrap_or("service")
            .to_string();
        let mut svc = Service {
            refs: refs(n, &["id", "name"]),
            id: slug(&name),
            name,
            line: n.line,
            ..Default::default()
        };
        if let Some(url) = s(n, "url") {
            let (h, p, _) = split_url(url);
            svc.upstream_host = h;
            svc.upstream_port = p;
        } else {
            svc.upstream_host = s(n, "host").map(str::to_ascii_lowercase);
            svc.upstream_port = s(n, "port").and_then(|p| p.parse().ok());
        }
        self.services.push(svc);
        let i = self.services.len() - 1;
        for r in list(n, "routes") {
            self.add_route(i, r);
        }
        for p in list(n, "plugins") {
            self.apply_plugin(i, p);
        }
    }

    fn add_route(&mut self, svc: usize, r: &Node) {
        self.routes.push((refs(r, &["id", "name"]), svc));
        let what = format!(
            "route `{}`",
            s(r, "name").or_else(|| s(r, "id")).unwrap_or("(unnamed)")
        );
        if let Some(expr) = s(r, "expression") {
            match parse_expression(expr) {
                Ok(m) => self.services[svc]
                    .matchers
                    .push(Matcher { line: r.line, ..m }),
                Err(why) => self.note(
                    r.line,
                    format!("{what}: expression `{expr}` not imported: {why}"),
                ),
            }
            for p in list(r, "plugins") {
                self.apply_plugin(svc, p);
            }
            return;
        }
        for k in ["headers", "snis", "sources", "destinations"] {
            if r.get(k)
                .is_some_and(|v| !v.is_null() && v.as_seq().is_none_or(|l| !l.is_empty()))
            {
                self.note(
                    r.line,
                    format!(
                        "{what}: `{k}` criteria not carried over; the route matches more widely"
                    ),
                );
            }
        }
        let hosts: Vec<String> = str_list(r, "hosts")
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let methods: Vec<String> = str_list(r, "methods")
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        let mut prefix = Matcher {
            hosts: hosts.clone(),
            methods: methods.clone(),
            line: r.line,
            ..Default::default()
        };
        let mut regex = Matcher {
            hosts,
            methods,
            line: r.line,
            ..Default::default()
        };
        for p in str_list(r, "paths") {
            if let Some(re) = p.strip_prefix('~') {
                regex.regex.push(re.trim_start_matches('^').to_string());
            } else {
                let t = p.trim_end_matches('/');
                let t = if t.is_empty() {
                    "/".to_string()
                } else {
                    t.to_string()
                };
                if !prefix.paths.contains(&t) {
                    prefix.paths.push(t);
                }
            }
        }
        let has_regex = !regex.regex.is_empty();
        if !prefix.paths.is_empty() || !has_regex {
            if prefix.hosts.is_empty() && prefix.paths.is_empty() {
                self.note(
                    r.line,
                    format!(
                        "{what}: no hosts or paths; the API is matched by its upstream instead"
                    ),
                );
            } else {
                self.services[svc].matchers.push(prefix);
            }
        }
        if has_regex {
            self.services[svc].matchers.push(regex);
        }
        for p in list(r, "plugins") {
            self.apply_plugin(svc, p);
        }
    }

    fn apply_plugin(&mut self, svc: usize, p: &Node) {
        if s(p, "enabled") == Some("false") {
            return;
        }
        let config = p.get("config");
        let svc = &mut self.services[svc];
        match s(p, "name") {
            Some("key-auth") => {
                // Only names the registry takes as header names (found by the kong fuzz target: `X-A%pi-Key`).
                let mut names = config.map(|c| str_list(c, "key_names")).unwrap_or_default();
                let listed = !names.is_empty();
                names.retain(|n| is_header_name(n));
                if listed && names.is_empty() {
                    return;
                }
                svc.key_auth = Some(KeyAuth {
                    key_names: if names.is_empty() {
                        vec!["apikey".into()]
                    } else {
                        names
                    },
                    in_query: config.and_then(|c| s(c, "key_in_query")) != Some("false"),
                });
            }
            Some("basic-auth") => svc.basic_auth = true,
            Some("acl") => {
                if let Some(c) = config {
                    let mut allow = str_list(c, "allow");
                    allow.extend(str_list(c, "whitelist"));
                    if !allow.is_empty() {
                        svc.acl_allow.get_or_insert_with(Vec::new).extend(allow);
                    }
                    svc.acl_deny.extend(str_list(c, "deny"));
                    svc.acl_deny.extend(str_list(c, "blacklist"));
                }
            }
            _ => {}
        }
    }

    fn add_consumer(&mut self, n: &Node) {
        let username = s(n, "username")
            .or_else(|| s(n, "custom_id"))
            .or_else(|| s(n, "id"))
            .unwrap_or("consumer");
        self.consumers.push(Consumer {
            refs: refs(n, &["id", "username", "custom_id"]),
            id: slug(username),
            username: username.to_string(),
            line: n.line,
            ..Default::default()
        });
        let i = self.consumers.len() - 1;
        for k in list(n, "keyauth_credentials") {
            self.add_credential(i, k, false);
        }
        for k in list(n, "basicauth_credentials") {
            self.add_credential(i, k, true);
        }
        let groups = list(n, "acls")
            .iter()
            .filter_map(|a| s(a, "group"))
            .map(str::to_string);
        self.consumers[i].groups.extend(groups);
    }

    fn add_credential(&mut self, consumer: usize, k: &Node, basic: bool) {
        let Some(raw) = s(k, if basic { "username" } else { "key" }) else {
            self.note(k.line, "credential without a key or username skipped");
            return;
        };
        self.consumers[consumer].credentials.push(Credential {
            basic,
            secret: classify(raw),
            line: k.line,
        });
    }

    /// The consumer an entity at the top level refers to, noting a dangling reference.
    fn consumer_of(&mut self, n: &Node, what: &str) -> Option<usize> {
        let r = reference(n, "consumer");
        let i = r.as_deref().and_then(|r| self.consumer(r));
        if i.is_none() {
            let r = r.unwrap_or_else(|| "(none)".into());
            self.note(n.line, format!("{what} of unknown consumer `{r}` skipped"));
        }
        i
    }

    /// Entities listed at the top level (the flat shape), attached to what they reference.
    fn add_top_level(&mut self, root: &Node) {
        for r in list(root, "routes") {
            match reference(r, "service").and_then(|n| self.service(&n)) {
                Some(i) => self.add_route(i, r),
                None => {
                    let what = reference(r, "service").unwrap_or_else(|| "(none)".into());
                    self.note(r.line, format!("route of unknown service `{what}` skipped"));
                }
            }
        }
        for k in list(root, "keyauth_credentials") {
            if let Some(i) = self.consumer_of(k, "key-auth credential") {
                self.add_credential(i, k, false);
            }
        }
        for k in list(root, "basicauth_credentials") {
            if let Some(i) = self.consumer_of(k, "basic-auth credential") {
                self.add_credential(i, k, true);
            }
        }
        for a in list(root, "acls") {
            if let Some(i) = self.consumer_of(a, "ACL group") {
                if let Some(g) = s(a, "group") {
                    self.consumers[i].groups.push(g.to_string());
                }
            }
        }
        for p in list(root, "plugins") {
            let service = reference(p, "service");
            let route = reference(p, "route");
            let target = match (&service, &route) {
                (Some(name), _) => self.service(name),
                (None, Some(name)) => self
                    .routes
                    .iter()
                    .find(|(r, _)| r.contains(name))
                    .map(|(_, i)| *i),
                (None, None) if p.get("consumer").is_some() => continue,
                (None, None) => {
                    for i in 0..self.services.len() {
                        self.apply_plugin(i, p);
                    }
                    continue;
                }
            };
            match target {
                Some(i) => self.apply_plugin(i, p),
                None => {
                    let name = service.or(route).unwrap_or_default();
                    self.note(
                        p.line,
                        format!(
                            "plugin `{}` of unknown service or route `{name}` skipped",
                            s(p, "name").unwrap_or("?")
                        ),
                    );
                }
            }
        }
    }

    /// Makes API and application ids unique (`john.doe` and `john-doe` both slug to `john-doe`).
    fn unique_ids(&mut self) {
        let services = self
            .services
            .iter_mut()
            .map(|s| (&mut s.id, s.name.as_str(), s.line));
        uniquify(services, "service", &mut self.notes);
        let consumers = self
            .consumers
            .iter_mut()
            .map(|c| (&mut c.id, c.username.as_str(), c.line));
        uniquify(consumers, "consumer", &mut self.notes);
    }
}

/// Renames ids already taken by an earlier item to the first free `id-N`, noting each.
fn uniquify<'a>(
    items: impl Iterator<Item = (&'a mut String, &'a str, usize)>,
    kind: &str,
    notes: &mut Vec<Problem>,
) {
    let mut used = HashSet::new();
    for (id, name, line) in items {
        if let Some(new) = unique(&mut used, id) {
            let old = std::mem::replace(id, new.clone());
            notes.push(Problem {
                line,
                message: format!("{kind} `{name}`: id `{old}` already taken, using `{new}`"),
            });
        }
    }
}

/// Records `id` as used; when it already was, returns the first free `id-N`.
fn unique(used: &mut HashSet<String>, id: &str) -> Option<String> {
    if used.insert(id.to_string()) {
        return None;
    }
    let new = (2..)
        .map(|n| format!("{id}-{n}"))
        .find(|c| !used.contains(c))?;
    used.insert(new.clone());
    Some(new)
}

/// Converts Kong declarative config text to registry YAML and the notes on what was dropped or approximated (with
/// the config's lines). Keys are fingerprinted with `secret`; raw keys are not printed. `today` (YYYY-MM-DD) dates
/// the grants.
pub fn import(
    text: &str,
    source: &str,
    secret: &KeySecret,
    today: &str,
) -> Result<(String, Vec<Problem>), String> {
    let root = yaml::parse(text)
        .map_err(|e| format!("YAML syntax error at line {}: {}", e.line, e.message))?;
    if !KONG_KEYS.iter().any(|k| root.get(k).is_some()) {
        return Err(format!(
            "line {}: not a Kong declarative config (none of {})",
            root.line,
            KONG_KEYS.join(", ")
        ));
    }
    let mut im = Importer::default();
    for n in list(&root, "services") {
        im.add_service(n);
    }
    for n in list(&root, "consumers") {
        im.add_consumer(n);
    }
    im.add_top_level(&root);
    im.unique_ids();
    for i in 0..im.services.len() {
        let svc = &mut im.services[i];
        if svc.matchers.is_empty() {
            svc.by_upstream = true;
            svc.matchers.push(Matcher {
                hosts: vec![svc.upstream_host.clone().unwrap_or_else(|| svc.id.clone())],
                ports: svc.upstream_port.into_iter().collect(),
                line: svc.line,
                ..Default::default()
            });
            let (line, note) = (
                svc.line,
                format!(
                    "service `{}`: no route with hosts or paths; matching its upstream instead",
                    svc.name
                ),
            );
            im.note(line, note);
        }
    }
    im.keep_loadable_matchers(secret);
    let keys = render_keys(&mut im, secret, today);
    let mut notes = im.notes;
    notes.sort_by_key(|n| n.line);
    Ok((
        render(&im.services, &im.consumers, &keys, source, today),
        notes,
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::event::KeyState;
    use crate::registry::{load_str, parse_date};

    fn secret() -> KeySecret {
        KeySecret::from_bytes(b"kong-import-secret-01")
    }

    fn fixture() -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kong.yaml");
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    #[test]
    fn key_names_the_registry_refuses_are_left_out() {
        // Found by the kong fuzz target: `X-A%pi-Key` was written as the auth header and the loader refused it.
        let kong = fixture().replace("X-Api-Key", "X-A%%pi-Key");
        assert_ne!(kong, fixture(), "the fixture names X-Api-Key");
        let yaml = import(&kong, "kong.yaml", &secret(), "2026-03-02")
            .expect("imports")
            .0;
        assert!(!yaml.contains("X-A%%pi-Key"), "{yaml}");
        load_str(&yaml, Path::new("."), &secret())
            .unwrap_or_else(|p| panic!("import output must validate: {p:?}\n{yaml}"));
    }

    #[test]
    fn a_key_two_consumers_hold_is_imported_once() {
        // Found by the kong fuzz target: both were written and the loader refused the duplicate.
        let kong = fixture().replace(
            "sk_test_partner_portal_Qm4t0a5e02",
            "sk_live_mobile_checkout_7Hq2x93f9a",
        );
        let (yaml, notes) = import(&kong, "kong.yaml", &secret(), "2026-03-02").expect("imports");
        assert!(
            notes
                .iter()
                .any(|n| n.message.contains("the same credential as key")),
            "{notes:?}"
        );
        load_str(&yaml, Path::new("."), &secret())
            .unwrap_or_else(|p| panic!("import output must validate: {p:?}\n{yaml}"));
    }

    #[test]
    fn kong_fixture_imports_to_a_valid_registry() {
        let yaml = import(&fixture(), "kong.yaml", &secret(), "2026-03-02")
            .expect("fixture imports")
            .0;
        assert!(
            !yaml.contains("sk_live_mobile_checkout_7Hq2x93f9a"),
            "raw keys never printed:\n{yaml}"
        );
        assert!(!yaml.contains("not-imported"), "passwords never printed");
        let loaded = load_str(&yaml, Path::new("."), &secret())
            .unwrap_or_else(|p| panic!("import output must validate: {p:?}\n{yaml}"));
        let r = &loaded.registry;
        let ids: Vec<&str> = r.apis.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["payments", "orders", "inventory"]);
        let pay = &r.apis[0];
        assert_eq!(pay.matchers[0].base_paths, ["/v1/payments"]);
        assert_eq!(
            pay.matchers[0].methods,
            ["GET", "POST"],
            "route methods kept"
        );
        assert_eq!(pay.auth[0].headers, ["X-Api-Key"]);
        assert!(pay.auth[0].query.is_empty(), "key_in_query: false");
        let orders = &r.apis[1];
        assert_eq!(orders.auth[0].headers, ["apikey"], "Kong default key name");
        assert_eq!(
            orders.auth[0].query,
            ["apikey"],
            "Kong accepts the key in the query by default"
        );
        assert_eq!(orders.matchers[0].base_paths, ["/v1/orders"]);
        assert_eq!(
            orders.matchers[1].path_regex[0].as_str(),
            "/v1/orders/legacy/\\d+$",
            "regex path as a regex matcher"
        );
        let inv = &r.apis[2];
        assert_eq!(inv.matchers[0].ports, [9090]);
        assert_eq!(inv.auth[0].kind, crate::registry::AuthKind::Basic);

        let apps: Vec<&str> = r.applications.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            apps,
            ["mobile-checkout", "partner-portal", "warehouse-sync"]
        );
        let now = parse_date("2026-03-03").expect("date");
        let key = |app: &str| {
            r.keys
                .iter()
                .find(|k| k.application == app)
                .unwrap_or_else(|| panic!("key of {app}"))
        };
        let mobile = key("mobile-checkout");
        assert_eq!(
            mobile.fingerprint,
            secret().fingerprint_hex(b"sk_live_mobile_checkout_7Hq2x93f9a")
        );
        assert_eq!(mobile.suffix, "3f9a");
        assert_eq!(
            mobile.state(Some("payments"), now),
            KeyState::Valid,
            "ACL group payments-users"
        );
        assert_eq!(
            mobile.state(Some("orders"), now),
            KeyState::Valid,
            "no ACL: any consumer"
        );
        let partner = key("partner-portal");
        assert_eq!(
            partner.state(Some("payments"), now),
            KeyState::NotGrantedForApi,
            "not in the ACL group"
        );
        assert_eq!(partner.state(Some("orders"), now), KeyState::Valid);
        let basic = key("warehouse-sync");
        assert_eq!(
            basic.fingerprint,
            secret().fingerprint_hex(b"warehouse-sync"),
            "basic username is the key"
        );
        assert_eq!(basic.state(Some("inventory"), now), KeyState::Valid);
        assert_eq!(
            basic.state(Some("orders"), now),
            KeyState::NotGrantedForApi,
            "basic creds only for basic-auth services"
        );
    }

    #[test]
    fn top_level_entities_and_references() {
        let text = "_format_version: '3.0'
services:
  - name: svc
    url: http://svc.internal:81/
routes:
  - name: r
    service: {name: svc}
    hosts: [svc.example.com]
plugins:
  - name: key-auth
    service: svc
  - name: acl
    service: svc
    config: {deny: [blocked]}
consumers:
  - username: ok
  - username: bad
keyauth_credentials:
  - consumer: {username: ok}
    key: ok-key-0123456789
  - consumer: bad
    key: bad-key-0123456789
acls:
  - consumer: bad
    group: blocked
";
        let (yaml, _) = import(text, "k.yaml", &secret(), "2026-01-01").expect("imports");
        let r = load_str(&yaml, Path::new("."), &secret())
            .unwrap_or_else(|p| panic!("valid: {p:?}\n{yaml}"))
            .registry;
        assert_eq!(
            r.apis[0].matchers[0].hosts.len(),
            1,
            "top-level route attached by service reference"
        );
        let now = parse_date("2026-02-01").expect("date");
        let ok = r
            .keys
            .iter()
            .find(|k| k.application == "ok")
            .expect("ok key");
        let bad = r
            .keys
            .iter()
            .find(|k| k.application == "bad")
            .expect("bad key");
        assert_eq!(ok.state(Some("svc"), now), KeyState::Valid);
        assert_eq!(
            bad.state(Some("svc"), now),
            KeyState::NotGrantedForApi,
            "denied ACL group"
        );
    }

    #[test]
    fn not_kong_is_refused() {
        let err = import("openapi: 3.0.0\n", "x", &secret(), "2026-01-01").expect_err("not kong");
        assert!(err.contains("not a Kong declarative config"), "{err}");
    }

    fn imported(text: &str) -> (crate::registry::Registry, Vec<(usize, String)>) {
        let (yaml, notes) = import(text, "k.yaml", &secret(), "2026-01-01").expect("imports");
        let r = load_str(&yaml, Path::new("."), &secret())
            .unwrap_or_else(|p| panic!("import output must validate: {p:?}\n{yaml}"))
            .registry;
        (r, notes.into_iter().map(|n| (n.line, n.message)).collect())
    }

    #[test]
    fn each_route_keeps_its_own_hosts_paths_and_methods() {
        let text = r#"_format_version: "3.0"
services:
  - name: admin
    url: http://admin.internal
    routes:
      - {name: a, hosts: [a.example.com], paths: [/admin]}
      - {name: b, hosts: [b.example.com], paths: [/api], methods: [GET]}
      - {name: users, hosts: [b.example.com], paths: ["~/users/\\d+$"]}
  - name: expr
    url: http://expr.internal
    routes:
      - name: e
        expression: 'http.host == "c.example.com" && http.path ^= "/v2" && http.method == "POST"'
      - name: hard
        expression: 'http.path ^= "/x" || http.headers.x_debug == "1"'
"#;
        let (r, notes) = imported(text);
        let snap = crate::registry::Snapshot::build(r, secret(), 0, None, None);
        let api = |host: &str, method: &str, path: &str| {
            snap.match_api(host, 80, method, path, &Default::default())
                .map(|i| snap.api(i).id.clone())
        };
        assert_eq!(
            api("a.example.com", "GET", "/admin/x").as_deref(),
            Some("admin")
        );
        assert_eq!(
            api("b.example.com", "GET", "/admin/x"),
            None,
            "host B does not take route A's path"
        );
        assert_eq!(
            api("b.example.com", "POST", "/api"),
            None,
            "route methods hold"
        );
        assert_eq!(
            api("b.example.com", "GET", "/users/7").as_deref(),
            Some("admin")
        );
        assert_eq!(
            api("b.example.com", "GET", "/users/me"),
            None,
            "regex does not widen to the host"
        );
        assert_eq!(
            api("c.example.com", "POST", "/v2/x").as_deref(),
            Some("expr"),
            "expression parsed"
        );
        assert_eq!(api("c.example.com", "GET", "/v2/x"), None);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].0, 14);
        assert!(
            notes[0].1.starts_with("route `hard`: expression"),
            "{notes:?}"
        );
    }

    /// The flat shape `kong config db_export` writes: every entity at the top level, references by id.
    #[test]
    fn flat_export_with_references_by_id() {
        let text = "_format_version: '3.0'
services:
  - id: 0b6c5e3c-0000-4000-8000-000000000001
    name: billing
    host: billing.internal
routes:
  - id: 0b6c5e3c-0000-4000-8000-0000000000r1
    service: {id: 0b6c5e3c-0000-4000-8000-000000000001}
    hosts: [billing.example.com]
    paths: [/v1/billing]
  - id: 0b6c5e3c-0000-4000-8000-0000000000r2
    service: 0b6c5e3c-0000-4000-8000-000000000009
    paths: [/gone]
plugins:
  - name: key-auth
    route: 0b6c5e3c-0000-4000-8000-0000000000r1
  - name: acl
    service: {id: 0b6c5e3c-0000-4000-8000-000000000001}
    config: {allow: [billing-users]}
consumers:
  - id: 0b6c5e3c-0000-4000-8000-0000000000c1
    username: shop
keyauth_credentials:
  - consumer: {id: 0b6c5e3c-0000-4000-8000-0000000000c1}
    key: shop-key-0123456789
acls:
  - consumer: {id: 0b6c5e3c-0000-4000-8000-0000000000c1}
    group: billing-users
";
        let (r, notes) = imported(text);
        assert_eq!(r.apis[0].matchers[0].base_paths, ["/v1/billing"]);
        assert_eq!(
            r.apis[0].auth[0].kind,
            crate::registry::AuthKind::ApiKey,
            "route plugin by id"
        );
        let shop = &r.keys[0];
        assert_eq!(
            shop.fingerprint,
            secret().fingerprint_hex(b"shop-key-0123456789")
        );
        assert_eq!(
            shop.state(Some("billing"), parse_date("2026-02-01").expect("date")),
            KeyState::Valid,
            "credential and ACL group attached by consumer id"
        );
        assert_eq!(
            notes,
            [(
                11,
                "route of unknown service `0b6c5e3c-0000-4000-8000-000000000009` skipped"
                    .to_string()
            )]
        );
        let (r, _) = imported("consumers:\n  - username: solo\n    keyauth_credentials: [{key: solo-key-0123456789}]\n");
        assert_eq!(
            r.applications[0].id, "solo",
            "a consumer-only (split decK) file imports"
        );
    }

    #[test]
    fn environment_placeholders_become_key_env() {
        let text = r#"_format_version: "3.0"
services:
  - {name: rest, url: "http://rest:3000", routes: [{paths: [/rest/v1]}], plugins: [{name: key-auth}]}
consumers:
  - username: anon
    keyauth_credentials:
      - key: $SUPABASE_ANON_KEY
      - key: '${{ env "DECK_SERVICE_KEY" }}'
      - key: '{vault://env/my-secret-key}'
      - key: '{vault://aws/prod/key}'
"#;
        let (yaml, notes) = import(text, "k.yaml", &secret(), "2026-01-01").expect("imports");
        assert!(yaml.contains("key_env: SUPABASE_ANON_KEY"), "{yaml}");
        assert!(yaml.contains("key_env: DECK_SERVICE_KEY"), "{yaml}");
        assert!(
            yaml.contains("key_env: MY_SECRET_KEY"),
            "Kong's env vault: {yaml}"
        );
        assert!(
            !yaml.contains(&secret().fingerprint_hex(b"$SUPABASE_ANON_KEY")),
            "placeholder not fingerprinted"
        );
        let lines: Vec<usize> = notes.iter().map(|n| n.line).collect();
        assert_eq!(lines, [7, 8, 9, 10], "each placeholder reported: {notes:?}");
        assert!(
            notes[3]
                .message
                .contains("vault reference `{vault://aws/prod/key}`")
                && notes[3].message.contains("not imported"),
            "{notes:?}"
        );
        let source = crate::registry::load::InMemory::default()
            .var("SUPABASE_ANON_KEY", "anon-key-0123456789")
            .var("DECK_SERVICE_KEY", "service-key-0123456789")
            .var("MY_SECRET_KEY", "vault-key-0123456789");
        let r = crate::registry::load::load_with(&yaml, Path::new("."), &secret(), &source)
            .unwrap_or_else(|p| panic!("valid once the variables are set: {p:?}\n{yaml}"))
            .registry;
        assert_eq!(
            r.keys[0].fingerprint,
            secret().fingerprint_hex(b"anon-key-0123456789")
        );
        assert_eq!(r.keys.len(), 3);
    }

    #[test]
    fn routes_matching_the_same_requests_keep_the_first_service() {
        // Two services whose routes reduce to the same host and base path (Kong picks by priority), a third whose
        // only route repeats them and is left out whole, and a fourth whose invalid regex path is dropped alone.
        let text = "_format_version: '3.0'
services:
  - name: a
    host: a.internal
    routes:
      - {hosts: [api.x.com], paths: [/v1/]}
  - name: b
    host: b.internal
    routes:
      - {hosts: [api.x.com], paths: [/v1]}
      - {hosts: [api.x.com], paths: [/v2]}
  - name: c
    host: c.internal
    plugins: [{name: key-auth}]
    routes:
      - {hosts: [API.x.com], paths: [/v1]}
  - name: d
    host: d.internal
    routes:
      - {paths: [\"~/d/(\"]}
      - {paths: [/d]}
consumers:
  - username: u
    keyauth_credentials: [{key: k-123456}]
";
        let (r, notes) = imported(text);
        let apis: Vec<(&str, usize)> = r
            .apis
            .iter()
            .map(|a| (a.id.as_str(), a.matchers.len()))
            .collect();
        assert_eq!(apis, vec![("a", 1), ("b", 1), ("d", 1)], "{notes:?}");
        assert!(
            r.keys.iter().all(|k| k.grants.is_empty()),
            "grants to c go with it"
        );
        let said =
            |line: usize, part: &str| notes.iter().any(|(l, m)| *l == line && m.contains(part));
        assert!(said(10, "service `b`: matcher {hosts: [api.x.com], base_path: [/v1]} left out: it and a route of service `a` both match host api.x.com, base_path /v1"), "{notes:?}");
        assert!(said(16, "service `c`: matcher"), "{notes:?}");
        assert!(
            said(12, "service `c` not imported, nor its grants"),
            "{notes:?}"
        );
        assert!(
            said(20, "path_regex `/d/(` is not a regular expression"),
            "{notes:?}"
        );
    }

    #[test]
    fn colliding_ids_are_made_unique() {
        let text = "_format_version: '3.0'\nservices:\n  - {name: Pay, host: a.internal}\n  - {name: pay, host: b.internal}\nconsumers:\n  - username: john.doe\n  - username: john-doe\n";
        let (r, notes) = imported(text);
        let apis: Vec<&str> = r.apis.iter().map(|a| a.id.as_str()).collect();
        let apps: Vec<&str> = r.applications.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            (apis, apps),
            (vec!["pay", "pay-2"], vec!["john-doe", "john-doe-2"])
        );
        assert!(
            notes.contains(&(
                4,
                "service `pay`: id `pay` already taken, using `pay-2`".to_string()
            )),
            "{notes:?}"
        );
        assert!(
            notes.contains(&(
                7,
                "consumer `john-doe`: id `john-doe` already taken, using `john-doe-2`".to_string()
            )),
            "{notes:?}"
        );
    }
}
