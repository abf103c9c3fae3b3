//! `cargo xtask reliability`: runs the hostile-traffic, fault, least-privilege and secrets suites
//! (`tests/tests/hostile.rs`, `faults.rs`, `faults_clickhouse.rs`, `privileges.rs`, `secrets.rs`), the slow cases `cargo xtask test` leaves out
//! included, collects the figures each case records (one JSON line per case in `target/reliability/cases.jsonl`, see
//! `observer_tests::CaseReport`), the fuzzing figures, and writes RELIABILITY.md. It writes the report whatever the
//! outcome, then fails if a test failed.
use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{clickhouse, fuzz, toolchain};

/// The suites of the tests crate this command runs.
const SUITES: [&str; 5] = [
    "hostile",
    "faults",
    "faults_clickhouse",
    "privileges",
    "secrets",
];

pub fn run(root: &Path, fuzz_time: Option<Duration>) -> Result<()> {
    if !toolchain::is_root() {
        bail!("the reliability suite needs root (eBPF, network namespaces): run `sudo -E cargo xtask reliability`");
    }
    let bin = crate::build_release(root)?;
    toolchain::ensure_packages(toolchain::TEST_PACKAGES)?;
    let py = clickhouse::ensure_venv(root)?;
    let out_dir = root.join("target/reliability");
    std::fs::create_dir_all(&out_dir)?;
    let cases_file = out_dir.join("cases.jsonl");
    let _ = std::fs::remove_file(&cases_file);

    toolchain::say("running the hostile-traffic and fault suites, slow cases included");
    let started = std::time::Instant::now();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["test", "-p", "observer-tests"])
        .args(SUITES.iter().flat_map(|s| ["--test", s]))
        .args(["--", "--test-threads=1", "--include-ignored"])
        .env("OBSERVER_BIN", &bin)
        .env("OBSERVER_CLICKHOUSE_PYTHON", &py)
        .env(
            "OBSERVER_CLICKHOUSE_DEVSERVER",
            root.join("xtask/clickhouse/devserver.py"),
        )
        .env("OBSERVER_RELIABILITY_OUT", &cases_file);
    let out = cmd.output().context("running cargo test")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let tests = test_results(&stdout);
    let elapsed = started.elapsed();

    if let Some(per_target) = fuzz_time {
        let opts = fuzz::Options {
            per_target,
            only: Vec::new(),
            report: true,
        };
        if let Err(e) = fuzz::fuzz(root, &opts) {
            eprintln!("{e:#}");
        }
    }
    let fuzzing = fuzz::last_report(root);
    let cases = read_cases(&cases_file)?;
    let report = render(&cases, &tests, &fuzzing, elapsed, &facts(root));
    // The Soak section belongs to `cargo xtask soak`: keep the one it wrote.
    let path = root.join("RELIABILITY.md");
    let report = match std::fs::read_to_string(&path)
        .ok()
        .and_then(|old| section(&old, SOAK_HEADING))
    {
        Some(soak) => crate::benchmarks_md::replace_section(&report, &soak),
        None => report,
    };
    std::fs::write(&path, report)?;
    toolchain::say(format!(
        "wrote RELIABILITY.md: {} cases, {} tests",
        cases.len(),
        tests.len()
    ));
    let failed: Vec<&String> = tests
        .iter()
        .filter(|(_, ok)| !**ok)
        .map(|(t, _)| t)
        .collect();
    if !out.status.success() || !failed.is_empty() {
        bail!("reliability tests failed: {failed:?} (see RELIABILITY.md and the output above)");
    }
    Ok(())
}

/// `test NAME ... ok|FAILED` lines of libtest's output, by test name.
fn test_results(stdout: &str) -> BTreeMap<String, bool> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("test ")?;
            let (name, result) = rest.rsplit_once(" ... ")?;
            match result.trim() {
                "ok" => Some((name.to_string(), true)),
                "FAILED" => Some((name.to_string(), false)),
                _ => None,
            }
        })
        .collect()
}

/// One recorded case.
#[derive(Debug, Clone, PartialEq)]
struct Case {
    test: String,
    case: String,
    checked: String,
    sent: u64,
    stored: u64,
    counted: Vec<(String, f64)>,
}

fn read_cases(path: &Path) -> Result<Vec<Case>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            Ok(Case {
                test: s("test"),
                case: s("case"),
                checked: s("checked"),
                sent: v["sent"].as_u64().unwrap_or(0),
                stored: v["stored"].as_u64().unwrap_or(0),
                counted: v["counted"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, n)| (k.clone(), n.as_f64().unwrap_or(0.0)))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Where and on what the suite ran.
fn facts(root: &Path) -> String {
    let cmd = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "commit `{}`, kernel {}, {} CPUs",
        cmd("git", &["rev-parse", "--short", "HEAD"]),
        cmd("uname", &["-r"]),
        cmd("nproc", &[]),
    )
}

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn render(
    cases: &[Case],
    tests: &BTreeMap<String, bool>,
    fuzzing: &str,
    elapsed: Duration,
    facts: &str,
) -> String {
    let mut s = String::from(
        "# Reliability\n\n\
         Generated by `sudo -E cargo xtask reliability` (do not edit by hand). It runs the privileged suites \
         `tests/tests/hostile.rs` (hostile and malformed traffic through the real capture path while ordinary traffic \
         flows), `tests/tests/faults.rs` (ClickHouse and agent faults, spool and registry damage, ring-buffer \
         overflow, connection bursts) and `tests/tests/faults_clickhouse.rs` (ClickHouse unreachable for 10 minutes, \
         30 s per insert, its schema changed underneath, the spool's disk full), slow cases included; `cargo xtask test` runs the fast ones in CI. Each case \
         below passed its assertions; a failed test is listed under *Tests* and fails the command.\n\n",
    );
    let _ = writeln!(s, "Run: {facts}, {} s.\n", elapsed.as_secs());
    s.push_str(
        "## Cases\n\n\
         *sent*: exchanges (or connections, bytes streams) sent; *stored*: events the sink under test holds for them \
         (NDJSON or ClickHouse); *counted*: the `/metrics` series each odd case is counted under, with how much it \
         grew, and drops.\n\n\
         | suite | case | what was checked | result | sent | stored | counted |\n|---|---|---|---|---:|---:|---|\n",
    );
    for c in cases {
        let counted = c
            .counted
            .iter()
            .map(|(k, v)| format!("`{}` {}", k, v))
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = writeln!(
            s,
            "| {} | {} | {} | pass | {} | {} | {} |",
            c.test,
            cell(&c.case),
            cell(&c.checked),
            c.sent,
            c.stored,
            cell(&counted)
        );
    }
    s.push_str("\n## Tests\n\n| test | result |\n|---|---|\n");
    for (t, ok) in tests {
        let _ = writeln!(s, "| `{t}` | {} |", if *ok { "ok" } else { "**FAILED**" });
    }
    let _ = write!(
        s,
        "\n## Fuzzing\n\nExecutions per `cargo fuzz` target (`cargo xtask fuzz`, `target/fuzz/report.md`); CI's \
         `cargo xtask test` replays the corpus, then fuzzes each target for {}.\n\n",
        crate::DEFAULT_FUZZ
    );
    s.push_str(fuzzing);
    let _ = writeln!(
        s,
        "\n{SOAK_HEADING}\n\nNot run yet: `sudo -E cargo xtask soak --for 30m` (not in CI) writes this section: RSS, \
         flow tables, spool and ClickHouse lag under 30 minutes of steady traffic, plotted, with a flatness verdict."
    );
    s
}

const SOAK_HEADING: &str = "## Soak";

/// The `## ` section of `doc` headed `heading`, up to the next `## ` heading.
fn section(doc: &str, heading: &str) -> Option<String> {
    let start = doc.match_indices(heading).map(|(i, _)| i).find(|&i| {
        (i == 0 || doc[..i].ends_with('\n')) && doc[i + heading.len()..].starts_with('\n')
    })?;
    let rest = &doc[start + heading.len()..];
    let end = rest
        .find("\n## ")
        .map_or(doc.len(), |i| start + heading.len() + i + 1);
    Some(doc[start..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_lines() {
        let out = "running 2 tests\ntest a_b ... ok\ntest c ... FAILED\ntest d ... ignored\n\ntest result: FAILED.";
        assert_eq!(
            test_results(out),
            BTreeMap::from([("a_b".to_string(), true), ("c".to_string(), false)])
        );
    }

    #[test]
    fn renders_cases_and_escapes_cells() {
        let dir = std::env::temp_dir().join(format!("xtask-reliability-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("cases.jsonl");
        std::fs::write(
            &f,
            "{\"test\":\"hostile\",\"case\":\"a|b\",\"checked\":\"x\",\"sent\":3,\"stored\":2,\
             \"counted\":{\"observer_x_total\":1.0}}\n",
        )
        .unwrap();
        let cases = read_cases(&f).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(cases[0].sent, 3);
        let md = render(
            &cases,
            &BTreeMap::from([("t".to_string(), true)]),
            "table\n",
            Duration::from_secs(5),
            "facts",
        );
        assert!(
            md.contains("| hostile | a\\|b | x | pass | 3 | 2 | `observer_x_total` 1 |"),
            "{md}"
        );
        assert!(md.contains("| `t` | ok |"), "{md}");
        // The soak's own section survives a new report.
        let old = "# R\n\n## Soak\n\nfigures\n\n## Later\n";
        let soak = section(old, SOAK_HEADING).unwrap();
        assert_eq!(soak, "## Soak\n\nfigures\n\n");
        let kept = crate::benchmarks_md::replace_section(&md, &soak);
        assert!(
            kept.ends_with("## Soak\n\nfigures\n\n") && !kept.contains("Not run yet"),
            "{kept}"
        );
    }
}
