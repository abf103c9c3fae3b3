//! Route templates (`POST /v1/payments/{id}/refunds`): parsing, matching a request path without allocating, and
//! inferring a template for unregistered paths (numeric, UUID, hex and long opaque segments become `{id}`).

use std::collections::HashMap;

/// One piece of a path segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Param,
}

/// A parsed route template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTemplate {
    /// Upper-case method, or `None` for any method.
    pub method: Option<String>,
    /// The path template as written (`/v1/payments/{id}`), emitted as the event's `route`.
    pub path: String,
    segments: Vec<Vec<Part>>,
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl RouteTemplate {
    /// Parses `"[METHOD ]/path/{param}/..."`. Errors say what is wrong with the template.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (method, path) = match text.split_once(char::is_whitespace) {
            Some((m, p)) => (Some(m), p.trim()),
            None => (None, text),
        };
        let method = match method {
            Some(m) => {
                let upper = m.to_ascii_uppercase();
                if !METHODS.contains(&upper.as_str()) {
                    return Err(format!("unknown HTTP method `{m}`"));
                }
                Some(upper)
            }
            None => None,
        };
        if !path.starts_with('/') {
            return Err(format!("path `{path}` must start with `/`"));
        }
        if path.contains(['?', '#', ' ']) {
            return Err(format!(
                "path `{path}` must not contain a query, fragment or space"
            ));
        }
        let mut names: Vec<&str> = Vec::new();
        let mut segments = Vec::new();
        for seg in split_path(path) {
            let mut parts = Vec::new();
            let mut rest = seg;
            while !rest.is_empty() {
                if let Some(inner) = rest.strip_prefix('{') {
                    let close = inner
                        .find('}')
                        .ok_or_else(|| format!("unclosed `{{` in segment `{seg}`"))?;
                    let name = &inner[..close];
                    if name.is_empty() {
                        return Err(format!("empty parameter name in segment `{seg}`"));
                    }
                    if name.contains('{') || name.contains('/') {
                        return Err(format!("nested `{{` in segment `{seg}`"));
                    }
                    if names.contains(&name) {
                        return Err(format!("parameter `{{{name}}}` appears twice"));
                    }
                    if parts.last() == Some(&Part::Param) {
                        return Err(format!(
                            "adjacent parameters in segment `{seg}` cannot be told apart"
                        ));
                    }
                    names.push(name);
                    parts.push(Part::Param);
                    rest = &inner[close + 1..];
                } else {
                    let end = rest.find(['{', '}']).unwrap_or(rest.len());
                    if rest[end..].starts_with('}') {
                        return Err(format!("unmatched `}}` in segment `{seg}`"));
                    }
                    parts.push(Part::Lit(rest[..end].to_string()));
                    rest = &rest[end..];
                }
            }
            segments.push(parts);
        }
        Ok(RouteTemplate {
            method,
            path: path.to_string(),
            segments,
        })
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Sort key: more specific templates first (literal segments before parameters, left to right; methods before
    /// any-method).
    pub fn specificity(&self) -> (Vec<u8>, bool) {
        let shape = self
            .segments
            .iter()
            .map(|parts| match parts.as_slice() {
                [Part::Lit(_)] | [] => 0,
                p if p.iter().any(|x| matches!(x, Part::Lit(_))) => 1,
                _ => 2,
            })
            .collect();
        (shape, self.method.is_none())
    }

    /// Whether a request (`method`, `path` without query) matches. Does not allocate.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if !self.method_matches(method) {
            return false;
        }
        let mut segs = split_path(path);
        for parts in &self.segments {
            match segs.next() {
                Some(seg) if segment_matches(parts, seg) => {}
                _ => return false,
            }
        }
        segs.next().is_none()
    }

    fn method_matches(&self, method: &str) -> bool {
        self.method
            .as_ref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
    }
}

/// An API's route templates as a tree of path segments: finding a request's route reads the templates that share
/// its segments, not all of them (an API imported from a gateway or an OpenAPI file may have hundreds). It answers
/// what trying every template in [`RouteTemplate::specificity`] order with [`RouteTemplate::matches`] would.
#[derive(Debug, Default)]
pub struct RouteIndex {
    root: RouteNode,
}

#[derive(Debug, Default)]
struct RouteNode {
    /// Children by a segment that is one literal, compared exactly.
    literal: HashMap<Box<str>, RouteNode, foldhash::fast::RandomState>,
    /// Children by a segment with a parameter in it, each tried.
    pattern: Vec<(Vec<Part>, RouteNode)>,
    /// Templates that end here as (rank, index), in rank order: a template's rank is its place in specificity order.
    ends: Vec<(u32, u32)>,
}

impl RouteIndex {
    pub fn build(routes: &[RouteTemplate]) -> Self {
        let mut order: Vec<usize> = (0..routes.len()).collect();
        // Stable: templates as specific as each other keep their order in the file.
        order.sort_by_key(|&i| routes[i].specificity());
        let mut root = RouteNode::default();
        for (rank, &i) in order.iter().enumerate() {
            let mut node = &mut root;
            for parts in &routes[i].segments {
                node = match parts.as_slice() {
                    [Part::Lit(l)] => node.literal.entry(l.as_str().into()).or_default(),
                    _ => {
                        let at = match node.pattern.iter().position(|(p, _)| p == parts) {
                            Some(at) => at,
                            None => {
                                node.pattern.push((parts.clone(), RouteNode::default()));
                                node.pattern.len() - 1
                            }
                        };
                        &mut node.pattern[at].1
                    }
                };
            }
            node.ends.push((rank as u32, i as u32));
        }
        RouteIndex { root }
    }

    /// The most specific of `routes` (those this index was built from) that matches `method` and `path`, by index.
    pub fn find(&self, routes: &[RouteTemplate], method: &str, path: &str) -> Option<usize> {
        let mut best = None;
        self.root.find(routes, method, path, &mut best);
        best.map(|(_, i)| i as usize)
    }
}

impl RouteNode {
    /// Walks the segments of `rest` down the tree (as deep as the longest template, no deeper), keeping in `best` the
    /// lowest-ranked template whose method matches at the end.
    fn find(
        &self,
        routes: &[RouteTemplate],
        method: &str,
        rest: &str,
        best: &mut Option<(u32, u32)>,
    ) {
        let Some((seg, tail)) = next_segment(rest) else {
            for &(rank, i) in &self.ends {
                if best.is_some_and(|(b, _)| b < rank) {
                    return;
                }
                if routes[i as usize].method_matches(method) {
                    *best = Some((rank, i));
                    return;
                }
            }
            return;
        };
        if let Some(n) = self.literal.get(seg) {
            n.find(routes, method, tail, best);
        }
        for (parts, n) in &self.pattern {
            if segment_matches(parts, seg) {
                n.find(routes, method, tail, best);
            }
        }
    }
}

/// Non-empty segments of a path: `/a//b/` -> `a`, `b`; `/` -> none. A byte loop finds each `/`: segments are a few
/// bytes long, and `str::split`'s searcher cost more per call than the scan (every exchange walks its path to find
/// its route).
pub(crate) fn split_path(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = path;
    std::iter::from_fn(move || {
        let (seg, tail) = next_segment(rest)?;
        rest = tail;
        Some(seg)
    })
}

/// The first non-empty segment of `rest` and what follows it (see [`split_path`]).
fn next_segment(mut rest: &str) -> Option<(&str, &str)> {
    loop {
        if rest.is_empty() {
            return None;
        }
        let (seg, tail) = match rest.bytes().position(|b| b == b'/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        if !seg.is_empty() {
            return Some((seg, tail));
        }
        rest = tail;
    }
}

fn segment_matches(parts: &[Part], seg: &str) -> bool {
    match parts.split_first() {
        None => seg.is_empty(),
        Some((Part::Lit(l), rest)) => seg
            .strip_prefix(l.as_str())
            .is_some_and(|s| segment_matches(rest, s)),
        Some((Part::Param, rest)) => {
            if rest.is_empty() {
                return !seg.is_empty();
            }
            // A parameter takes at least one character; try each split point.
            (1..=seg.len())
                .filter(|&i| seg.is_char_boundary(i))
                .any(|i| segment_matches(rest, &seg[i..]))
        }
    }
}

/// Whether a path segment looks like an identifier rather than a resource name.
pub fn is_id_segment(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    // Numeric.
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    // UUID 8-4-4-4-12.
    if b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    {
        return true;
    }
    let has_digit = b.iter().any(u8::is_ascii_digit);
    // Hex (object ids, hashes): at least 8 hex digits with at least one decimal digit.
    if b.len() >= 8 && has_digit && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    // Long opaque tokens (base64url, ULIDs, slugs with ids): long and mixing digits with letters, or very long.
    let token_chars = b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'=' | b'.' | b'~' | b'%'));
    token_chars && ((b.len() >= 16 && has_digit) || b.len() >= 32)
}

/// Writes the inferred template of `path` into `out` (cleared first): identifier-like segments become `{id}`.
pub fn infer_template(path: &str, out: &mut String) {
    out.clear();
    for seg in split_path(path) {
        out.push('/');
        if is_id_segment(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(s: &str) -> RouteTemplate {
        RouteTemplate::parse(s).unwrap_or_else(|e| panic!("template {s:?} must parse: {e}"))
    }

    #[test]
    fn paths_split_into_their_non_empty_segments() {
        fn split(p: &str) -> Vec<&str> {
            split_path(p).collect()
        }
        assert_eq!(split("/v1/orders/12345"), ["v1", "orders", "12345"]);
        assert_eq!(split("//a//b/"), ["a", "b"]);
        assert_eq!(split("a/\u{e9}t\u{e9}"), ["a", "\u{e9}t\u{e9}"]);
        assert!(split("/").is_empty() && split("").is_empty() && split("///").is_empty());
    }

    #[test]
    fn parses_methods_and_params() {
        let r = route("post /v1/payments/{id}/refunds");
        assert_eq!(r.method.as_deref(), Some("POST"), "method upper-cased");
        assert_eq!(r.path, "/v1/payments/{id}/refunds");
        assert_eq!(r.segment_count(), 4);
        assert_eq!(route("/health").method, None, "no method means any");
    }

    #[test]
    fn rejects_bad_templates_with_reasons() {
        let cases = [
            ("v1/x", "must start with `/`"),
            ("/v1/{id", "unclosed `{`"),
            ("/v1/id}", "unmatched `}`"),
            ("/v1/{}", "empty parameter name"),
            ("/v1/{a}/{a}", "appears twice"),
            ("/v1/{a}{b}", "adjacent parameters"),
            ("FETCH /v1", "unknown HTTP method"),
            ("/v1?x=1", "must not contain a query"),
        ];
        for (text, want) in cases {
            let err = RouteTemplate::parse(text).expect_err(&format!("{text:?} must be refused"));
            assert!(
                err.contains(want),
                "error for {text:?} was {err:?}, wanted {want:?}"
            );
        }
    }

    #[test]
    fn matches_paths() {
        let r = route("POST /v1/payments/{id}/refunds");
        assert!(r.matches("POST", "/v1/payments/42/refunds"));
        assert!(
            r.matches("post", "/v1/payments/42/refunds/"),
            "trailing slash and case"
        );
        assert!(
            !r.matches("GET", "/v1/payments/42/refunds"),
            "method differs"
        );
        assert!(!r.matches("POST", "/v1/payments/42"), "too short");
        assert!(!r.matches("POST", "/v1/payments/42/refunds/x"), "too long");
        assert!(
            !r.matches("POST", "/v1/payments//refunds"),
            "empty param segment"
        );
        let f = route("/files/{name}.{ext}");
        assert!(
            f.matches("GET", "/files/report.final.pdf"),
            "partial-segment params"
        );
        assert!(!f.matches("GET", "/files/report"), "needs the dot");
        assert!(route("/").matches("GET", "/"));
        assert!(!route("/").matches("GET", "/x"));
    }

    #[test]
    fn specificity_prefers_literals_and_methods() {
        let lit = route("/v1/payments/search");
        let param = route("/v1/payments/{id}");
        assert!(
            lit.specificity() < param.specificity(),
            "literal before param"
        );
        let with_method = route("GET /v1/payments/{id}");
        assert!(
            with_method.specificity() < param.specificity(),
            "method before any-method"
        );
    }

    #[test]
    fn id_segments() {
        for id in [
            "42",
            "0",
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            "507f1f77bcf86cd799439011",
            "deadbeef01",
            "01HZX3K9Q8M7N6P5R4S3T2V1W0",
            "dGhpcyBpcyBhIHRva2VuIHZhbHVl-x1",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(is_id_segment(id), "{id:?} should be an id");
        }
        for word in [
            "payments",
            "v1",
            "refunds",
            "deadbeef",
            "cafe",
            "user-profile",
            "v2beta1",
        ] {
            assert!(!is_id_segment(word), "{word:?} should stay literal");
        }
    }

    #[test]
    fn infers_templates() {
        let mut out = String::new();
        infer_template(
            "/v1/users/12345/orders/3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            &mut out,
        );
        assert_eq!(out, "/v1/users/{id}/orders/{id}");
        infer_template("/", &mut out);
        assert_eq!(out, "/");
        infer_template("/objects/507f1f77bcf86cd799439011/", &mut out);
        assert_eq!(out, "/objects/{id}");
    }

    #[test]
    fn the_index_finds_the_route_trying_every_template_finds() {
        use crate::registry::api_index::tests::Rng;
        const SEGMENTS: &[&str] = &["v1", "orders", "users", "{id}", "{id}.json", "v{n}", "x"];
        const REQUEST: &[&str] = &[
            "v1", "orders", "users", "42", "7.json", "v2", "x", ".json", "",
        ];
        let mut found = 0;
        for seed in 1..=400u64 {
            let mut r = Rng::seeded(seed);
            let routes: Vec<RouteTemplate> = (0..r.below(14))
                .map(|_| {
                    let method = r.pick(&["", "GET ", "POST "]);
                    let mut path = String::new();
                    for (k, seg) in r.some(SEGMENTS, 4).into_iter().enumerate() {
                        // A parameter name once per template.
                        path.push('/');
                        path.push_str(
                            &seg.replace("{id}", &format!("{{id{k}}}"))
                                .replace("{n}", &format!("{{n{k}}}")),
                        );
                    }
                    route(&format!(
                        "{method}{}",
                        if path.is_empty() { "/" } else { &path }
                    ))
                })
                .collect();
            let mut order: Vec<usize> = (0..routes.len()).collect();
            order.sort_by_key(|&i| routes[i].specificity());
            let index = RouteIndex::build(&routes);
            for _ in 0..40 {
                let path: String = r.some(REQUEST, 4).iter().map(|s| format!("/{s}")).collect();
                let method = r.pick(&["GET", "POST", "get", "DELETE"]);
                let want = order
                    .iter()
                    .copied()
                    .find(|&i| routes[i].matches(method, &path));
                assert_eq!(
                    index.find(&routes, method, &path),
                    want,
                    "seed {seed}: {method} {path:?} among {routes:#?}"
                );
                found += usize::from(want.is_some());
            }
        }
        assert!(found > 1_000, "{found} requests matched a route");
    }
}
