//! Glob patterns for hosts, process names and cgroup paths: `*` (any run of characters, not crossing the
//! separator when there is one), `**` (any run, crossing separators) and `?` (one character). Matching does not
//! allocate.

/// A compiled glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    /// `*` does not cross this byte (`/` for cgroup paths); `None` lets it match anything.
    separator: Option<u8>,
    case_insensitive: bool,
    literal: bool,
}

impl Glob {
    /// A pattern whose `*` crosses everything (hosts, process names).
    pub fn new(pattern: &str, case_insensitive: bool) -> Self {
        Self::build(pattern, None, case_insensitive)
    }

    /// A path pattern: `*` stays within one `/`-separated segment, `**` spans segments.
    pub fn path(pattern: &str) -> Self {
        Self::build(pattern, Some(b'/'), false)
    }

    fn build(pattern: &str, separator: Option<u8>, case_insensitive: bool) -> Self {
        let pattern = if case_insensitive {
            pattern.to_ascii_lowercase()
        } else {
            pattern.to_string()
        };
        let literal = !pattern.contains(['*', '?']);
        Glob {
            pattern,
            separator,
            case_insensitive,
            literal,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// True when the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    pub fn matches(&self, text: &str) -> bool {
        if self.literal {
            return if self.case_insensitive {
                self.pattern.eq_ignore_ascii_case(text)
            } else {
                self.pattern == text
            };
        }
        match_from(
            self.pattern.as_bytes(),
            text.as_bytes(),
            self.separator,
            self.case_insensitive,
        )
    }

    /// Whether some text could match both patterns. Exact for literals; for two wildcard patterns it answers
    /// true only when one pattern, read literally, matches the other (a conservative, explainable check).
    pub fn may_overlap(&self, other: &Glob) -> bool {
        if self.pattern == other.pattern {
            return true;
        }
        match (self.literal, other.literal) {
            (true, _) => other.matches(&self.pattern),
            (_, true) => self.matches(&other.pattern),
            (false, false) => self.matches(&other.pattern) || other.matches(&self.pattern),
        }
    }
}

fn match_from(p: &[u8], t: &[u8], sep: Option<u8>, ci: bool) -> bool {
    let (mut pi, mut ti) = (0, 0);
    while pi < p.len() {
        match p[pi] {
            b'*' => {
                let double = p.get(pi + 1) == Some(&b'*');
                let rest = if double { pi + 2 } else { pi + 1 };
                // `**/` also matches zero segments.
                if double
                    && p.get(rest) == Some(&b'/')
                    && match_from(&p[rest + 1..], &t[ti..], sep, ci)
                {
                    return true;
                }
                let mut k = ti;
                loop {
                    if match_from(&p[rest..], &t[k..], sep, ci) {
                        return true;
                    }
                    if k == t.len() || (!double && Some(t[k]) == sep) {
                        return false;
                    }
                    k += 1;
                }
            }
            b'?' => {
                if ti == t.len() || Some(t[ti]) == sep {
                    return false;
                }
                pi += 1;
                ti += 1;
            }
            c => {
                let tc = match t.get(ti) {
                    Some(&tc) if ci => tc.to_ascii_lowercase(),
                    Some(&tc) => tc,
                    None => return false,
                };
                if c != tc {
                    return false;
                }
                pi += 1;
                ti += 1;
            }
        }
    }
    ti == t.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_globs_are_case_insensitive() {
        let g = Glob::new("*.Payments.example.com", true);
        assert!(g.matches("api.payments.EXAMPLE.com"), "wildcard subdomain");
        assert!(g.matches("a.b.payments.example.com"), "host * crosses dots");
        assert!(!g.matches("payments.example.com"), "needs a subdomain");
        assert!(Glob::new("API.example.com", true).matches("api.example.COM"));
        assert!(Glob::new("api-?.x", true).matches("api-1.x"));
        assert!(!Glob::new("api-?.x", true).matches("api-12.x"));
    }

    #[test]
    fn path_globs_respect_segments() {
        let g = Glob::path("/kubepods/*/checkout-*");
        assert!(g.matches("/kubepods/burstable/checkout-7f9"));
        assert!(
            !g.matches("/kubepods/a/b/checkout-7f9"),
            "* must not cross /"
        );
        let g = Glob::path("/kubepods/**/checkout-*");
        assert!(g.matches("/kubepods/a/b/checkout-7f9"), "** crosses /");
        assert!(
            g.matches("/kubepods/checkout-1"),
            "**/ matches zero segments"
        );
        assert!(
            !g.matches("/kubepods/a/checkout/x"),
            "last * stays in its segment"
        );
        assert!(Glob::path("/system.slice/**").matches("/system.slice/a/b.service"));
        assert!(!Glob::path("/a").matches("/A"), "paths are case-sensitive");
    }

    #[test]
    fn overlap_is_conservative() {
        let a = Glob::new("*.example.com", true);
        assert!(a.may_overlap(&Glob::new("api.example.com", true)));
        assert!(!a.may_overlap(&Glob::new("api.example.org", true)));
        assert!(a.may_overlap(&Glob::new("*.EXAMPLE.com", true)));
        assert!(!Glob::new("a.com", true).may_overlap(&Glob::new("b.com", true)));
    }
}
