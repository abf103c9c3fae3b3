//! `cargo xtask bench`: the observer's cost on a saturated loopback nginx, measured side by side in one run (every
//! round runs every configuration, baseline and capturing next to each other), plus the criterion micro-benchmarks.
//! Writes BENCHMARKS.md.
use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{noop_hooks::NoopHooks, toolchain::say};

const PORT: u16 = 18181;
const METRICS: &str = "127.0.0.1:19464";

struct Nginx {
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our own child, not yet
        // reaped (we wait for it just below), so it cannot name another process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn start_nginx(dir: &Path) -> Result<Nginx> {
    if std::net::TcpStream::connect(("127.0.0.1", PORT)).is_ok() {
        bail!("127.0.0.1:{PORT} is already in use: stop what listens there (the benchmark starts its own nginx)");
    }
    std::fs::create_dir_all(dir.join("html"))?;
    std::fs::write(dir.join("html/index.html"), "x".repeat(612))?;
    let conf = format!(
        "daemon off; master_process on; worker_processes 1; user root; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;\n\
           fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
           server {{ listen 127.0.0.1:{PORT}; root {d}/html; location / {{ }} }} }}\n",
        d = dir.display()
    );
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let child = Command::new("nginx")
        .args([
            "-c",
            &dir.join("nginx.conf").display().to_string(),
            "-e",
            &dir.join("error.log").display().to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let ng = Nginx { child };
    wait_port(PORT)?;
    Ok(ng)
}

fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 10 s")
}

#[derive(Debug, Clone, Copy, Default)]
struct WrkResult {
    rps: f64,
    p99_ms: f64,
    requests: u64,
}

fn wrk(duration: u64) -> Result<WrkResult> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c50",
            &format!("-d{duration}s"),
            "--latency",
            &format!("http://127.0.0.1:{PORT}/"),
        ])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = WrkResult::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("99%") {
            r.p99_ms = parse_latency_ms(v.trim()).unwrap_or(0.0);
        } else if t.contains("requests in") {
            r.requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    if r.rps == 0.0 {
        bail!("could not read wrk's output:\n{text}");
    }
    Ok(r)
}

fn parse_latency_ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the comm: state is index 0, utime 11, stime 12.
    (ticks(11) + ticks(12)) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One configuration against the baseline on one figure.
struct Ratios {
    of_means: f64,
    median: f64,
    /// The lowest and highest of the rounds' ratios: how far a single round can stray on this machine.
    lowest: f64,
    highest: f64,
    /// 95% confidence interval of the mean of the rounds' ratios (Student's t; the rounds are paired samples).
    interval: (f64, f64),
}

/// Two-sided 95% quantile of Student's t for `df` degrees of freedom (the normal's 1.96 past 30).
fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        d if d <= T.len() => T[d - 1],
        _ => 1.96,
    }
}

/// 95% confidence interval of the mean of `v`: unbounded with fewer than two samples.
fn interval95(v: &[f64]) -> (f64, f64) {
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n.max(1) as f64;
    if n < 2 {
        return (f64::NEG_INFINITY, f64::INFINITY);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let half = t95(n - 1) * (var / n as f64).sqrt();
    (mean - half, mean + half)
}

/// A goal on a ratio.
#[derive(Clone, Copy)]
enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    /// Met when the whole interval is on the goal's side, not met when the whole interval is past it; otherwise this
    /// run cannot tell (its rounds stray too far for the step asked about).
    fn judge(self, (lo, hi): (f64, f64)) -> &'static str {
        let (inside, outside) = match self {
            Goal::AtLeast(g) => (lo >= g, hi < g),
            Goal::AtMost(g) => (hi <= g, lo > g),
        };
        match (inside, outside) {
            (true, _) => "met",
            (_, true) => "not met",
            _ => "not resolved by this run",
        }
    }
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Goal::AtLeast(g) => write!(f, ">= {g:.2}"),
            Goal::AtMost(g) => write!(f, "<= {g:.2}"),
        }
    }
}

/// `runs` against `base`, round by round, on the figure `f`.
fn ratios(runs: &[&WrkResult], base: &[&WrkResult], f: impl Fn(&WrkResult) -> f64) -> Ratios {
    let mean = |v: &[&WrkResult]| v.iter().map(|w| f(w)).sum::<f64>() / v.len().max(1) as f64;
    let per_round: Vec<f64> = runs.iter().zip(base).map(|(r, b)| f(r) / f(b)).collect();
    Ratios {
        of_means: mean(runs) / mean(base),
        lowest: per_round.iter().copied().fold(f64::INFINITY, f64::min),
        highest: per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        interval: interval95(&per_round),
        median: median(per_round),
    }
}

/// The wrk results of observer runs.
fn wrk_of(v: &[Observed]) -> Vec<&WrkResult> {
    v.iter().map(|o| &o.wrk).collect()
}

fn count_lines(path: &Path) -> Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            return Ok(n);
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

fn scrape(name: &str) -> f64 {
    let Ok(mut s) = std::net::TcpStream::connect(METRICS) else {
        return f64::NAN;
    };
    use std::io::{Read, Write};
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

struct Observed {
    wrk: WrkResult,
    cpu_s: f64,
    events: f64,
    drops: f64,
    /// Kernel program costs, when the run had `kernel.bpf_stats_enabled` on.
    progs: Vec<ProgCost>,
}

impl Observed {
    /// A run with no observer process.
    fn bare(wrk: WrkResult) -> Self {
        Observed {
            wrk,
            cpu_s: 0.0,
            events: 0.0,
            drops: 0.0,
            progs: Vec::new(),
        }
    }
}

/// What runs beside nginx in one wrk run of a round.
#[derive(Clone, Copy, PartialEq)]
enum Config {
    Baseline,
    Capturing,
    Drain,
    Hooks,
    Floor,
}

impl Config {
    /// A round's order (reversed every other round).
    const ALL: [Config; 5] = [
        Config::Baseline,
        Config::Capturing,
        Config::Drain,
        Config::Hooks,
        Config::Floor,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::Baseline => "baseline",
            Config::Capturing => "capturing",
            Config::Drain => "drain only",
            Config::Hooks => "hooks only",
            Config::Floor => "no-op programs",
        }
    }

    /// The issue's goals for this configuration against the baseline: (throughput ratio, p99 ratio).
    fn goals(self) -> (Option<Goal>, Option<Goal>) {
        match self {
            Config::Capturing => (Some(Goal::AtLeast(0.97)), Some(Goal::AtMost(1.05))),
            _ => (None, None),
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

fn with_observer(
    bin: &Path,
    dir: &Path,
    duration: u64,
    port: u16,
    kernel_stats: bool,
    extra: &[&str],
) -> Result<Observed> {
    let out = dir.join("events.ndjson");
    let mut child = Command::new(bin)
        .args([
            "run",
            "--ports",
            &port.to_string(),
            "--sink",
            &format!("ndjson:{}", out.display()),
        ])
        .args([
            "--metrics",
            METRICS,
            "--key-secret-file",
            &dir.join("secret").display().to_string(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting observer")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(METRICS) {
            use std::io::{Read, Write};
            let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
            let mut b = String::new();
            let _ = s.read_to_string(&mut b);
            if b.starts_with("HTTP/1.1 200") || b.starts_with("HTTP/1.0 200") {
                break;
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("observer did not become ready in 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = if kernel_stats {
        Some(BpfStats::enable()?)
    } else {
        None
    };
    let cpu0 = cpu_seconds(child.id());
    let w = wrk(duration)?;
    let progs = if stats.is_some() {
        prog_costs()?
    } else {
        Vec::new()
    };
    drop(stats);
    std::thread::sleep(Duration::from_millis(300));
    let cpu = cpu_seconds(child.id()) - cpu0;
    // The agent publishes its counters once a second: wait for a publication made after the traffic ended, so
    // drops in the run's last second are counted too.
    std::thread::sleep(Duration::from_millis(1200));
    let drops = scrape("observer_kernel_ringbuf_full_total")
        + scrape("observer_kernel_flow_map_full_total")
        + scrape("observer_kernel_proc_map_full_total")
        + scrape("observer_flow_evicted_total")
        + scrape("observer_sink_dropped_total");
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our own child, not yet
    // reaped (we wait for it just below), so it cannot name another process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    // Every event the agent wrote, counted after it flushed and exited.
    let events = count_lines(&out)? as f64;
    let _ = std::fs::remove_file(&out);
    Ok(Observed {
        wrk: w,
        cpu_s: cpu,
        events,
        drops,
        progs,
    })
}

pub fn run(root: &Path, bin: &Path, duration: u64, rounds: u32) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("observer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _nginx = start_nginx(&dir)?;
    say(format!(
        "nginx on 127.0.0.1:{PORT}; {rounds} rounds of wrk -t1 -c50 -d{duration}s, each (every other one in \
         reverse): without observer, observer capturing (--ports {PORT}), observer capturing with its reader dropping \
         every record (--drain-only), observer with hooks only (--ports {IDLE_PORT}), no-op cgroup_skb programs \
         (the floor)"
    ));
    wrk(2)?; // warm-up
    let mut base = Vec::new();
    let mut floor = Vec::new();
    let mut idle = Vec::new();
    let mut drain = Vec::new();
    let mut obs = Vec::new();
    for round in 1..=rounds {
        // Baseline and capturing, the pair the goal is about, run next to each other; every other round runs the
        // configurations in reverse, so a machine that speeds up or slows down over minutes favours none of them.
        let mut order = Config::ALL;
        if round % 2 == 0 {
            order.reverse();
        }
        for config in order {
            let o = match config {
                Config::Baseline => Observed::bare(wrk(duration)?),
                Config::Floor => {
                    let _hooks = NoopHooks::attach()?;
                    Observed::bare(wrk(duration)?)
                }
                Config::Hooks => with_observer(bin, &dir, duration, IDLE_PORT, false, &[])?,
                Config::Drain => {
                    with_observer(bin, &dir, duration, PORT, false, &["--drain-only"])?
                }
                Config::Capturing => with_observer(bin, &dir, duration, PORT, false, &[])?,
            };
            let mut line = format!(
                "round {round} {}: {:.0} req/s, p99 {:.2} ms",
                config.name(),
                o.wrk.rps,
                o.wrk.p99_ms
            );
            if config == Config::Capturing {
                let _ = write!(line, ", {:.0} events", o.events);
            }
            if !matches!(config, Config::Baseline | Config::Floor) {
                let _ = write!(
                    line,
                    ", {:.0} drops, observer CPU {:.1}%",
                    o.drops,
                    100.0 * o.cpu_s / duration as f64
                );
            }
            say(line);
            match config {
                Config::Baseline => base.push(o.wrk),
                Config::Floor => floor.push(o.wrk),
                Config::Hooks => idle.push(o),
                Config::Drain => drain.push(o),
                Config::Capturing => obs.push(o),
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let d_cpu = mean(
        &drain
            .iter()
            .map(|o| 100.0 * o.cpu_s / duration as f64)
            .collect::<Vec<_>>(),
    );
    let d_drops = drain.iter().map(|o| o.drops).sum::<f64>();
    let events = obs.iter().map(|o| o.events).sum::<f64>();
    let requests = obs.iter().map(|o| o.wrk.requests as f64).sum::<f64>();
    let drops = obs.iter().map(|o| o.drops).sum::<f64>();
    let cpu = mean(
        &obs.iter()
            .map(|o| 100.0 * o.cpu_s / duration as f64)
            .collect::<Vec<_>>(),
    );
    let us_per_event = cpu / 100.0 * duration as f64 * rounds as f64 / events.max(1.0) * 1e6;

    say(format!(
        "kernel program cost: one more hooks-only and one more capturing run, with {BPF_STATS} on"
    ));
    let idle_k = with_observer(bin, &dir, duration, IDLE_PORT, true, &[])?;
    let obs_k = with_observer(bin, &dir, duration, PORT, true, &[])?;

    say("running criterion micro-benchmarks (cargo bench -p observer)");
    let crit = Command::new("cargo")
        .current_dir(root)
        .args(["bench", "-p", "observer", "--", "--noplot"])
        // Same build as target/release/observer (the bench profile shares its directory): with the eBPF object.
        .env_remove("AYA_BUILD_SKIP")
        .output()
        .context("running cargo bench")?;
    let crit_text = String::from_utf8_lossy(&crit.stdout);
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

    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n\nWritten by `cargo xtask bench` on {}; {} vCPU. Regenerate with that command.\n",
        date(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    let _ = writeln!(
        md,
        "## Loopback nginx under wrk, without and with the observer\n"
    );
    let _ = writeln!(md, "nginx (1 worker, 612-byte page) on 127.0.0.1, `wrk -t1 -c50 -d{duration}s --latency`, {rounds} rounds. A round \
        runs these one after the other, baseline and capturing next to each other, and every other round in reverse \
        order (so that a machine speeding up or slowing down over minutes favours none): no observer (baseline); \
        `observer run --ports {PORT} --sink ndjson:...` (capturing every exchange); \
        `observer run --ports {PORT} --drain-only` (drain only: the kernel captures every exchange and the reader \
        drains the ring buffer on its usual cadence, but drops every record unread: nothing is parsed, paired or \
        written); `observer run --ports {IDLE_PORT}` (hooks only: cgroup_skb + \
        sock_ops attached on the root cgroup and classifying every packet, nothing on that port so nothing emitted); \
        two no-op cgroup_skb programs (`r0 = 1; exit`) on the root \
        cgroup's ingress and egress (the floor: what any cgroup_skb hook costs here before it reads a byte).\n");
    let _ = writeln!(md, "| round | baseline req/s | no-op req/s | hooks-only req/s | drain-only req/s | capturing req/s | baseline p99 ms | no-op p99 ms | hooks-only p99 ms | drain-only p99 ms | capturing p99 ms | events | drops | observer CPU % |");
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (i, ((((b, f), h), d), o)) in base
        .iter()
        .zip(&floor)
        .zip(&idle)
        .zip(&drain)
        .zip(&obs)
        .enumerate()
    {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.1} |",
            i + 1,
            b.rps,
            f.rps,
            h.wrk.rps,
            d.wrk.rps,
            o.wrk.rps,
            b.p99_ms,
            f.p99_ms,
            h.wrk.p99_ms,
            d.wrk.p99_ms,
            o.wrk.p99_ms,
            o.events,
            o.drops,
            100.0 * o.cpu_s / duration as f64
        );
    }
    let _ = writeln!(
        md,
        "\n| figure | ratio of the means | median of the rounds' ratios | mean of the rounds' ratios, 95% interval | rounds' ratios, lowest to highest | goal |\n|---|---|---|---|---|---|"
    );
    // Each round's runs follow one another within a minute, so a round's ratio is the fairest single comparison on a
    // machine whose neighbours come and go; the median of them shrugs off one disturbed round.
    let base_w: Vec<&WrkResult> = base.iter().collect();
    let configs = [
        (Config::Capturing, wrk_of(&obs)),
        (Config::Drain, wrk_of(&drain)),
        (Config::Hooks, wrk_of(&idle)),
        (Config::Floor, floor.iter().collect()),
    ];
    // The goals' verdicts, for the last progress line.
    let mut verdicts = String::new();
    for (config, runs) in &configs {
        let name = config.name();
        let note = if *config == Config::Floor {
            " (floor)"
        } else {
            ""
        };
        let (rps_goal, p99_goal) = config.goals();
        let rps = ratios(runs, &base_w, |w| w.rps);
        let p99 = ratios(runs, &base_w, |w| w.p99_ms);
        for (what, r, goal) in [("throughput", rps, rps_goal), ("p99", p99, p99_goal)] {
            let goal = match goal {
                None => String::new(),
                Some(g) => {
                    let goal = format!("{g}: {}", g.judge(r.interval));
                    let _ = write!(verdicts, "{name} {what} ratio {:.3} ({goal}); ", r.of_means);
                    goal
                }
            };
            let _ = writeln!(
                md,
                "| {what}, {name} / baseline{note} | {:.3} ({:+.1}%) | {:.3} ({:+.1}%) | {:.3} to {:.3} | {:.3} to {:.3} | {goal} |",
                r.of_means,
                100.0 * (r.of_means - 1.0),
                r.median,
                100.0 * (r.median - 1.0),
                r.interval.0,
                r.interval.1,
                r.lowest,
                r.highest,
            );
        }
    }
    let _ = writeln!(
        md,
        "| events / requests completed | {:.0} / {:.0} ({:.3}) | 1.000 |",
        events,
        requests,
        events / requests.max(1.0)
    );
    let _ = writeln!(
        md,
        "| events/s while capturing | {:.0} | |",
        events / (duration as f64 * rounds as f64)
    );
    let _ = writeln!(
        md,
        "| drops (kernel, flow evictions, sink) | {drops:.0} | 0 |"
    );
    let _ = writeln!(md, "| observer CPU while capturing (one core = 100%) | {cpu:.1}% ({us_per_event:.2} µs per event) | |");
    let _ = writeln!(md, "| observer CPU, drain only | {d_cpu:.1}% | |");
    let _ = writeln!(md, "| drops, drain only (kernel) | {d_drops:.0} | 0 |");
    let _ = writeln!(md, "\nEvents are the lines the agent wrote, counted after it flushed and exited. wrk counts requests \
        completed in its window; the agent also reports requests still in flight when wrk stops, so the event ratio can \
        exceed 1 by up to the connection count.\n");
    let _ = writeln!(md, "How to read this: each configuration adds one thing to the one before. No-op: running a \
        cgroup_skb program on every packet at all. Hooks only: the observer's classification of every packet, nothing \
        emitted. Drain only: the kernel copying every exchange into the ring buffer, and the reader waking to drain it \
        (the kernel wakes it once 256 KiB of records wait), but none of the agent's processing. \
        Capturing: the agent's parsing, pairing, enrichment and NDJSON writing on top. wrk and nginx keep both vCPUs of \
        a small machine busy, so whatever the observer runs, in the kernel or on its own threads, is taken from them; \
        the step from hooks only to drain only is what the capture and the reader's wake-ups cost, the step from drain \
        only to capturing what the agent's work per event costs (the CPU column; per event, see `per_exchange` \
        below). The lowest-to-highest column shows how far one round strays from another on this machine. The 95% \
        interval is that of the mean of the rounds' ratios (Student's t over the rounds, each round a paired sample): \
        a goal is met when the whole interval is on its side, not met when the whole interval is past it, and not \
        resolved by this run otherwise; more rounds narrow the interval.\n");
    let _ = writeln!(md, "## Kernel program cost\n");
    let _ = writeln!(md, "One more hooks-only run and one more capturing run (not part of the rounds above), with \
        `kernel.bpf_stats_enabled=1`: the kernel then times every program run, which adds two clock reads (some tens \
        of ns) to each.\n");
    let _ = writeln!(md, "| program | hooks only: runs | ns per run | capturing: runs | ns per run |\n|---|---|---|---|---|");
    let per_run = |c: &ProgCost| c.ns as f64 / c.runs.max(1) as f64;
    for c in &obs_k.progs {
        let h = idle_k.progs.iter().find(|h| h.name == c.name);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} |",
            c.name,
            h.map_or("-".to_string(), |h| h.runs.to_string()),
            h.map_or("-".to_string(), |h| format!("{:.0}", per_run(h))),
            c.runs,
            per_run(c)
        );
    }
    let per_request = |o: &Observed| {
        o.progs.iter().map(|c| c.ns as f64).sum::<f64>() / o.wrk.requests.max(1) as f64 / 1000.0
    };
    let _ = writeln!(
        md,
        "\nKernel program time per request completed: hooks only {:.2} µs, capturing {:.2} µs ({:.0} req/s in that \
         run). It is spent on the CPUs of the processes that send and receive, on top of the agent's own CPU above.\n",
        per_request(&idle_k),
        per_request(&obs_k),
        obs_k.wrk.rps
    );
    let _ = writeln!(md, "## Criterion micro-benchmarks\n\n```");
    for l in &crit_lines {
        let _ = writeln!(md, "{}", l.trim());
    }
    let _ = writeln!(md, "```");
    std::fs::write(root.join("BENCHMARKS.md"), &md)?;
    say(format!("{verdicts}drops {drops:.0}; wrote BENCHMARKS.md"));
    let _ = std::fs::remove_dir_all(&dir);
    if !crit.status.success() {
        bail!(
            "cargo bench failed:\n{}",
            String::from_utf8_lossy(&crit.stderr)
        );
    }
    Ok(())
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_of_the_mean_uses_students_t() {
        // mean 3, sample sd sqrt(2.5), standard error sqrt(0.5), t(4) = 2.776: half width 1.963.
        let (lo, hi) = interval95(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert!(
            (lo - 1.037).abs() < 1e-3 && (hi - 4.963).abs() < 1e-3,
            "got {lo} to {hi}"
        );
        // Identical rounds: no spread, the interval is the value itself.
        assert_eq!(interval95(&[0.9, 0.9, 0.9]), (0.9, 0.9));
        // One round says nothing about the spread.
        assert_eq!(interval95(&[0.9]), (f64::NEG_INFINITY, f64::INFINITY));
        assert_eq!(t95(6), 2.447);
        assert_eq!(t95(100), 1.96);
    }

    #[test]
    fn a_goal_is_decided_only_when_the_whole_interval_is_on_one_side() {
        let at_least = Goal::AtLeast(0.97);
        assert_eq!(at_least.judge((0.975, 0.99)), "met");
        assert_eq!(at_least.judge((0.88, 0.95)), "not met");
        assert_eq!(at_least.judge((0.95, 0.99)), "not resolved by this run");
        assert_eq!(
            at_least.judge((f64::NEG_INFINITY, f64::INFINITY)),
            "not resolved by this run"
        );
        let at_most = Goal::AtMost(1.05);
        assert_eq!(at_most.judge((0.98, 1.04)), "met");
        assert_eq!(at_most.judge((1.06, 1.20)), "not met");
        assert_eq!(at_most.judge((1.00, 1.10)), "not resolved by this run");
        assert_eq!(format!("{at_least} {at_most}"), ">= 0.97 <= 1.05");
    }
}
