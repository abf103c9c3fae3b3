//! The `teams` section: id, name, line of business, alert contact and the webhook findings are POSTed to.
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
            &[
                "id",
                "name",
                "line_of_business",
                "alert_contact",
                "alert_webhook",
            ],
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
            alert_webhook: self.webhook(n, &what),
            id,
            line: n.line,
        })
    }

    /// `alert_webhook`: an absolute `http://` or `https://` URL with a host; "" when absent.
    fn webhook(&mut self, n: &Node, what: &str) -> String {
        let Some((url, line)) = self.opt_str(n, "alert_webhook", what) else {
            return String::new();
        };
        let problem = match url.parse::<hyper::Uri>() {
            Err(e) => Some(e.to_string()),
            Ok(u) if !matches!(u.scheme_str(), Some("http" | "https")) => {
                Some("the scheme must be http or https".to_string())
            }
            Ok(u) if u.host().is_none_or(str::is_empty) => Some("it has no host".to_string()),
            Ok(_) => None,
        };
        match problem {
            Some(why) => {
                self.err(
                    line,
                    format!("{what}: `alert_webhook` {url:?} is not a usable URL: {why}"),
                );
                String::new()
            }
            None => url,
        }
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

    #[test]
    fn alert_webhook_is_an_http_url() {
        let l = load("teams:\n  - id: pay\n    alert_webhook: https://hooks.example.com/T0/B1?x=1\n  - id: ops\n")
            .expect("valid teams");
        let t = &l.registry.teams;
        assert_eq!(t[0].alert_webhook, "https://hooks.example.com/T0/B1?x=1");
        assert_eq!(t[1].alert_webhook, "", "optional");
        for (bad, why) in [
            ("hooks.example.com/x", "not a usable URL"),
            ("ftp://hooks.example.com/x", "scheme must be http or https"),
            ("http://", "not a usable URL"),
            ("http://exa mple.com/", "not a usable URL"),
        ] {
            assert_problem(
                &format!("teams:\n  - id: t\n    name: T\n    alert_webhook: \"{bad}\"\n"),
                4,
                why,
            );
        }
        assert_problem(
            "teams:\n  - id: t\n    alert_webhook: [x]\n",
            3,
            "`alert_webhook` must be a string",
        );
    }
}
