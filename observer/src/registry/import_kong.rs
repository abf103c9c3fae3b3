//! Importing a Kong declarative config: services (with their routes) become APIs, consumers applications,
//! key-auth / basic-auth credentials key fingerprints, and ACL groups grants. Output is registry YAML to merge.
use std::collections::BTreeSet;

use super::fingerprint::{key_suffix, KeySecret};
use super::import_openapi::{slug, split_url, unassigned_team_yaml};
use super::load::Problem;
use super::yaml::{self, flow_list, scalar, Node};

#[derive(Debug, Clone, Default, PartialEq)]
struct Service {
    id: String,
    name: String,
    hosts: Vec<String>,
    paths: Vec<String>,
    upstream_host: Option<String>,
    upstream_port: Option<u16>,
    key_auth: Option<KeyAuth>,
    basic_auth: bool,
    acl_allow: Option<Vec<String>>,
    acl_deny: Vec<String>,
    skipped_regex_paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct KeyAuth {
    key_names: Vec<String>,
    in_query: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Consumer {
    id: String,
    username: String,
    keys: Vec<String>,
    basic_users: Vec<String>,
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

/// A reference to a service/consumer/route: a name string or `{name|id|username: ...}`.
fn reference(n: &Node, key: &str) -> Option<String> {
    let v = n.get(key)?;
    v.as_str()
        .or_else(|| s(v, "name"))
        .or_else(|| s(v, "id"))
        .or_else(|| s(v, "username"))
        .map(str::to_string)
}

fn apply_plugin(svc: &mut Service, p: &Node) {
    if p.get("enabled").and_then(Node::as_str) == Some("false") {
        return;
    }
    let config = p.get("config");
    match s(p, "name") {
        Some("key-auth") => {
            let names = config.map(|c| str_list(c, "key_names")).unwrap_or_default();
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

fn add_route(svc: &mut Service, r: &Node) {
    for h in str_list(r, "hosts") {
        let h = h.to_ascii_lowercase();
        if !svc.hosts.contains(&h) {
            svc.hosts.push(h);
        }
    }
    for p in str_list(r, "paths") {
        if p.starts_with('~') || p.contains(['(', '[', '*', '$']) {
            svc.skipped_regex_paths.push(p);
        } else {
            let t = p.trim_end_matches('/');
            let t = if t.is_empty() {
                "/".to_string()
            } else {
                t.to_string()
            };
            if !svc.paths.contains(&t) {
                svc.paths.push(t);
            }
        }
    }
}

/// Converts Kong declarative config text to registry YAML. Keys are fingerprinted with `secret`; raw keys are not
/// printed. `today` (YYYY-MM-DD) dates the grants.
pub fn import(
    text: &str,
    source: &str,
    secret: &KeySecret,
    today: &str,
) -> Result<(String, Vec<Problem>), String> {
    let root = yaml::parse(text)
        .map_err(|e| format!("YAML syntax error at line {}: {}", e.line, e.message))?;
    if root.get("_format_version").is_none() && root.get("services").is_none() {
        return Err(format!(
            "line {}: not a Kong declarative config (no `_format_version` or `services`)",
            root.line
        ));
    }
    let mut services: Vec<Service> = Vec::new();
    for n in list(&root, "services") {
        let name = s(n, "name")
            .or_else(|| s(n, "id"))
            .unwrap_or("service")
            .to_string();
        let mut svc = Service {
            id: slug(&name),
            name: name.clone(),
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
        for r in list(n, "routes") {
            add_route(&mut svc, r);
            for p in list(r, "plugins") {
                apply_plugin(&mut svc, p);
            }
        }
        for p in list(n, "plugins") {
            apply_plugin(&mut svc, p);
        }
        services.push(svc);
    }
    let find = |services: &mut Vec<Service>, name: &str| {
        services.iter().position(|s| s.name == name || s.id == name)
    };
    for r in list(&root, "routes") {
        if let Some(i) = reference(r, "service").and_then(|n| find(&mut services, &n)) {
            add_route(&mut services[i], r);
        }
    }
    // Top-level plugins attached to a service (or a route of one); global ones apply to all services.
    for p in list(&root, "plugins") {
        if let Some(name) = reference(p, "service") {
            if let Some(i) = find(&mut services, &name) {
                apply_plugin(&mut services[i], p);
            }
        } else if p.get("route").is_none() && p.get("consumer").is_none() {
            for svc in &mut services {
                apply_plugin(svc, p);
            }
        }
    }

    let mut consumers: Vec<Consumer> = Vec::new();
    for n in list(&root, "consumers") {
        let username = s(n, "username")
            .or_else(|| s(n, "custom_id"))
            .or_else(|| s(n, "id"))
            .unwrap_or("consumer");
        let mut c = Consumer {
            id: slug(username),
            username: username.to_string(),
            ..Default::default()
        };
        c.keys.extend(
            list(n, "keyauth_credentials")
                .iter()
                .filter_map(|k| s(k, "key"))
                .map(str::to_string),
        );
        c.basic_users.extend(
            list(n, "basicauth_credentials")
                .iter()
                .filter_map(|k| s(k, "username"))
                .map(str::to_string),
        );
        c.groups.extend(
            list(n, "acls")
                .iter()
                .filter_map(|a| s(a, "group"))
                .map(str::to_string),
        );
        consumers.push(c);
    }
    let consumer_of = |consumers: &mut Vec<Consumer>, n: &Node| {
        reference(n, "consumer").and_then(|name| {
            consumers
                .iter()
                .position(|c| c.username == name || c.id == name)
        })
    };
    for k in list(&root, "keyauth_credentials") {
        if let (Some(i), Some(key)) = (consumer_of(&mut consumers, k), s(k, "key")) {
            consumers[i].keys.push(key.to_string());
        }
    }
    for k in list(&root, "basicauth_credentials") {
        if let (Some(i), Some(u)) = (consumer_of(&mut consumers, k), s(k, "username")) {
            consumers[i].basic_users.push(u.to_string());
        }
    }
    for a in list(&root, "acls") {
        if let (Some(i), Some(g)) = (consumer_of(&mut consumers, a), s(a, "group")) {
            consumers[i].groups.push(g.to_string());
        }
    }

    let notes = Vec::new();
    Ok((render(&services, &consumers, source, secret, today), notes))
}

fn granted(svc: &Service, c: &Consumer) -> bool {
    if c.groups.iter().any(|g| svc.acl_deny.contains(g)) {
        return false;
    }
    match &svc.acl_allow {
        Some(allow) => c.groups.iter().any(|g| allow.contains(g)),
        None => true,
    }
}

fn render(
    services: &[Service],
    consumers: &[Consumer],
    source: &str,
    secret: &KeySecret,
    today: &str,
) -> String {
    let mut y = format!(
        "# Imported from Kong declarative config {source}.\n# Services -> apis, consumers -> applications, key-auth/basic-auth credentials -> keys (fingerprints only),\n# ACL groups -> grants (dated {today}, the import). Review owners and teams, then merge into your registry.\nversion: 1\n"
    );
    y.push_str(&unassigned_team_yaml());
    y.push_str(if services.is_empty() {
        "apis: []\n"
    } else {
        "apis:\n"
    });
    for svc in services {
        y.push_str(&format!(
            "  - id: {}\n    name: {}\n    owner: unassigned\n    match:\n",
            scalar(&svc.id),
            scalar(&svc.name)
        ));
        if !svc.skipped_regex_paths.is_empty() {
            y.push_str(&format!(
                "      # Regex route paths not imported: {}\n",
                svc.skipped_regex_paths.join(", ")
            ));
        }
        if svc.hosts.is_empty() && svc.paths.is_empty() {
            y.push_str("      # The service's routes name no hosts or paths: matching the upstream instead.\n");
            let host = svc.upstream_host.clone().unwrap_or_else(|| svc.id.clone());
            y.push_str(&format!("      hosts: {}\n", flow_list(&[host])));
            if let Some(p) = svc.upstream_port {
                y.push_str(&format!("      ports: [{p}]\n"));
            }
        } else {
            if !svc.hosts.is_empty() {
                y.push_str(&format!("      hosts: {}\n", flow_list(&svc.hosts)));
            }
            if !svc.paths.is_empty() {
                y.push_str(&format!("      base_path: {}\n", flow_list(&svc.paths)));
            }
        }
        match (&svc.key_auth, svc.basic_auth) {
            (Some(k), _) => {
                y.push_str(&format!(
                    "    auth:\n      type: api_key\n      headers: {}\n",
                    flow_list(&k.key_names)
                ));
                if k.in_query {
                    y.push_str(&format!("      query: {}\n", flow_list(&k.key_names)));
                }
            }
            (None, true) => y.push_str("    auth: basic\n"),
            (None, false) => y.push_str("    auth: anonymous\n"),
        }
    }
    y.push_str(if consumers.is_empty() {
        "applications: []\n"
    } else {
        "applications:\n"
    });
    for c in consumers {
        y.push_str(&format!(
            "  - id: {}\n    name: {}\n    team: unassigned\n    created_by: kong-import\n    created_at: {today}\n",
            scalar(&c.id),
            scalar(&c.username)
        ));
    }
    let mut keys = String::new();
    for c in consumers {
        // (id kind, credential, whether a service checks this kind of credential)
        let key_creds = c.keys.iter().map(|k| ("key", k, true));
        let basic_creds = c.basic_users.iter().map(|u| ("basic", u, false));
        for (n, (kind, raw, is_key)) in key_creds.chain(basic_creds).enumerate() {
            let uses = |s: &Service| {
                if is_key {
                    s.key_auth.is_some()
                } else {
                    s.basic_auth && s.key_auth.is_none()
                }
            };
            let apis: BTreeSet<&str> = services
                .iter()
                .filter(|s| uses(s) && granted(s, c))
                .map(|s| s.id.as_str())
                .collect();
            keys.push_str(&format!(
                "  - id: {}\n    application: {}\n    fingerprint: {}\n    suffix: {}\n",
                scalar(&format!("{}-{kind}-{}", c.id, n + 1)),
                scalar(&c.id),
                secret.fingerprint_hex(raw.as_bytes()),
                scalar(key_suffix(raw))
            ));
            if !c.groups.is_empty() {
                keys.push_str(&format!("    # ACL groups: {}\n", c.groups.join(", ")));
            }
            if apis.is_empty() {
                keys.push_str("    grants: []\n");
            } else {
                keys.push_str("    grants:\n");
                for api in apis {
                    keys.push_str(&format!(
                        "      - api: {}\n        granted_by: kong-import\n        granted_at: {today}\n",
                        scalar(api)
                    ));
                }
            }
        }
    }
    if keys.is_empty() {
        y.push_str("keys: []\n");
    } else {
        y.push_str("keys:\n");
        y.push_str(&keys);
    }
    y
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
        assert_eq!(pay.auth[0].headers, ["X-Api-Key"]);
        assert!(pay.auth[0].query.is_empty(), "key_in_query: false");
        let orders = &r.apis[1];
        assert_eq!(orders.auth[0].headers, ["apikey"], "Kong default key name");
        assert_eq!(
            orders.auth[0].query,
            ["apikey"],
            "Kong accepts the key in the query by default"
        );
        assert_eq!(
            orders.matchers[0].base_paths,
            ["/v1/orders"],
            "regex path skipped"
        );
        assert!(yaml.contains("Regex route paths not imported"));
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
}
