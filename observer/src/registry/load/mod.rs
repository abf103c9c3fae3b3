//! Loading and validating a registry file: every problem is collected with the line it is on (unknown references,
//! duplicate ids, overlapping API matchers, unparsable route templates, dates out of order, ...), so
//! `registry check` can print them all as `FILE:LINE: message`. One submodule per section of the file (teams, apis,
//! applications, keys), `fields` for the field readers they share, `cross` for checks across sections, and
//! `source` for the files and environment variables a registry refers to (so validation does no I/O itself).
mod apis;
mod applications;
mod cross;
mod fields;
mod keys;
mod source;
mod teams;
#[cfg(test)]
mod test_support;
use std::fmt;
use std::path::{Path, PathBuf};

use super::fingerprint::{KeySecret, SecretError};
use super::model::{Api, ApiMatch, Application, Key, Registry, Team};
use super::yaml::{self, Node};

/// Why two matchers of different APIs would match the same requests (the loader refuses such a registry), if they do.
pub(crate) use apis::{is_header_name, is_host_shape, is_literal_path};
pub use cross::overlap as matchers_overlap;
#[cfg(test)]
pub use source::InMemory;
pub use source::{Source, System};

/// One problem in a registry file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub message: String,
}

/// Problems rendered one per line as `FILE:LINE: message`.
pub struct Problems<'a> {
    pub path: &'a Path,
    pub problems: &'a [Problem],
}

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}: {}", self.path.display(), p.line, p.message)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: cannot read registry: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} problem(s) in registry:\n{}", problems.len(), Problems { path, problems })]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{path}: {message}")]
    Import { path: PathBuf, message: String },
    #[error("{path}: --strict: {count} item(s) dropped or approximated by the import")]
    Strict { path: PathBuf, count: usize },
    #[error("cannot read the key from standard input: {0}")]
    Stdin(std::io::Error),
    #[error("empty key: give the API key as an argument or on standard input")]
    EmptyKey,
}

/// A successfully loaded registry with what it was built from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub registry: Registry,
    /// Files the registry read besides itself (OpenAPI documents, key files): a change to any triggers a reload.
    pub dependencies: Vec<PathBuf>,
}

/// Reads and validates the registry at `path`. Relative paths inside it resolve against its directory.
pub fn load_file(path: &Path, secret: &KeySecret) -> Result<Loaded, RegistryError> {
    let text = super::yaml::read_text(path).map_err(|source| RegistryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, base, secret).map_err(|problems| RegistryError::Invalid {
        path: path.to_path_buf(),
        problems,
    })
}

/// Validates registry text, reading the files and variables it names from the system. `base_dir` resolves
/// relative `openapi:` and `key_file:` paths.
pub fn load_str(text: &str, base_dir: &Path, secret: &KeySecret) -> Result<Loaded, Vec<Problem>> {
    load_with(text, base_dir, secret, &System)
}

/// Validates registry text; `source` supplies the files and environment variables it names.
pub fn load_with(
    text: &str,
    base_dir: &Path,
    secret: &KeySecret,
    source: &dyn Source,
) -> Result<Loaded, Vec<Problem>> {
    let root = parse_yaml(text)?;
    let mut cx = Ctx {
        problems: Vec::new(),
        base_dir: base_dir.to_path_buf(),
        secret,
        source,
        dependencies: Vec::new(),
    };
    let registry = cx.registry(&root);
    if cx.problems.is_empty() {
        Ok(Loaded {
            registry,
            dependencies: cx.dependencies,
        })
    } else {
        let mut problems = cx.problems;
        problems.sort_by_key(|p| p.line);
        Err(problems)
    }
}

/// The YAML document, or its syntax error as the file's one problem.
fn parse_yaml(text: &str) -> Result<Node, Vec<Problem>> {
    yaml::parse(text).map_err(|e| {
        vec![Problem {
            line: e.line,
            message: format!("YAML syntax error at column {}: {}", e.col, e.message),
        }]
    })
}

/// Reads one API matcher written as YAML (a flow mapping such as `{hosts: [a.com], base_path: [/v1]}`) exactly as
/// the loader reads an item of an API's `match:`, with the loader's problems. Importers check what they write with
/// it and [`matchers_overlap`], so that the loader accepts their output without a second copy of its rules.
pub fn parse_matcher(text: &str, secret: &KeySecret) -> Result<ApiMatch, Vec<Problem>> {
    let node = parse_yaml(text)?;
    let mut cx = Ctx {
        problems: Vec::new(),
        base_dir: PathBuf::new(),
        secret,
        source: &System,
        dependencies: Vec::new(),
    };
    let m = cx.api_match(&node, "api");
    if cx.problems.is_empty() {
        Ok(m)
    } else {
        Err(cx.problems)
    }
}

/// Validation state: the problems found so far and what the sections need to read.
struct Ctx<'s> {
    problems: Vec<Problem>,
    base_dir: PathBuf,
    secret: &'s KeySecret,
    source: &'s dyn Source,
    dependencies: Vec<PathBuf>,
}

impl Ctx<'_> {
    fn registry(&mut self, root: &Node) -> Registry {
        if root.is_null() {
            return Registry::default();
        }
        if !self.fields(
            root,
            "registry",
            &["version", "teams", "apis", "applications", "keys"],
        ) {
            return Registry::default();
        }
        if let Some((v, line)) = self.opt_str(root, "version", "registry") {
            if v != "1" {
                self.err(
                    line,
                    format!("unsupported registry version `{v}` (expected 1)"),
                );
            }
        }
        let teams: Vec<Team> = self
            .section(root, "teams")
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.team(n, i))
            .collect();
        let apis: Vec<Api> = self
            .section(root, "apis")
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.api(n, i))
            .collect();
        let applications: Vec<Application> = self
            .section(root, "applications")
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.application(n, i))
            .collect();
        let keys: Vec<Key> = self
            .section(root, "keys")
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.key(n, i))
            .collect();
        let mut reg = Registry {
            teams,
            apis,
            applications,
            keys,
        };
        self.cross_check(&mut reg);
        reg
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use std::path::PathBuf;

    use crate::event::KeyState;
    use crate::registry::load::*;
    use crate::registry::model::*;

    #[test]
    fn example_registry_is_valid() {
        let path = examples().join("registry.yaml");
        let secret = KeySecret::example();
        let loaded = load_file(&path, &secret)
            .unwrap_or_else(|e| panic!("examples/registry.yaml must be valid: {e}"));
        let r = &loaded.registry;
        assert_eq!(
            (
                r.teams.len(),
                r.apis.len(),
                r.applications.len(),
                r.keys.len()
            ),
            (4, 4, 4, 4)
        );
        let pay = &r.apis[0];
        assert_eq!(
            pay.line_of_business, "Retail",
            "inherited from the owner team"
        );
        assert!(
            pay.routes.iter().any(|t| t.path == "/v1/payments/search"),
            "routes from the OpenAPI file are added"
        );
        assert_eq!(
            loaded.dependencies,
            vec![examples().join("payments-openapi.yaml")]
        );
        let pp = r
            .applications
            .iter()
            .find(|a| a.id == "partner-portal")
            .expect("partner-portal");
        assert_eq!(
            pp.line_of_business, "Partnerships",
            "own LoB overrides the team's"
        );
        let legacy = r
            .keys
            .iter()
            .find(|k| k.id == "legacy-checkout-prod")
            .expect("legacy key");
        assert_eq!(legacy.grants.len(), 1, "apis shorthand becomes a grant");
        assert_eq!(
            legacy.state(
                Some("payments-api"),
                parse_date("2026-04-01").expect("date")
            ),
            KeyState::Revoked
        );
        assert_eq!(
            secret.fingerprint_hex(b"sk_live_mobile_checkout_7Hq2x93f9a"),
            r.keys[0].fingerprint,
            "example fingerprint matches its documented example key"
        );
    }

    #[test]
    fn empty_registry_is_valid() {
        let l = load("").expect("empty file is an empty registry");
        assert_eq!(l.registry, Registry::default());
        let l = load("version: 1\nteams: []\n").expect("empty sections are fine");
        assert!(l.registry.apis.is_empty());
        load(BASE).expect("base fixture is valid");
    }

    #[test]
    fn syntax_error_has_line() {
        assert_problem("teams:\n  - id: t\n  - id: [x\n", 4, "YAML syntax error");
    }

    #[test]
    fn every_problem_is_reported_in_line_order() {
        let text = "teams:\n  - id: t\n  - id: t\napis:\n  - id: a\n    owner: x\n    match: {ports: 99999}\n";
        let ps = problems(text);
        assert!(ps.len() >= 3, "all problems collected: {ps:?}");
        assert!(
            ps.windows(2).all(|w| w[0].line <= w[1].line),
            "sorted by line: {ps:?}"
        );
        let err = RegistryError::Invalid {
            path: PathBuf::from("reg.yaml"),
            problems: ps,
        };
        let msg = err.to_string();
        assert!(
            msg.contains("reg.yaml:3: duplicate team id"),
            "FILE:LINE: message format: {msg}"
        );
        assert!(msg.contains("reg.yaml:7: "), "{msg}");
    }
}
