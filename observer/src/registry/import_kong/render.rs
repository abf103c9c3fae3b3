//! Writing a Kong import as registry YAML: APIs with one matcher per route (each read back with the loader's own
//! matcher reader, overlaps with an earlier service's left out), applications, and keys with their grants.
use std::collections::BTreeSet;

use super::super::fingerprint::{key_suffix, KeySecret};
use super::super::import_openapi::unassigned_team_yaml;
use super::super::load::{matchers_overlap, parse_matcher, Problem};
use super::super::model::ApiMatch;
use super::super::yaml::{flow_list, scalar};
use super::{Consumer, Importer, Matcher, Secret, Service};

impl Importer {
    /// Keeps only matchers the loader accepts: each is read back with the loader's own matcher reader, and one that
    /// would match the same requests as an earlier service's is left out (Kong chooses between such routes by
    /// priority and creation order, which a registry does not model, and the loader refuses overlapping APIs). A
    /// service left with no matcher is left out with its grants. Each is a note with the config's line.
    pub(super) fn keep_loadable_matchers(&mut self, secret: &KeySecret) {
        let mut kept: Vec<(usize, String, ApiMatch)> = Vec::new();
        let mut notes = Vec::new();
        for (i, svc) in self.services.iter_mut().enumerate() {
            let name = &svc.name;
            svc.matchers.retain(|m| {
                let text = matcher_yaml(m);
                let parsed = match parse_matcher(&text, secret) {
                    Ok(parsed) => parsed,
                    Err(problems) => {
                        let why: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
                        notes.push(Problem {
                            line: m.line,
                            message: format!("service `{name}`: matcher {text} not imported: {}", why.join("; ")),
                        });
                        return false;
                    }
                };
                let earlier = kept
                    .iter()
                    .filter(|(j, _, _)| *j != i)
                    .find_map(|(_, other, k)| matchers_overlap(k, &parsed).map(|why| (other, why)));
                if let Some((other, why)) = earlier {
                    notes.push(Problem {
                        line: m.line,
                        message: format!("service `{name}`: matcher {text} left out: it and a route of service `{other}` {why}, and Kong chooses between such routes by priority, which the registry does not model"),
                    });
                    return false;
                }
                kept.push((i, name.clone(), parsed));
                true
            });
            if svc.matchers.is_empty() {
                notes.push(Problem {
                    line: svc.line,
                    message: format!("service `{name}` not imported, nor its grants: none of its matchers could be kept"),
                });
            }
        }
        self.services.retain(|s| !s.matchers.is_empty());
        self.notes.extend(notes);
    }
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

/// The `keys:` entries: one per credential, granted the services that check its kind and let its consumer in.
pub(super) fn render_keys(im: &mut Importer, secret: &KeySecret, today: &str) -> String {
    let mut keys = String::new();
    let mut notes = Vec::new();
    // The registry holds each key once (found by the kong fuzz target: two consumers with the same key).
    let mut first_of: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for c in &im.consumers {
        let (mut n_key, mut n_basic) = (0, 0);
        for cred in &c.credentials {
            let (kind, n) = if cred.basic {
                n_basic += 1;
                ("basic", n_basic)
            } else {
                n_key += 1;
                ("key", n_key)
            };
            let id = format!("{}-{kind}-{n}", c.id);
            let same = match &cred.secret {
                Secret::Literal(raw) => Some(format!("literal {raw}")),
                Secret::Env(var) => Some(format!("env {var}")),
                Secret::Vault(_) => None,
            };
            if let Some(same) = same {
                if let Some(first) = first_of.get(&same) {
                    notes.push(Problem {
                        line: cred.line,
                        message: format!("key `{id}`: the same credential as key `{first}`; not imported (the registry holds each key once)"),
                    });
                    continue;
                }
                first_of.insert(same, id.clone());
            }
            let source = match &cred.secret {
                Secret::Literal(raw) => format!(
                    "    fingerprint: {}\n    suffix: {}\n",
                    secret.fingerprint_hex(raw.as_bytes()),
                    scalar(key_suffix(raw))
                ),
                Secret::Env(var) => {
                    notes.push(Problem {
                        line: cred.line,
                        message: format!("key `{id}`: the credential is environment variable `{var}`; emitted as `key_env: {var}` (set it where the registry is loaded)"),
                    });
                    format!("    key_env: {}\n", scalar(var))
                }
                Secret::Vault(r) => {
                    notes.push(Problem {
                        line: cred.line,
                        message: format!("key `{id}`: the credential is vault reference `{r}`, which the registry cannot read; key not imported (add it with `key_file` or `key_env`)"),
                    });
                    continue;
                }
            };
            let uses = |s: &Service| {
                if cred.basic {
                    s.basic_auth && s.key_auth.is_none()
                } else {
                    s.key_auth.is_some()
                }
            };
            let apis: BTreeSet<&str> = im
                .services
                .iter()
                .filter(|s| uses(s) && granted(s, c))
                .map(|s| s.id.as_str())
                .collect();
            keys.push_str(&format!(
                "  - id: {}\n    application: {}\n{source}",
                scalar(&id),
                scalar(&c.id),
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
    im.notes.extend(notes);
    keys
}

/// One matcher as a flow mapping.
fn matcher_yaml(m: &Matcher) -> String {
    let mut parts = Vec::new();
    if !m.hosts.is_empty() {
        parts.push(format!("hosts: {}", flow_list(&m.hosts)));
    }
    if !m.paths.is_empty() {
        parts.push(format!("base_path: {}", flow_list(&m.paths)));
    }
    if !m.regex.is_empty() {
        parts.push(format!("path_regex: {}", flow_list(&m.regex)));
    }
    if !m.methods.is_empty() {
        parts.push(format!("methods: {}", flow_list(&m.methods)));
    }
    if !m.ports.is_empty() {
        let ports: Vec<String> = m.ports.iter().map(u16::to_string).collect();
        parts.push(format!("ports: [{}]", ports.join(", ")));
    }
    format!("{{{}}}", parts.join(", "))
}

pub(super) fn render(
    services: &[Service],
    consumers: &[Consumer],
    keys: &str,
    source: &str,
    today: &str,
) -> String {
    let mut y = format!(
        "# Imported from Kong declarative config {source}.\n# Services -> apis (one matcher per route), consumers -> applications, key-auth/basic-auth credentials -> keys\n# (fingerprints only), ACL groups -> grants (dated {today}, the import). Review owners and teams, then merge.\nversion: 1\n"
    );
    y.push_str(&unassigned_team_yaml());
    y.push_str(if services.is_empty() {
        "apis: []\n"
    } else {
        "apis:\n"
    });
    for svc in services {
        y.push_str(&format!(
            "  - id: {}\n    name: {}\n    owner: unassigned\n",
            scalar(&svc.id),
            scalar(&svc.name)
        ));
        if svc.by_upstream {
            y.push_str("    # The service's routes name no hosts or paths: matching the upstream instead.\n");
        }
        y.push_str("    match:\n");
        for m in &svc.matchers {
            y.push_str(&format!("      - {}\n", matcher_yaml(m)));
        }
        match (&svc.key_auth, svc.basic_auth) {
            (Some(k), basic) => {
                y.push_str("    auth:\n");
                let query = if k.in_query {
                    format!(", query: {}", flow_list(&k.key_names))
                } else {
                    String::new()
                };
                y.push_str(&format!(
                    "      - {{type: api_key, headers: {}{query}}}\n",
                    flow_list(&k.key_names)
                ));
                if basic {
                    y.push_str("      - basic\n");
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
    if keys.is_empty() {
        y.push_str("keys: []\n");
    } else {
        y.push_str("keys:\n");
        y.push_str(keys);
    }
    y
}
