//! Route templates (`POST /v1/payments/{id}/refunds`): parsing, matching a request path without allocating, and
//! inferring a template for unregistered paths (numeric, UUID, hex and long opaque segments become `{id}`).

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
        if let Some(m) = &self.method {
            if !m.eq_ignore_ascii_case(method) {
                return false;
            }
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
}

/// Non-empty segments of a path: `/a//b/` -> `a`, `b`; `/` -> none. A byte loop finds each `/`: segments are a few
/// bytes long, and `str::split`'s searcher cost more per call than the scan (every exchange splits its path twice).
pub(crate) fn split_path(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = path;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let (seg, tail) = match rest.bytes().position(|b| b == b'/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        rest = tail;
        if !seg.is_empty() {
            return Some(seg);
        }
    })
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
}
