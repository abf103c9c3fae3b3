//! The `teams` section: id, name, line of business and alert contact.
use super::super::model::Team;
use super::super::yaml::Node;
use super::fields::label;
use super::Ctx;

impl Ctx<'_> {
    pub(super) fn team(&mut self, n: &Node, i: usize) -> Option<Team> {
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
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

    #[test]
    fn team_fields() {
        let l = load("teams:\n  - id: pay\n    line_of_business: Retail\n    alert_contact: '#pay'\n  - id: ops\n    name: Operations\n")
            .expect("valid teams");
        let t = &l.registry.teams;
        assert_eq!(
            (
                t[0].name.as_str(),
                t[0].line_of_business.as_str(),
                t[0].alert_contact.as_str(),
                t[0].line
            ),
            ("pay", "Retail", "#pay", 2),
            "name defaults to the id"
        );
        assert_eq!((t[1].name.as_str(), t[1].line), ("Operations", 5));
        assert_problem(
            "teams:\n  - id: t\n    owner: x\n",
            3,
            "team `t`: unknown field `owner`",
        );
        assert_problem(
            "teams:\n  - id: t\n    name: [x]\n",
            3,
            "`name` must be a string",
        );
    }
}
