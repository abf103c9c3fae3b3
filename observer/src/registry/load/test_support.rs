//! Fixtures and assertions the section tests share.
use std::path::{Path, PathBuf};

pub use super::super::fingerprint::KeySecret;
pub use super::{load_file, load_with, InMemory, Loaded, Problem, Problems};

pub fn secret() -> KeySecret {
    KeySecret::from_bytes(b"test-secret-test-secret")
}

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

pub fn load(text: &str) -> Result<Loaded, Vec<Problem>> {
    load_with(text, &examples(), &secret(), &InMemory::default())
}

pub fn problems(text: &str) -> Vec<Problem> {
    match load(text) {
        Ok(_) => panic!("registry should be invalid:\n{text}"),
        Err(p) => p,
    }
}

/// Asserts that a problem on `line` contains `want`.
pub fn assert_problem(text: &str, line: usize, want: &str) {
    let ps = problems(text);
    assert!(
        ps.iter()
            .any(|p| p.line == line && p.message.contains(want)),
        "expected a problem at line {line} containing {want:?}, got:\n{}",
        Problems {
            path: Path::new("t.yaml"),
            problems: &ps
        }
    );
}

pub const FP: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

pub const BASE: &str = "\
teams:
  - id: t
    line_of_business: Retail
apis:
  - id: a
    owner: t
    match: {hosts: a.example.com}
applications:
  - id: app
    team: t
";
