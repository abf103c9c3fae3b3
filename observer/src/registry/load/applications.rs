//! The `applications` section: owning team, provenance, predecessor and client workload selectors.
use super::super::glob::Glob;
use super::super::model::*;
use super::super::yaml::Node;
use super::fields::label;
use super::Ctx;

impl Ctx<'_> {
    pub(super) fn application(&mut self, n: &Node, i: usize) -> Option<Application> {
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
                if !self.fields(
                    s,
                    &sw,
                    &["comm", "cgroup", "namespace", "workload", "labels"],
                ) {
                    continue;
                }
                let comm = self.opt_str(s, "comm", &sw).map(|v| Glob::new(&v.0, false));
                let cgroup = self.opt_str(s, "cgroup", &sw).map(|v| Glob::path(&v.0));
                let namespace = self
                    .opt_str(s, "namespace", &sw)
                    .map(|v| Glob::new(&v.0, false));
                let workload_term = self.opt_str(s, "workload", &sw).and_then(|v| {
                    let ok = v.0.split_once('/').is_some_and(|(kind, name)| {
                        WORKLOAD_KINDS.contains(&kind) && !name.is_empty()
                    });
                    if !ok {
                        self.err(
                            s.get("workload").map_or(s.line, |w| w.line),
                            format!(
                                "{sw}: `workload` must be Kind/name with Kind one of {}, not {:?}",
                                WORKLOAD_KINDS.join(", "),
                                v.0
                            ),
                        );
                    }
                    ok.then(|| Glob::new(&v.0, false))
                });
                let labels = self.labels(s, &sw);
                if comm.is_none()
                    && cgroup.is_none()
                    && namespace.is_none()
                    && workload_term.is_none()
                    && labels.is_empty()
                {
                    self.err(
                        s.line,
                        format!("{sw}: give at least one of `comm`, `cgroup`, `namespace`, `workload`, `labels`"),
                    );
                    continue;
                }
                workload.push(WorkloadSelector {
                    comm,
                    cgroup,
                    namespace,
                    workload: workload_term,
                    labels,
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
}

impl Ctx<'_> {
    /// A selector's `labels`: a mapping of label keys to exact values.
    fn labels(&mut self, s: &Node, what: &str) -> Vec<(String, String)> {
        let Some(node) = s.get("labels").filter(|n| !n.is_null()) else {
            return Vec::new();
        };
        let Some(map) = node.as_map() else {
            self.err(
                node.line,
                format!("{what}: `labels` must be a mapping of label keys to values"),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in map {
            match (k.as_str(), v.as_str()) {
                (Some(k), Some(v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
                _ => self.err(
                    k.line,
                    format!("{what}: each label needs a key and a string value"),
                ),
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn workload_problems() {
        let text = format!("{BASE}    workload: {{}}\n");
        assert_problem(
            &text,
            11,
            "give at least one of `comm`, `cgroup`, `namespace`",
        );
        let text = format!("{BASE}    workload: {{pid: 1}}\n");
        assert_problem(&text, 11, "unknown field `pid`");
        let text = format!("{BASE}    workload: {{comm: x}}\n  - id: b\n    team: t\n    workload:\n      - comm: x\n");
        assert_problem(&text, 15, "identical to one of application `app`");
    }

    #[test]
    fn kubernetes_terms() {
        let text = format!("{BASE}    workload: {{workload: Deploy/x}}\n");
        assert_problem(
            &text,
            11,
            "`workload` must be Kind/name with Kind one of Deployment",
        );
        let text = format!("{BASE}    workload: {{labels: [a]}}\n");
        assert_problem(&text, 11, "`labels` must be a mapping");
        let text = format!(
            "{BASE}    workload: {{namespace: shop, workload: Deployment/check*, labels: {{team: payments}}}}\n"
        );
        let loaded = load(&text).unwrap_or_else(|p| panic!("{p:?}"));
        let sel = &loaded.registry.applications[0].workload[0];
        let pod = crate::kube::PodMeta {
            namespace: "shop".into(),
            workload: "Deployment/checkout".into(),
            labels: [("team".to_string(), "payments".to_string())].into(),
            ..Default::default()
        };
        assert!(sel.matches("java", "/kubepods/x", Some(&pod)));
        assert!(
            !sel.matches("java", "/kubepods/x", None),
            "no pod: no Kubernetes match"
        );
        let other_ns = crate::kube::PodMeta {
            namespace: "dev".into(),
            ..pod.clone()
        };
        assert!(!sel.matches("java", "/kubepods/x", Some(&other_ns)));
        let unlabelled = crate::kube::PodMeta {
            labels: Default::default(),
            ..pod
        };
        assert!(!sel.matches("java", "/kubepods/x", Some(&unlabelled)));
        assert_eq!(sel.specificity(), 3);
    }
}
