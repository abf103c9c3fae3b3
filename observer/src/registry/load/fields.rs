//! Field readers every section shares: a mapping's allowed keys, strings and lists of strings, dates, ids and the
//! labels items are called by in messages. Each records a problem with its line instead of failing.
use std::collections::HashMap;

use crate::event::Timestamp;

use super::super::model::parse_date;
use super::super::yaml::Node;
use super::{Ctx, Problem};

/// What an item is called in messages: `api `payments`` or `apis[3]` before its id is known.
pub(super) fn label(kind: &str, section: &str, index: usize, id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{kind} `{id}`"),
        None => format!("{section}[{index}]"),
    }
}

/// A date as written in registries: `2026-03-02` at midnight UTC, else RFC 3339.
pub(super) fn show(t: Timestamp) -> String {
    let s = t.to_rfc3339();
    if t.0 % 86_400_000_000 == 0 {
        s[..10].to_string()
    } else {
        s
    }
}

pub(super) fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'))
}

impl Ctx<'_> {
    pub(super) fn err(&mut self, line: usize, message: impl Into<String>) {
        self.problems.push(Problem {
            line,
            message: message.into(),
        });
    }

    /// Checks `node` is a mapping with only `allowed` keys, each once. Returns false when it is not a mapping.
    pub(super) fn fields(&mut self, node: &Node, what: &str, allowed: &[&str]) -> bool {
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

    pub(super) fn opt_str(
        &mut self,
        node: &Node,
        key: &str,
        what: &str,
    ) -> Option<(String, usize)> {
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

    pub(super) fn req_str(
        &mut self,
        node: &Node,
        key: &str,
        what: &str,
    ) -> Option<(String, usize)> {
        let v = self.opt_str(node, key, what);
        if v.is_none() && node.get(key).is_none_or(Node::is_null) {
            self.err(node.line, format!("{what}: missing required field `{key}`"));
        }
        v
    }

    /// A string or a list of strings.
    pub(super) fn strings(&mut self, node: &Node, key: &str, what: &str) -> Vec<(String, usize)> {
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

    pub(super) fn opt_date(
        &mut self,
        node: &Node,
        key: &str,
        what: &str,
    ) -> Option<(Timestamp, usize)> {
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

    pub(super) fn section<'n>(&mut self, root: &'n Node, key: &str) -> &'n [Node] {
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

    pub(super) fn id(
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
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

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
}
