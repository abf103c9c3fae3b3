//! `cargo xtask bench`: the observer's cost on a saturated loopback nginx, measured side by side in one run (every
//! round runs every configuration, baseline and capturing next to each other; with `--peers` also a sidecar
//! stand-in, tshark and tcpdump on the same workload), plus the criterion micro-benchmarks. The headline is CPU per
//! exchange: the kernel programs' run time (bpf_stats) plus the agent's CPU per event, with registry enrichment.
//! Writes its sections of BENCHMARKS.md (`report`).
use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{noop_hooks::NoopHooks, toolchain::say};

mod load;
mod peers;
mod report;
mod stats;
mod workloads;
use load::{
    count_lines, cpu_seconds, free_metrics_addr, machine_busy_seconds, scrape, start_app,
    tree_cpu_seconds, wrk, wrk_with, Nginx, Wrk, WrkResult, KEY, PORT,
};
use peers::Peer;
pub use peers::PACKAGES as PEER_PACKAGES;

/// One wrk run of one configuration.
struct Observed {
    wrk: WrkResult,
    /// CPU seconds of what ran beside nginx: the agent, or the peer with its children; 0 for bare runs.
    cpu_s: f64,
    /// Busy CPU seconds of the whole machine during the wrk run.
    busy_s: f64,
    /// Exchanges reported: events the agent wrote, lines a peer logged or decoded, over its whole run (warm-up
    /// included); `None` when nothing reports.
    reported: Option<f64>,
    /// Requests wrk completed while the agent or peer ran: the warm-up's and the measured window's.
    sent: f64,
    /// Exchanges in the measured window, what `cpu_s` is divided by: the agent's own count, else wrk's requests.
    window: f64,
    /// The agent's CPU seconds and exchanges over its warm-up ([`WARM_UP_S`]), from its start.
    cold: Option<(f64, f64)>,
    drops: f64,
    /// Kernel program costs, when the run had `kernel.bpf_stats_enabled` on.
    progs: Vec<ProgCost>,
    /// A peer's own account of what it missed.
    note: String,
}

impl Observed {
    /// Machine CPU per request completed, µs.
    fn busy_us_per_request(&self) -> f64 {
        self.busy_s * 1e6 / self.wrk.requests.max(1) as f64
    }
}

/// How wrk loads nginx in one run: as fast as it can, or paced.
#[derive(Clone, Copy)]
struct Load<'a> {
    duration: u64,
    /// wrk's pacing script ([`write_pace_script`]), for the paced configurations.
    pace: Option<&'a Path>,
    /// The CPU wrk runs on ([`load::paced_cpus`], the paced configurations).
    cpu: Option<usize>,
}

impl Load<'_> {
    /// As fast as wrk can, anywhere.
    fn full(duration: u64) -> Self {
        Load {
            duration,
            pace: None,
            cpu: None,
        }
    }

    /// The same load for [`WARM_UP_S`].
    fn warm_up(&self) -> Self {
        Load {
            duration: WARM_UP_S,
            ..*self
        }
    }
}

/// Each connection waits this long before each request in the paced configurations, so wrk's 50 connections offer
/// at most 50 * 1000 / [`PACE_MS`] = 10,000 requests/s: about a ninth of what the baseline completes unpaced here,
/// leaving both vCPUs mostly idle. Added CPU per request is then what the observer or the sidecar really spends,
/// where at saturation it is mostly the throughput they cost (busy time is pinned at 100%).
const PACE_MS: u32 = 5;

/// Seconds of the same load that every configuration runs, unmeasured, before its measured window: the figures are
/// those of a process in its steady state, as a DaemonSet's agent is for all but its first seconds. A freshly
/// started agent faults in its memory as it first fills it; with the ClickHouse sink that is two batch buffers of
/// a second's rows each (13 MB at 65k events/s), and each page fault is a trap on a VM. Measured from a cold start,
/// the agent's first 5 s cost 1.35-1.40 µs per event; after 4 s of the same load, 1.04-1.08 (loopback nginx, wrk
/// -t1 -c50, ClickHouse sink, 5 alternating rounds). Two seconds cover the first two batch intervals. The warm-up's
/// own figures are reported as the cold start's.
const WARM_UP_S: u64 = 2;

/// Runs with `kernel.bpf_stats_enabled` of each kind (hooks only, capturing): the kernel's share of the headline
/// comes from their mean. One run's figure moved by a quarter between runs of the same build half an hour apart
/// (1.06 and 1.33 µs per exchange).
const KERNEL_RUNS: usize = 3;

/// Where the bench directory `dir` keeps wrk's pacing script.
fn pace_script_path(dir: &Path) -> std::path::PathBuf {
    dir.join("pace.lua")
}

/// Writes wrk's pacing script: a fixed delay before every request on every connection.
fn write_pace_script(dir: &Path) -> Result<()> {
    let script = format!("function delay()\n  return {PACE_MS}\nend\n");
    std::fs::write(pace_script_path(dir), script)?;
    Ok(())
}

/// Runs wrk against `port`, with the machine's busy time around it.
fn timed_wrk(port: u16, load: Load) -> Result<(WrkResult, f64)> {
    let b0 = machine_busy_seconds();
    let w = wrk_with(
        port,
        load.duration,
        &Wrk {
            script: load.pace,
            cpu: load.cpu,
            ..Wrk::default()
        },
    )?;
    Ok((w, machine_busy_seconds() - b0))
}

/// What runs beside nginx in one wrk run of a round.
#[derive(Clone, Copy, PartialEq)]
enum Config {
    Baseline,
    Capturing,
    /// Capturing with the ClickHouse sink (to the dev server) instead of NDJSON.
    CapturingClickHouse,
    Drain,
    Hooks,
    Floor,
    Peer(Peer),
    /// At a fixed offered rate ([`PACE_MS`]), with `--peers`.
    Paced(Paced),
}

/// The configurations also run at a fixed offered rate: the pair the CPU and p99 goals against the sidecar compare.
#[derive(Clone, Copy, PartialEq)]
enum Paced {
    Baseline,
    Capturing,
    Sidecar,
}

impl Config {
    /// A round's order (reversed every other round).
    fn all(peers: bool) -> Vec<Config> {
        let mut v = vec![
            Config::Baseline,
            Config::Capturing,
            Config::CapturingClickHouse,
            Config::Drain,
            Config::Hooks,
            Config::Floor,
        ];
        if peers {
            v.extend(Peer::ALL.map(Config::Peer));
            v.extend([Paced::Baseline, Paced::Capturing, Paced::Sidecar].map(Config::Paced));
        }
        v
    }

    fn name(self) -> &'static str {
        match self {
            Config::Baseline => "baseline",
            Config::Capturing => "capturing",
            Config::CapturingClickHouse => "capturing, ClickHouse sink",
            Config::Drain => "drain only",
            Config::Hooks => "hooks only",
            Config::Floor => "no-op programs",
            Config::Peer(p) => p.name(),
            Config::Paced(Paced::Baseline) => "baseline, paced",
            Config::Paced(Paced::Capturing) => "capturing, paced",
            Config::Paced(Paced::Sidecar) => "sidecar stand-in (nginx proxy), paced",
        }
    }
}

/// One program's kernel time, from `kernel.bpf_stats_enabled` (which adds two clock reads to every run).
struct ProgCost {
    name: String,
    runs: u64,
    ns: u64,
}

/// Turns `kernel.bpf_stats_enabled` on; dropping it restores the previous value.
struct BpfStats {
    prev: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<Self> {
        let prev =
            std::fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(BpfStats { prev })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, self.prev.trim());
    }
}

/// Run counts and kernel time of the observer's loaded programs (`bpftool prog show -j`).
fn prog_costs() -> Result<Vec<ProgCost>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("running bpftool prog show")?;
    let progs: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading bpftool's JSON")?;
    let mut costs: Vec<ProgCost> = progs
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str()?;
            name.starts_with("observer_").then(|| ProgCost {
                name: name.to_string(),
                runs: p["run_cnt"].as_u64().unwrap_or(0),
                ns: p["run_time_ns"].as_u64().unwrap_or(0),
            })
        })
        .collect();
    costs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(costs)
}

/// Port the hooks-only configuration captures: nothing listens there, so the programs run their classification on
/// every packet and emit nothing.
const IDLE_PORT: u16 = 9;

/// The registry the capturing agent enriches with: one API on the app's port keyed by the header wrk sends, one
/// application holding that key (given to the agent in `OBSERVER_BENCH_KEY`).
fn write_registry(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("registry.yaml");
    std::fs::write(
        &path,
        format!(
            "version: 1\nteams:\n  - {{id: bench, name: Bench, line_of_business: Bench}}\napis:\n  - id: bench-api\n    \
             name: Bench API\n    owner: bench\n    match: {{ports: [{PORT}]}}\n    auth: {{type: api_key, headers: [{}]}}\n\
             applications:\n  - {{id: bench-app, name: Bench App, team: bench, created_by: bench, created_at: 2026-01-01}}\n\
             keys:\n  - id: bench-key\n    application: bench-app\n    key_env: OBSERVER_BENCH_KEY\n    grants:\n      \
             - {{api: bench-api, granted_by: bench, granted_at: 2026-01-01}}\n",
            load::KEY_HEADER
        ),
    )?;
    Ok(path)
}

impl Drop for Agent {
    /// An agent left running by an error on the way is stopped with the bench.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Where a capturing agent writes its events.
#[derive(Clone, Copy)]
enum Sink<'a> {
    /// `events.ndjson` in the bench directory.
    Ndjson,
    /// The ClickHouse server at this URL (schema applied), spooling into the bench directory.
    ClickHouse(&'a str),
}

/// Rows in the events table of the ClickHouse at `url`.
fn clickhouse_rows(url: &str) -> Result<u64> {
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {url}"))?;
    use std::io::{Read, Write};
    s.write_all(b"GET /?query=SELECT%20count()%20FROM%20observer.http_requests HTTP/1.0\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    body.parse()
        .with_context(|| format!("counting rows in {url}: unexpected answer {resp:?}"))
}

/// A running agent capturing `port` with the bench registry and its sink.
struct Agent {
    child: std::process::Child,
    out: std::path::PathBuf,
    metrics: String,
    /// With the ClickHouse sink: its URL and the table's rows before the agent started.
    clickhouse: Option<(String, u64)>,
}

impl Agent {
    /// An agent with the NDJSON sink.
    fn start(bin: &Path, dir: &Path, ports: &str, extra: &[&str]) -> Result<Agent> {
        Self::start_with(bin, dir, ports, Sink::Ndjson, extra)
    }

    fn start_with(
        bin: &Path,
        dir: &Path,
        ports: &str,
        sink: Sink,
        extra: &[&str],
    ) -> Result<Agent> {
        let out = dir.join("events.ndjson");
        let metrics = free_metrics_addr()?;
        let spool = dir.join("spool").display().to_string();
        let (sink_args, clickhouse) = match sink {
            Sink::Ndjson => (vec![format!("ndjson:{}", out.display())], None),
            Sink::ClickHouse(url) => (
                vec![
                    "clickhouse".to_string(),
                    "--clickhouse-url".to_string(),
                    url.to_string(),
                    "--spool-dir".to_string(),
                    spool,
                ],
                Some((url.to_string(), clickhouse_rows(url)?)),
            ),
        };
        let mut child = Command::new(bin)
            .args(["run", "--ports", ports, "--sink"])
            .args(&sink_args)
            .args([
                "--metrics",
                &metrics,
                "--key-secret-file",
                &dir.join("secret").display().to_string(),
                "--registry",
                &dir.join("registry.yaml").display().to_string(),
            ])
            .args(extra)
            .env("OBSERVER_BENCH_KEY", KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting observer")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(&metrics) {
                use std::io::{Read, Write};
                let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
                let mut b = String::new();
                let _ = s.read_to_string(&mut b);
                if b.starts_with("HTTP/1.1 200") || b.starts_with("HTTP/1.0 200") {
                    return Ok(Agent {
                        child,
                        out,
                        metrics,
                        clickhouse,
                    });
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!("observer exited with {status} before it became ready (run it by hand to see why)");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("observer did not become ready in 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exchanges the agent's flow engine has built so far (its `/metrics`); NaN when it cannot be read.
    fn exchanges(&self) -> f64 {
        scrape(&self.metrics, "observer_exchanges_total")
    }

    /// Runs `load` and returns what it returned, the agent's CPU seconds over it (read `settle` after it, once the
    /// reader has drained what the load left) and, with `kernel_stats`, the kernel programs' costs.
    fn measure<T>(
        &self,
        kernel_stats: bool,
        settle: Duration,
        load: impl FnOnce() -> Result<T>,
    ) -> Result<(T, f64, Vec<ProgCost>)> {
        let stats = if kernel_stats {
            Some(BpfStats::enable()?)
        } else {
            None
        };
        let cpu0 = cpu_seconds(self.pid());
        let out = load()?;
        let progs = if stats.is_some() {
            prog_costs()?
        } else {
            Vec::new()
        };
        drop(stats);
        std::thread::sleep(settle);
        Ok((out, cpu_seconds(self.pid()) - cpu0, progs))
    }

    /// Stops the agent once its counters cover the traffic: (events it wrote, drops it counted).
    fn stop(&mut self) -> Result<(f64, f64)> {
        let (events, drops) = self.stop_with_reasons()?;
        // Summed from 0.0: an empty float sum is -0.0, which prints as "-0".
        Ok((events, drops.iter().fold(0.0, |acc, (_, n)| acc + n)))
    }

    /// As [`Agent::stop`], with the drops by counter (those that counted any).
    fn stop_with_reasons(&mut self) -> Result<(f64, Vec<(&'static str, f64)>)> {
        // The agent publishes its counters once a second: wait for a publication made after the traffic ended, so
        // drops in the run's last second are counted too.
        std::thread::sleep(Duration::from_millis(1200));
        if let Some(status) = self.child.try_wait()? {
            bail!("the observer exited early ({status}): its figures would be another process's");
        }
        let drops: Vec<(&str, f64)> = [
            "observer_kernel_ringbuf_full_total",
            "observer_kernel_flow_map_full_total",
            "observer_kernel_proc_map_full_total",
            "observer_flow_evicted_total",
            "observer_sink_dropped_total",
        ]
        .into_iter()
        .map(|name| (name, scrape(&self.metrics, name)))
        .filter(|(_, n)| *n > 0.0)
        .collect();
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our own child, not yet
        // reaped (we wait for it just below), so it cannot name another process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // Every event the agent wrote, counted after it flushed and exited.
        let events = match &self.clickhouse {
            Some((url, before)) => clickhouse_rows(url)?.saturating_sub(*before) as f64,
            None => count_lines(&self.out)? as f64,
        };
        let _ = std::fs::remove_file(&self.out);
        Ok((events, drops))
    }
}

fn with_observer(
    bin: &Path,
    dir: &Path,
    load: Load,
    port: u16,
    kernel_stats: bool,
    sink: Sink,
    extra: &[&str],
) -> Result<Observed> {
    let mut agent = Agent::start_with(bin, dir, &port.to_string(), sink, extra)?;
    let settle = Duration::from_millis(300);
    let x0 = agent.exchanges();
    let ((warm, _), cold_cpu, _) =
        agent.measure(false, settle, || timed_wrk(PORT, load.warm_up()))?;
    let x1 = agent.exchanges();
    let ((w, busy_s), cpu, progs) =
        agent.measure(kernel_stats, settle, || timed_wrk(PORT, load))?;
    let x2 = agent.exchanges();
    let (events, drops) = agent.stop()?;
    // With --drain-only or on the idle port nothing is written: nothing reports.
    let reports = port == PORT && !extra.contains(&"--drain-only");
    let counted = |n: f64| reports && n.is_finite() && n > 0.0;
    Ok(Observed {
        sent: (warm.requests + w.requests) as f64,
        window: if counted(x2 - x1) {
            x2 - x1
        } else {
            w.requests as f64
        },
        cold: counted(x1 - x0).then_some((cold_cpu, x1 - x0)),
        wrk: w,
        cpu_s: cpu,
        busy_s,
        reported: reports.then_some(events),
        drops,
        progs,
        note: String::new(),
    })
}

/// A run with nothing beside nginx (and, for the floor, two no-op programs).
fn bare(load: Load) -> Result<Observed> {
    let (warm, _) = timed_wrk(PORT, load.warm_up())?;
    let (wrk, busy_s) = timed_wrk(PORT, load)?;
    Ok(Observed {
        sent: (warm.requests + wrk.requests) as f64,
        window: wrk.requests as f64,
        cold: None,
        wrk,
        cpu_s: 0.0,
        busy_s,
        reported: None,
        drops: 0.0,
        progs: Vec::new(),
        note: String::new(),
    })
}

/// A run with a peer seeing the traffic instead of the observer.
fn with_peer(peer: Peer, dir: &Path, load: Load) -> Result<Observed> {
    let running = peer.start(dir)?;
    let pid = running.pid();
    let (warm, _) = timed_wrk(peer.port(), load.warm_up())?;
    let cpu0 = tree_cpu_seconds(pid);
    let (w, busy_s) = timed_wrk(peer.port(), load)?;
    let cpu_s = tree_cpu_seconds(pid) - cpu0;
    let r = running.finish()?;
    Ok(Observed {
        sent: (warm.requests + w.requests) as f64,
        window: w.requests as f64,
        cold: None,
        wrk: w,
        cpu_s,
        busy_s,
        reported: r.requests.map(|n| n as f64),
        drops: 0.0,
        progs: Vec::new(),
        note: r.note,
    })
}

fn run_config(
    config: Config,
    bin: &Path,
    dir: &Path,
    app: &Nginx,
    duration: u64,
    clickhouse: &str,
) -> Result<Observed> {
    let nd = Sink::Ndjson;
    let full = Load::full(duration);
    let pace = pace_script_path(dir);
    let cpus = load::paced_cpus();
    let paced = Load {
        duration,
        pace: Some(&pace),
        cpu: cpus.map(|(_, wrk)| wrk),
    };
    let _pinned = match (config, cpus) {
        (Config::Paced(_), Some((nginx, _))) => Some(load::PinnedWorkers::new(app, nginx)?),
        _ => None,
    };
    match config {
        Config::Baseline => bare(full),
        Config::Floor => {
            let _hooks = NoopHooks::attach()?;
            bare(full)
        }
        Config::Hooks => with_observer(bin, dir, full, IDLE_PORT, false, nd, &[]),
        Config::Drain => with_observer(bin, dir, full, PORT, false, nd, &["--drain-only"]),
        Config::Capturing => with_observer(bin, dir, full, PORT, false, nd, &[]),
        Config::CapturingClickHouse => {
            let ch = Sink::ClickHouse(clickhouse);
            with_observer(bin, dir, full, PORT, false, ch, &[])
        }
        Config::Peer(p) => with_peer(p, dir, full),
        Config::Paced(Paced::Baseline) => bare(paced),
        Config::Paced(Paced::Capturing) => with_observer(bin, dir, paced, PORT, false, nd, &[]),
        Config::Paced(Paced::Sidecar) => with_peer(Peer::Proxy, dir, paced),
    }
}

pub fn run(
    root: &Path,
    bin: &Path,
    duration: u64,
    rounds: u32,
    peers: bool,
    with_workloads: bool,
    with_criterion: bool,
) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("observer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    write_registry(&dir)?;
    write_pace_script(&dir)?;
    say("starting the ClickHouse dev server for the ClickHouse-sink configuration");
    let clickhouse = crate::clickhouse::spawn(root, 0, &dir.join("clickhouse"))?;
    let ch_url = clickhouse.url();
    crate::toolchain::output(Command::new(bin).args([
        "schema",
        "apply",
        "--clickhouse-url",
        &ch_url,
    ]))?;
    let app = start_app(&dir)?;
    let configs = Config::all(peers);
    let names: Vec<&str> = configs.iter().map(|c| c.name()).collect();
    say(format!(
        "nginx on 127.0.0.1:{PORT}; {rounds} rounds of wrk -t1 -c50 -d{duration}s with a key header, each running \
         (every other one in reverse): {}",
        names.join(", ")
    ));
    wrk(PORT, 2)?; // warm-up
    let mut runs: Vec<Vec<Observed>> = configs.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        // Baseline and capturing, the pair the goal is about, run next to each other; every other round runs the
        // configurations in reverse, so a machine that speeds up or slows down over minutes favours none of them.
        let mut order: Vec<usize> = (0..configs.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let o = run_config(configs[i], bin, &dir, &app, duration, &ch_url)?;
            let mut line = format!(
                "round {round} {}: {:.0} req/s, p99 {:.2} ms, machine {:.2} µs/request",
                configs[i].name(),
                o.wrk.rps,
                o.wrk.p99_ms,
                o.busy_us_per_request()
            );
            if let Some(n) = o.reported {
                line.push_str(&format!(", {n:.0} reported"));
            }
            if o.cpu_s > 0.0 {
                line.push_str(&format!(
                    ", {:.0} drops, own CPU {:.1}%",
                    o.drops,
                    100.0 * o.cpu_s / duration as f64
                ));
            }
            say(line);
            runs[i].push(o);
        }
    }

    say(format!(
        "kernel program cost: {KERNEL_RUNS} more hooks-only and capturing runs, alternated, with {BPF_STATS} on"
    ));
    let full = Load::full(duration);
    let (mut idle_k, mut obs_k) = (Vec::new(), Vec::new());
    for _ in 0..KERNEL_RUNS {
        idle_k.push(with_observer(
            bin,
            &dir,
            full,
            IDLE_PORT,
            true,
            Sink::Ndjson,
            &[],
        )?);
        obs_k.push(with_observer(
            bin,
            &dir,
            full,
            PORT,
            true,
            Sink::Ndjson,
            &[],
        )?);
    }
    let crit = if with_criterion {
        Some(criterion(root)?)
    } else {
        None
    };
    let workloads = if with_workloads {
        say("workloads: churn, large headers, pipelining, 1 MiB bodies, idle connections");
        let prov = crate::benchmarks_md::provenance(root, "cargo xtask bench --workloads");
        Some(workloads::run(bin, &dir, duration, &prov)?)
    } else {
        None
    };
    let mut sections = report::sections(
        root,
        &report::Inputs {
            duration,
            rounds,
            peers,
            configs: &configs,
            runs: &runs,
            idle_k: &idle_k,
            obs_k: &obs_k,
            criterion: crit.as_deref(),
        },
    );
    sections.extend(workloads);
    crate::benchmarks_md::write_sections(root, &sections)?;
    say("wrote the bench's sections of BENCHMARKS.md");
    clickhouse.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Runs the criterion micro-benchmarks and returns their result lines.
fn criterion(root: &Path) -> Result<Vec<String>> {
    say("running criterion micro-benchmarks (cargo bench -p observer)");
    let crit = crate::toolchain::output(
        Command::new("cargo")
            .current_dir(root)
            .args(["bench", "-p", "observer", "--", "--noplot"])
            // Same build as target/release/observer (the bench profile shares its directory): with the eBPF object.
            .env_remove("AYA_BUILD_SKIP"),
    )?;
    let crit_text = crit;
    // Criterion prints "name  time: [...]", or the name alone on the line before when it is long.
    let all_lines: Vec<&str> = crit_text.lines().collect();
    let mut crit_lines: Vec<String> = Vec::new();
    for (i, l) in all_lines.iter().enumerate() {
        // Skip the "change:" block criterion prints when it compares with an earlier run.
        if !(l.contains("time:") || l.contains("thrpt:")) || l.contains('%') {
            continue;
        }
        if l.starts_with(char::is_whitespace) && i > 0 && !all_lines[i - 1].contains(':') {
            crit_lines.push(format!("{} {}", all_lines[i - 1].trim(), l.trim()));
        } else {
            crit_lines.push(l.trim().to_string());
        }
    }

    Ok(crit_lines)
}
