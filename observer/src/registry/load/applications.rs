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
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn workload_problems() {
        let text = format!("{BASE}    workload: {{}}\n");
        assert_problem(&text, 11, "give `comm` and/or `cgroup`");
        let text = format!("{BASE}    workload: {{pid: 1}}\n");
        assert_problem(&text, 11, "unknown field `pid`");
        let text = format!("{BASE}    workload: {{comm: x}}\n  - id: b\n    team: t\n    workload:\n      - comm: x\n");
        assert_problem(&text, 15, "identical to one of application `app`");
    }
}
