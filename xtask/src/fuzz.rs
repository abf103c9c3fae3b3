//! `cargo xtask fuzz` and the fuzz step of `cargo xtask test`: builds the libFuzzer targets in `fuzz/` and runs each
//! for a bounded time, seeded from `fuzz/corpus/<target>`; new inputs go to `target/fuzz/corpus/<target>`, crashes to
//! `target/fuzz/artifacts/<target>`. Prints one line per target (executions, corpus, crashes); fails when any target
//! crashed, naming the target and the saved input.
//!
//! Why not `cargo fuzz build`: it puts its flags in RUSTFLAGS, so every one of the ~300 crates observer depends on
//! (tokio, hyper, kube, k8s-openapi, clickhouse, aya, ...) is built with coverage instrumentation, comparison tracing
//! and one codegen unit each, which took an hour of CPU. Here the same instrumentation goes, through a rustc wrapper,
//! only to the crates whose code is fuzzed, and libFuzzer still steers by the coverage of every parser under test.
//! The targets are built with the stable toolchain and the `release` profile into the workspace's target directory,
//! with fuzz/Cargo.toml's release profile and fuzz/Cargo.lock's versions equal to the workspace's: every dependency
//! is then the artifact `cargo xtask build` made (cargo reports it "Fresh"), and only observer, observer-common, the
//! fuzz crate and libFuzzer are compiled. The binaries are the cargo-fuzz ones: `cargo +nightly fuzz run TARGET`
//! works too.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::toolchain::{self, say};

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

/// The crates whose code is fuzzed (rustc crate names), the only ones built with coverage instrumentation; their build
/// scripts (crate `build_script_build`) are not, as nothing links them with libFuzzer.
const INSTRUMENTED: &[&str] = &["observer", "observer_fuzz"];

/// The cargo profile the targets are built with: the agent's, so the dependencies are shared (fuzz/Cargo.toml turns
/// on debug assertions and overflow checks for the crates under test only); binaries land in `target/<PROFILE>/`.
const PROFILE: &str = "release";

/// libFuzzer's coverage instrumentation, as `cargo fuzz build` (0.13) adds it: inline 8-bit edge counters, the PC
/// table, comparison operands and stack depth for its value profile, no branch folding that would hide edges.
const SANCOV: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    "--cfg",
    "fuzzing",
];

/// The C++ compiler libfuzzer-sys builds libFuzzer with.
const FUZZ_PACKAGES: &[(&str, &str)] = &[("c++", "g++")];

/// What one target's run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub target: String,
    pub executions: u64,
    pub seconds: u64,
    pub corpus: usize,
    pub crashes: Vec<PathBuf>,
}

/// How to fuzz.
pub struct Options {
    /// Time per target.
    pub per_target: Duration,
    /// Only these targets (all when empty).
    pub only: Vec<String>,
    /// Write the figures to `target/fuzz/report.md` (the table RELIABILITY.md shows), crashes or not.
    pub report: bool,
}

/// A rustc wrapper that adds the instrumentation to the crates under test only. Cargo's per-package profile
/// rustflags would reach observer's build script too, which then fails to link without libFuzzer.
fn wrapper_script() -> String {
    let crates: Vec<String> = INSTRUMENTED
        .iter()
        .map(|c| format!("*\" --crate-name {c} \"*"))
        .collect();
    format!(
        "#!/bin/sh\n# Written by `cargo xtask fuzz` (xtask/src/fuzz.rs): libFuzzer's coverage instrumentation for the \
         crates under test.\nrustc=\"$1\"; shift\ncase \" $* \" in\n  {}) exec \"$rustc\" \"$@\" {} ;;\nesac\n\
         exec \"$rustc\" \"$@\"\n",
        crates.join("|"),
        SANCOV.join(" ")
    )
}

/// Builds the targets named (all of `TARGETS` if empty); returns the directory of the binaries.
pub fn build(root: &Path, only: &[String]) -> Result<PathBuf> {
    toolchain::ensure_packages(FUZZ_PACKAGES)?;
    say(format!(
        "building the fuzz targets (profile {PROFILE}, coverage instrumentation on {})",
        INSTRUMENTED.join(", ")
    ));
    let wrapper = root.join("target/fuzz/rustc-wrapper.sh");
    std::fs::create_dir_all(root.join("target/fuzz"))?;
    std::fs::write(&wrapper, wrapper_script())?;
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let mut cmd = Command::new("cargo");
    cmd.args(["build", "--manifest-path"])
        .arg(root.join("fuzz/Cargo.toml"))
        .args(["--profile", PROFILE, "--target-dir"])
        .arg(root.join("target"))
        .env("RUSTC_WRAPPER", &wrapper)
        // No eBPF object is needed to fuzz user-space parsers.
        .env("AYA_BUILD_SKIP", "1")
        .current_dir(root);
    for (name, _) in TARGETS {
        if only.is_empty() || only.iter().any(|o| o == name) {
            cmd.args(["--bin", name]);
        }
    }
    toolchain::run(&mut cmd)?;
    Ok(root.join("target").join(PROFILE))
}

/// Builds the targets, then runs each for `opts.per_target`, as many at once as there are CPUs.
pub fn fuzz(root: &Path, opts: &Options) -> Result<Vec<Outcome>> {
    for name in &opts.only {
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
    let bins = build(root, &opts.only)?;
    let todo: Vec<(&str, usize)> = TARGETS
        .iter()
        .filter(|(t, _)| opts.only.is_empty() || opts.only.iter().any(|o| o == t))
        .copied()
        .collect();
    say(format!(
        "fuzzing {} targets for {} s each",
        todo.len(),
        opts.per_target.as_secs()
    ));
    let parallel = std::thread::available_parallelism().map_or(1, |n| n.get());
    let queue = Mutex::new(todo.iter());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel.min(todo.len()) {
            s.spawn(|| loop {
                let Some(&(name, max_len)) = queue.lock().expect("queue").next() else {
                    break;
                };
                let r = run_one(root, &bins, name, max_len, opts.per_target);
                if let Ok(o) = &r {
                    say(format!(
                        "{name}: {} executions in {} s, corpus {}, crashes {}",
                        o.executions,
                        o.seconds,
                        o.corpus,
                        o.crashes.len()
                    ));
                }
                results.lock().expect("results").push((name, r));
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(name, _)| TARGETS.iter().position(|(t, _)| t == name));
    let mut outcomes = Vec::new();
    let mut failures = Vec::new();
    for (name, r) in results {
        match r {
            Ok(o) => {
                for c in &o.crashes {
                    failures.push(format!(
                        "fuzz target {name} crashed on {} (reproduce: {} {}; fix it, then add the input to \
                         fuzz/corpus/{name}/)",
                        c.display(),
                        bins.join(name).display(),
                        c.display()
                    ));
                }
                outcomes.push(o);
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    if opts.report {
        let path = report_path(root);
        std::fs::write(&path, report_md(root, opts, &outcomes)?)
            .with_context(|| format!("writing {}", path.display()))?;
        say(format!("wrote {}", path.display()));
    }
    if !failures.is_empty() {
        bail!("fuzzing failed:\n{}", failures.join("\n"));
    }
    Ok(outcomes)
}

/// Runs one target's binary: libFuzzer first replays the saved and the seed corpus, then mutates.
fn run_one(
    root: &Path,
    bins: &Path,
    name: &str,
    max_len: usize,
    time: Duration,
) -> Result<Outcome> {
    let work = root.join("target/fuzz");
    let corpus = work.join("corpus").join(name);
    let artifacts = work.join("artifacts").join(name);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let before = files(&artifacts)?;
    let started = std::time::Instant::now();
    let out = Command::new(bins.join(name))
        .arg(&corpus)
        .arg(root.join("fuzz/corpus").join(name))
        .arg(format!("-max_total_time={}", time.as_secs().max(1)))
        .arg(format!("-max_len={max_len}"))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .output()
        .with_context(|| format!("running fuzz target {name}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let crashes: Vec<PathBuf> = files(&artifacts)?
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        if crashes.is_empty() {
            bail!(
                "fuzz target {name} failed ({}) without saving an input:\n{tail}",
                out.status
            );
        }
        eprintln!("--- fuzz target {name} crashed ---\n{tail}\n---");
    }
    Ok(Outcome {
        target: name.to_string(),
        executions: stat(&log, "stat::number_of_executed_units:").unwrap_or(0),
        seconds: started.elapsed().as_secs(),
        corpus: files(&corpus)?.len(),
        crashes,
    })
}

/// Where `cargo xtask fuzz` leaves its figures.
pub fn report_path(root: &Path) -> PathBuf {
    root.join("target/fuzz/report.md")
}

/// The record of the crashes fuzzing found and what fixed them, kept by hand and shown under the figures.
const FIXED: &str = "fuzz/crashes.md";

/// The first line of every report, which `last_report` looks for.
const REPORT_START: &str = "Fuzzed for ";

/// The figures of a run with how it was run, and the crashes fixed so far.
fn report_md(root: &Path, opts: &Options, outcomes: &[Outcome]) -> Result<String> {
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let fixed =
        std::fs::read_to_string(root.join(FIXED)).with_context(|| format!("reading {FIXED}"))?;
    Ok(format!(
        "{REPORT_START}{} s per target at commit `{commit}` ({} CPUs, targets run side by side), coverage-guided \
         libFuzzer with {} instrumented, seeded from `fuzz/corpus`; *corpus*: inputs kept after the run.\n\n{}\n{}",
        opts.per_target.as_secs(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        INSTRUMENTED.join(", "),
        report(outcomes),
        fixed.trim_start_matches(|c| c != '\n').trim_start()
    ))
}

/// The fuzzing figures for RELIABILITY.md: the last `cargo xtask fuzz` run's, else those RELIABILITY.md already
/// holds (a fresh clone keeps the published figures until someone fuzzes again).
pub fn last_report(root: &Path) -> String {
    if let Ok(r) = std::fs::read_to_string(report_path(root)) {
        return r;
    }
    let published = std::fs::read_to_string(root.join("RELIABILITY.md")).unwrap_or_default();
    published_report(&published).unwrap_or_else(|| {
        "Not run: `cargo xtask fuzz` (or `cargo xtask reliability --fuzz-time 60s`) fills this table.\n".into()
    })
}

/// The report inside RELIABILITY.md's Fuzzing section, up to the next section.
fn published_report(reliability: &str) -> Option<String> {
    let section = &reliability[reliability.find("\n## Fuzzing\n")? + 1..];
    let start = section.find(&format!("\n{REPORT_START}"))? + 1;
    let body = &section[start..];
    let end = body.find("\n## ").map_or(body.len(), |e| e + 1);
    Some(body[..end].to_string())
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
        let log = "#1024 DONE cov: 10\nstat::number_of_executed_units: 123456\nstat::average_exec_per_sec:     4115\n";
        assert_eq!(stat(log, "stat::number_of_executed_units:"), Some(123_456));
        assert_eq!(stat(log, "stat::average_exec_per_sec:"), Some(4115));
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
        for crate_ in ["observer", "observer-fuzz"] {
            assert!(
                manifest.contains(&format!("[profile.{PROFILE}.package.{crate_}]")),
                "fuzz/Cargo.toml sets {crate_}'s own {PROFILE} settings (the agent's observer must not be replaced)"
            );
        }
    }

    /// (name, version) of every package in a Cargo.lock.
    fn locked(lock: &str) -> Vec<(String, String)> {
        let mut v = Vec::new();
        let mut name = None;
        for line in lock.lines() {
            if let Some(n) = line.strip_prefix("name = ") {
                name = Some(n.trim_matches('"').to_string());
            } else if let (Some(ver), Some(n)) = (line.strip_prefix("version = "), name.take()) {
                v.push((n, ver.trim_matches('"').to_string()));
            }
        }
        v
    }

    /// The fuzz build shares the release build's dependencies only if both resolve the same versions and build them
    /// with the same profile.
    #[test]
    fn the_fuzz_workspace_resolves_and_builds_dependencies_as_the_workspace_does() {
        let root = crate::workspace_root();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
        let main = locked(&read("Cargo.lock"));
        let fuzz = locked(&read("fuzz/Cargo.lock"));
        assert!(
            fuzz.len() > 100,
            "{} packages in fuzz/Cargo.lock",
            fuzz.len()
        );
        for (name, version) in &fuzz {
            let versions: Vec<&String> = main
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v)
                .collect();
            assert!(
                versions.is_empty() || versions.contains(&version),
                "fuzz/Cargo.lock has {name} {version}, Cargo.lock {versions:?}: copy Cargo.lock to fuzz/Cargo.lock \
                 and run `cargo update --manifest-path fuzz/Cargo.toml --workspace`"
            );
        }
        // The workspace's release and dev profile settings for dependencies, repeated in the fuzz workspace (the
        // fuzz targets' build and the corpus replay's test build then reuse the workspace's dependencies).
        let release = |manifest: &str| -> std::collections::BTreeSet<String> {
            manifest
                .split("\n[")
                .filter(|t| t.starts_with("profile.release") || t.starts_with("profile.dev"))
                .filter(|t| !t.starts_with("profile.release.package.observer]"))
                .filter(|t| !t.starts_with("profile.release.package.observer-fuzz]"))
                .map(|t| {
                    t.lines()
                        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert_eq!(
            release(&read("Cargo.toml")),
            release(&read("fuzz/Cargo.toml"))
        );
    }

    #[test]
    fn only_the_crates_under_test_get_instrumentation() {
        let dir = std::env::temp_dir().join(format!("xtask-fuzz-wrapper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("w.sh");
        std::fs::write(&script, wrapper_script()).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("sh")
                .arg(&script)
                .arg("echo")
                .args(args)
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        let lib = run(&["--crate-name", "observer", "src/lib.rs"]);
        assert!(
            lib.starts_with("--crate-name observer src/lib.rs -Cpasses=sancov-module "),
            "{lib}"
        );
        assert!(lib.trim_end().ends_with("--cfg fuzzing"), "{lib}");
        assert_eq!(
            run(&["--crate-name", "build_script_build", "x"]),
            "--crate-name build_script_build x\n"
        );
        assert_eq!(
            run(&["--crate-name", "observer_common", "x"]),
            "--crate-name observer_common x\n"
        );
        assert!(run(&["--crate-name", "observer_fuzz"]).contains("sancov"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_published_report_is_found_in_reliability_md() {
        let md = "# Reliability\n\n## Tests\n\nx\n\n## Fuzzing\n\nExecutions per target.\n\n\
                  Fuzzed for 60 s per target.\n\n| target |\n|---|\n| flow |\n\n## Soak\n\nNot run.\n";
        assert_eq!(
            published_report(md).as_deref(),
            Some("Fuzzed for 60 s per target.\n\n| target |\n|---|\n| flow |\n\n")
        );
        assert_eq!(
            published_report("# Reliability\n\n## Fuzzing\n\nNot run.\n"),
            None
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
