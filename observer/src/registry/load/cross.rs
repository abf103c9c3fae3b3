//! Checks across sections: duplicate ids, references to undefined teams / APIs / applications, predecessor loops,
//! identical workload selectors, keys listed twice, grant history order, and API matchers that overlap.
use std::collections::HashMap;

use crate::event::Timestamp;

use super::super::model::*;
use super::fields::show;
use super::{Ctx, Problem};

impl Ctx<'_> {
    pub(super) fn cross_check(&mut self, reg: &mut Registry) {
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
                if a.id == b.id {
                    continue;
                }
                let pairs = a
                    .matchers
                    .iter()
                    .flat_map(|x| b.matchers.iter().map(move |y| (x, y)));
                for (x, y) in pairs {
                    if let Some(why) = overlap(x, y) {
                        self.err(
                            b.line,
                            format!(
                                "api `{}` has overlapping matchers with api `{}` (line {}): {why}; make one more specific (host, base_path, port or server workload)",
                                b.id, a.id, a.line
                            ),
                        );
                        break;
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
                if let Some((_, other)) = selectors.iter().find(|(o, _)| {
                    o.comm == s.comm
                        && o.cgroup == s.cgroup
                        && o.namespace == s.namespace
                        && o.workload == s.workload
                        && o.labels == s.labels
                }) {
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
/// kind has a common value: a port, a method, the same path regex, process/cgroup/service patterns that may overlap, or
/// host patterns of the same kind
/// (literal vs. wildcard) that may overlap. A more specific matcher (a longer base path, a literal host over a
/// wildcard, an extra criterion) wins at match time and is not reported.
pub fn overlap(a: &ApiMatch, b: &ApiMatch) -> Option<String> {
    let kinds = |m: &ApiMatch| {
        [
            m.hosts.is_empty(),
            m.ports.is_empty(),
            m.base_paths.is_empty(),
            m.path_regex.is_empty(),
            m.methods.is_empty(),
            m.server_comm.is_empty(),
            m.server_cgroup.is_empty(),
            m.services.is_empty(),
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
    if !a.path_regex.is_empty() {
        let r = a.path_regex.iter().find(|r| b.path_regex.contains(r))?;
        why.push(format!("path_regex {}", r.as_str()));
    }
    if !a.methods.is_empty() {
        let m = a.methods.iter().find(|m| b.methods.contains(m))?;
        why.push(format!("method {m}"));
    }
    for (x, y, name) in [
        (&a.server_comm, &b.server_comm, "server_comm"),
        (&a.server_cgroup, &b.server_cgroup, "server_cgroup"),
        (&a.services, &b.services, "service"),
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
    use super::super::test_support::*;

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
            &two(
                "[{hosts: x.com, base_path: /a}, {hosts: y.com, base_path: /b}]",
                "[{hosts: z.com}, {hosts: y.com, base_path: /b}]",
            ),
            6,
            "both match host y.com, base_path /b",
        );
        assert_problem(
            &two(
                "{hosts: x.com, methods: [GET, PUT]}",
                "{hosts: x.com, methods: put}",
            ),
            6,
            "method PUT",
        );
        assert_problem(
            &two("{server_comm: \"pay*\"}", "{server_comm: payments}"),
            6,
            "server_comm",
        );
        assert_problem(
            &two("{service: \"shop/*\"}", "{service: shop/checkout}"),
            6,
            "both match service shop/*",
        );
        for (a, b) in [
            ("{service: shop/a}", "{service: shop/b}"),
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
            (
                "{hosts: x.com, methods: GET}",
                "{hosts: x.com, methods: POST}",
            ),
            (
                "{hosts: x.com, path_regex: /a/\\d+}",
                "{hosts: x.com, path_regex: /b/\\d+}",
            ),
            (
                "[{hosts: x.com, base_path: /a}, {hosts: y.com, base_path: /b}]",
                "[{hosts: x.com, base_path: /b}, {hosts: y.com, base_path: /a}]",
            ),
        ] {
            load(&two(a, b)).unwrap_or_else(|p| panic!("{a} vs {b} should not overlap: {p:?}"));
        }
    }
}
