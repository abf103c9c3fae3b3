//! Line-tracking YAML: a node tree where every node knows its 1-based source line (for `FILE:LINE: message`
//! diagnostics), bounded in input size, node count and alias expansion (one hostile edit must not exhaust the
//! agent's memory on hot reload), plus a tiny writer used by the importers.
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML syntax error, with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {col}: {message}")]
pub struct SyntaxError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// One YAML node and the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// Any scalar as written (numbers and booleans too); `quoted` is true for quoted and block styles.
    Scalar {
        text: String,
        quoted: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn null(line: usize) -> Self {
        Node {
            line,
            value: Value::Null,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// The scalar text, if this is a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The value under a scalar key of a mapping (first occurrence).
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// A short description of the node's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing",
            Value::Scalar { .. } => "a scalar",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Largest YAML/JSON input read or parsed (the GitHub and Stripe OpenAPI descriptions are 10 to 12 MB).
pub const MAX_INPUT_BYTES: usize = 64 << 20;
/// Most nodes in one document, aliases expanded.
pub const MAX_NODES: usize = 4_000_000;
/// Most nodes that aliases may add by expansion (a "billion laughs" document crosses this in a few hundred bytes).
pub const MAX_ALIAS_NODES: usize = 250_000;

/// Reads a text file of at most [`MAX_INPUT_BYTES`] without reading more than that.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_INPUT_BYTES as u64 + 1)
        .read_to_string(&mut text)?;
    if text.len() > MAX_INPUT_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("file is larger than {} MiB", MAX_INPUT_BYTES >> 20),
        ));
    }
    Ok(text)
}

/// Parses the first document of `text` (JSON is accepted too; a leading byte order mark is skipped). An empty text
/// is a null node. Inputs over [`MAX_INPUT_BYTES`], [`MAX_NODES`] or [`MAX_ALIAS_NODES`] are refused.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    parse_bounded(text, MAX_NODES, MAX_ALIAS_NODES)
}

fn parse_bounded(
    text: &str,
    max_nodes: usize,
    max_alias_nodes: usize,
) -> Result<Node, SyntaxError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.len() > MAX_INPUT_BYTES {
        return Err(SyntaxError {
            line: 1,
            col: 1,
            message: format!(
                "input is larger than {} MiB ({} bytes)",
                MAX_INPUT_BYTES >> 20,
                text.len()
            ),
        });
    }
    let mut builder = Builder {
        max_nodes,
        max_alias_nodes,
        ..Builder::default()
    };
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, true).map_err(|e| SyntaxError {
        line: e.marker().line(),
        col: e.marker().col() + 1,
        message: e.info().to_string(),
    })?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    if builder.documents > 1 {
        return Err(SyntaxError {
            line: builder.second_document_line,
            col: 1,
            message: "more than one YAML document; expected exactly one".into(),
        });
    }
    Ok(builder.root.unwrap_or(Node::null(1)))
}

enum Open {
    Seq(Node),
    /// A mapping under construction and its pending key.
    Map(Node, Option<Node>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Open, usize)>,
    /// Anchored nodes and their sizes in nodes.
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
    alias_nodes: usize,
    max_nodes: usize,
    max_alias_nodes: usize,
    root: Option<Node>,
    documents: usize,
    second_document_line: usize,
    error: Option<SyntaxError>,
}

/// Number of nodes in the tree under `node`, itself included.
fn size(node: &Node) -> usize {
    1 + match &node.value {
        Value::Seq(items) => items.iter().map(size).sum(),
        Value::Map(entries) => entries.iter().map(|(k, v)| size(k) + size(v)).sum(),
        Value::Null | Value::Scalar { .. } => 0,
    }
}

impl Builder {
    /// Counts `n` more nodes; false (and the error recorded) when that crosses a bound.
    fn count(&mut self, n: usize, alias: bool, mark: Marker) -> bool {
        self.nodes += n;
        if alias {
            self.alias_nodes += n;
        }
        let message = if alias && self.alias_nodes > self.max_alias_nodes {
            format!(
                "aliases expand to more than {} nodes (nested aliases, a \"billion laughs\" document?)",
                self.max_alias_nodes
            )
        } else if self.nodes > self.max_nodes {
            format!("more than {} nodes in the document", self.max_nodes)
        } else {
            return true;
        };
        self.error.get_or_insert(SyntaxError {
            line: mark.line().max(1),
            col: mark.col() + 1,
            message,
        });
        false
    }

    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            let n = size(&node);
            self.anchors.insert(anchor, (node.clone(), n));
        }
        match self.stack.last_mut() {
            None => {
                if self.documents == 1 && self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((Open::Seq(seq), _)) => {
                if let Value::Seq(items) = &mut seq.value {
                    items.push(node);
                }
            }
            Some((Open::Map(map, pending), _)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => {
                    if let Value::Map(entries) = &mut map.value {
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line().max(1);
        let adds = matches!(
            ev,
            Event::Scalar(..) | Event::SequenceStart(..) | Event::MappingStart(..)
        );
        if adds && !self.count(1, false, mark) {
            return;
        }
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents == 2 {
                    self.second_document_line = line;
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == TScalarStyle::Plain;
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL")
                {
                    Value::Null
                } else {
                    Value::Scalar {
                        text,
                        quoted: !plain,
                    }
                };
                self.push_value(Node { line, value }, anchor);
            }
            Event::SequenceStart(anchor, _) => self.stack.push((
                Open::Seq(Node {
                    line,
                    value: Value::Seq(Vec::new()),
                }),
                anchor,
            )),
            Event::MappingStart(anchor, _) => self.stack.push((
                Open::Map(
                    Node {
                        line,
                        value: Value::Map(Vec::new()),
                    },
                    None,
                ),
                anchor,
            )),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((open, anchor)) = self.stack.pop() {
                    let node = match open {
                        Open::Seq(n) | Open::Map(n, _) => n,
                    };
                    self.push_value(node, anchor);
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).map(|(_, n)| *n) {
                Some(n) => {
                    if self.count(n, true, mark) {
                        let mut node = self.anchors[&id].0.clone();
                        node.line = line;
                        self.push_value(node, 0);
                    }
                }
                None => {
                    self.error.get_or_insert(SyntaxError {
                        line,
                        col: mark.col() + 1,
                        message: "alias refers to an unknown anchor".into(),
                    });
                }
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

/// Renders `s` as a YAML scalar: plain when unambiguous, else double-quoted (JSON string syntax is valid YAML).
pub fn scalar(s: &str) -> String {
    let plain_safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '@'))
        && !s.starts_with(['-', '.', '@'])
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "~"
        )
        && s.parse::<f64>().is_err()
        && !s.starts_with(|c: char| c.is_ascii_digit());
    if plain_safe {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

/// Renders a flow list of scalars: `[a, "b c"]`.
pub fn flow_list<S: AsRef<str>>(items: &[S]) -> String {
    let parts: Vec<String> = items.iter().map(|s| scalar(s.as_ref())).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_carry_their_lines() {
        let doc = parse("a: 1\nb:\n  - x\n  - y: 2\n    z: \"q\"\nc: ~\n")
            .expect("valid YAML must parse");
        assert_eq!(doc.line, 1, "root mapping starts on line 1");
        let b = doc.get("b").expect("key b present");
        let seq = b.as_seq().expect("b is a list");
        assert_eq!(seq[0].line, 3, "first item on line 3");
        assert_eq!(seq[1].get("z").map(|n| n.line), Some(5), "z on line 5");
        assert_eq!(
            seq[1].get("z").map(|n| &n.value),
            Some(&Value::Scalar {
                text: "q".into(),
                quoted: true
            }),
            "quoted scalar keeps its text and style"
        );
        assert!(doc.get("c").expect("c present").is_null(), "~ is null");
        assert_eq!(doc.get("a").and_then(Node::as_str), Some("1"));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1, 2\nb: 3\n").expect_err("unclosed flow list must fail");
        assert!(err.line >= 1, "error has a line: {err}");
        let err = parse("a: 1\n---\nb: 2\n").expect_err("two documents must be refused");
        assert_eq!(err.line, 2, "second document line reported: {err}");
    }

    #[test]
    fn anchors_and_aliases_resolve() {
        let doc = parse("base: &b [x, y]\nother: *b\n").expect("aliases parse");
        assert_eq!(
            doc.get("other").and_then(Node::as_seq).map(|s| s.len()),
            Some(2),
            "alias expands to the anchored list"
        );
    }

    #[test]
    fn scalars_render_safely() {
        assert_eq!(scalar("payments-api"), "payments-api");
        assert_eq!(scalar("yes"), "\"yes\"");
        assert_eq!(scalar("8080"), "\"8080\"");
        assert_eq!(scalar("a: b"), "\"a: b\"");
        assert_eq!(scalar(""), "\"\"");
        assert_eq!(flow_list(&["a", "b c"]), "[a, \"b c\"]");
        let back =
            parse(&format!("k: {}\n", scalar("we\"ird: {x}"))).expect("rendered scalar parses");
        assert_eq!(back.get("k").and_then(Node::as_str), Some("we\"ird: {x}"));
    }

    /// The 555-byte "billion laughs" of issue #18: nine levels of nine aliases.
    fn laughs(levels: usize) -> String {
        let mut y = "a0: &a0 [lol]\n".to_string();
        for i in 1..levels {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            y.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        y
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let err = parse(&laughs(10)).expect_err("exponential aliases refused");
        assert!(err.message.contains("aliases expand to more than"), "{err}");
        assert!(
            err.line >= 2,
            "the alias that crossed the bound is named: {err}"
        );
        parse(&laughs(4)).expect("a few hundred expanded nodes are fine");
    }

    #[test]
    fn input_and_node_counts_are_bounded() {
        let big = "x".repeat(MAX_INPUT_BYTES + 1);
        let err = parse(&big).expect_err("oversized input refused");
        assert!(err.message.contains("larger than"), "{err}");
        let many = "a: [1, 2, 3]\nb: [4, 5, 6]\n";
        parse_bounded(many, 11, 0).expect("the root, 2 keys, 2 lists and 6 items are 11 nodes");
        let err = parse_bounded(many, 10, 0).expect_err("11 nodes over a bound of 10");
        assert_eq!(
            (err.line, err.message.as_str()),
            (2, "more than 10 nodes in the document")
        );
    }

    #[test]
    fn byte_order_mark_is_stripped() {
        let doc = parse("\u{feff}a: 1\n").expect("BOM is not content");
        assert_eq!(doc.get("a").and_then(Node::as_str), Some("1"));
        let doc = parse("\u{feff}{\"a\": 2}").expect("JSON with a BOM");
        assert_eq!(doc.get("a").and_then(Node::as_str), Some("2"));
    }

    #[test]
    fn files_are_read_within_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("big.yaml");
        let f = std::fs::File::create(&p).expect("create");
        f.set_len(MAX_INPUT_BYTES as u64 + 10).expect("sparse file");
        let err = read_text(&p).expect_err("oversized file refused without reading it all");
        assert!(err.to_string().contains("larger than"), "{err}");
        std::fs::write(&p, "\u{feff}a: 1\n").expect("write");
        assert_eq!(read_text(&p).expect("reads"), "\u{feff}a: 1\n");
    }
}
