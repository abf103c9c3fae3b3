//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` (nightly, libFuzzer) and runs each for a bounded
//! time, seeded from `fuzz/corpus/<target>`; new inputs go to `target/fuzz/corpus/<target>`, crashes to
//! `target/fuzz/artifacts/<target>`. Prints one line per target (executions, corpus, crashes) and writes them to
//! `target/fuzz/report.md`; fails when any target crashed.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::toolchain::{self, output, say, NIGHTLY};

/// The pinned cargo-fuzz, installed on first use.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Every target in fuzz/Cargo.toml, with the longest input it is given.
pub const TARGETS: &[(&str, usize)] = &[
    ("http_head", 70_000),
    ("chunked", 4_096),
    ("flow", 16_384),
    ("registry", 65_536),
    ("kong", 65_536),
    ("openapi", 65_536),
    ("spool", 65_536),
];

/// What one target's run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub target: String,
    pub executions: u64,
    pub seconds: u64,
    pub corpus: usize,
    pub crashes: Vec<PathBuf>,
}

fn ensure_cargo_fuzz() -> Result<()> {
    toolchain::ensure_nightly()?;
    let have = output(Command::new("cargo").args(["fuzz", "--version"])).unwrap_or_default();
    if have.contains(CARGO_FUZZ_VERSION) {
        return Ok(());
    }
    say(format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 2 minutes, once)"
    ));
    toolchain::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

/// Builds every target, then runs each for `per_target`; `only` restricts the run to the named targets.
pub fn fuzz(root: &Path, per_target: Duration, only: &[String]) -> Result<Vec<Outcome>> {
    for name in only {
        if !TARGETS.iter().any(|(t, _)| t == name) {
            bail!(
                "no fuzz target named {name:?}: the targets are {}",
                TARGETS
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    ensure_cargo_fuzz()?;
    let fuzz_cmd = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.arg(format!("+{NIGHTLY}"))
            .args(["fuzz"])
            .args(args)
            // No eBPF object is needed to fuzz user-space parsers.
            .env("AYA_BUILD_SKIP", "1")
            .current_dir(root);
        c
    };
    // The parsers are safe Rust: libFuzzer's coverage and debug assertions find their panics, and a build without
    // a sanitizer takes half the time, which keeps the CI step short.
    say("building the fuzz targets (cargo fuzz build, no sanitizer, debug assertions on)");
    toolchain::run(&mut fuzz_cmd(&["build", "-s", "none"]))?;
    let work = root.join("target/fuzz");
    let mut outcomes = Vec::new();
    for (name, max_len) in TARGETS {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let corpus = work.join("corpus").join(name);
        let artifacts = work.join("artifacts").join(name);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let before = files(&artifacts)?;
        let seeds = root.join("fuzz/corpus").join(name);
        say(format!("fuzzing {name} for {} s", per_target.as_secs()));
        let out = fuzz_cmd(&["run", "-s", "none", name])
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={}", per_target.as_secs().max(1)))
            .arg(format!("-max_len={max_len}"))
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .output()
            .with_context(|| format!("running cargo fuzz run {name}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let crashes: Vec<PathBuf> = files(&artifacts)?
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        let o = Outcome {
            target: name.to_string(),
            executions: stat(&log, "stat::number_of_executed_units:").unwrap_or(0),
            seconds: stat(&log, "stat::total_time_in_seconds:").unwrap_or(0),
            corpus: files(&corpus)?.len(),
            crashes,
        };
        if !out.status.success() && o.crashes.is_empty() {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            bail!(
                "cargo fuzz run {name} failed ({}) without saving a crash:\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        say(format!(
            "{name}: {} executions in {} s, corpus {}, crashes {}",
            o.executions,
            o.seconds,
            o.corpus,
            o.crashes.len()
        ));
        outcomes.push(o);
    }
    std::fs::write(work.join("report.md"), report(&outcomes))?;
    let crashed: Vec<String> = outcomes
        .iter()
        .flat_map(|o| {
            o.crashes
                .iter()
                .map(|c| format!("{}: {}", o.target, c.display()))
        })
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzzing found crashes (reproduce with `cargo +nightly fuzz run -s none TARGET FILE`):\n{}",
            crashed.join("\n")
        );
    }
    Ok(outcomes)
}

/// The targets' figures as a Markdown table.
pub fn report(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "| target | executions | seconds | corpus | crashes |\n|---|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            o.target,
            o.executions,
            o.seconds,
            o.corpus,
            o.crashes.len()
        ));
    }
    s
}

fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_file() {
            v.push(p);
        }
    }
    Ok(v)
}

/// A `-print_final_stats=1` figure from libFuzzer's output.
fn stat(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.trim().strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats() {
        let log = "#1024 DONE cov: 10\nstat::number_of_executed_units: 123456\nstat::average_exec_per_sec:     4115\n\
                   stat::total_time_in_seconds:    30\n";
        assert_eq!(stat(log, "stat::number_of_executed_units:"), Some(123_456));
        assert_eq!(stat(log, "stat::total_time_in_seconds:"), Some(30));
        assert_eq!(stat(log, "stat::new_units_added:"), None);
    }

    #[test]
    fn every_target_has_a_binary_and_a_seed_corpus() {
        let root = crate::workspace_root();
        let manifest =
            std::fs::read_to_string(root.join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
        for (name, _) in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{name}\"")),
                "{name} missing from fuzz/Cargo.toml"
            );
            let seeds = root.join("fuzz/corpus").join(name);
            assert!(
                files(&seeds).map(|f| !f.is_empty()).unwrap_or(false),
                "{} has no seed",
                seeds.display()
            );
        }
        let bins = manifest.matches("[[bin]]").count();
        assert_eq!(
            bins,
            TARGETS.len(),
            "fuzz/Cargo.toml and TARGETS list the same targets"
        );
    }

    #[test]
    fn report_has_a_row_per_target() {
        let r = report(&[Outcome {
            target: "flow".into(),
            executions: 5,
            seconds: 1,
            corpus: 2,
            crashes: vec![],
        }]);
        assert!(r.contains("| flow | 5 | 1 | 2 | 0 |"));
    }
}
