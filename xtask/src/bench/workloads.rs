//! `cargo xtask bench --workloads`: traffic beyond keep-alive loopback, each with the capturing agent (registry
//! enrichment, NDJSON sink): connection churn, large headers, pipelining, 1 MiB responses, and many idle keep-alive
//! connections beside the load. For each: exchanges sent and reported (0 lost is the goal), drops, the agent's CPU per
//! event, the kernel programs' time per exchange (bpf_stats) and the agent's memory.
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::load::{start_nginx, wrk_with, Nginx, Wrk, KEY, KEY_HEADER, PORT};
use super::{Agent, WARM_UP_S};
use crate::toolchain::say;

#[derive(Clone, Copy)]
enum Workload {
    KeepAlive,
    Churn,
    LargeHeaders,
    Pipelined,
    LargeBodies,
    Idle(u32),
}

impl Workload {
    fn name(self) -> String {
        match self {
            Workload::KeepAlive => "keep-alive (reference)".into(),
            Workload::Churn => "a new connection per request (`Connection: close`)".into(),
            Workload::LargeHeaders => "8 KiB cookie on every request".into(),
            Workload::Pipelined => "pipelining, 16 requests per write".into(),
            Workload::LargeBodies => "1 MiB responses (10 connections)".into(),
            Workload::Idle(n) => format!("{n} idle keep-alive connections beside the load"),
        }
    }
}

/// One workload's figures.
struct Outcome {
    workload: Workload,
    sent: u64,
    events: f64,
    drops: Vec<(&'static str, f64)>,
    /// Agent CPU per exchange over the measured window.
    agent_us: f64,
    /// The same over the warm-up before it, from the agent's start.
    cold_us: f64,
    kernel_us: f64,
    rss_mib: f64,
    hwm_mib: f64,
}

/// `VmRSS` and `VmHWM` of a process, MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// The idle connections' own nginx (several workers, `reuseport`): a process may hold 20,000 descriptors here.
const IDLE_PORT: u16 = 18183;
/// Connections per idle client process and per idle nginx worker.
const PER_PROCESS: u32 = 15_000;

/// Opens `n` keep-alive connections to `port` (spread over source addresses 127.0.0.1-8 so the ports suffice),
/// makes one keyed request on each, reads its answer, and holds them open until killed. Prints `ready N` once
/// every connection was answered.
const IDLE_CLIENT: &str = r#"
import resource, socket, sys, time
n, port, key_header, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
req = ("GET / HTTP/1.1\r\nHost: bench\r\n%s: %s\r\n\r\n" % (key_header, key)).encode()
socks = []
for i in range(n):
    s = socket.socket()
    s.bind(("127.0.0.%d" % (1 + i % 8), 0))
    s.connect(("127.0.0.1", port))
    s.sendall(req)
    socks.append(s)
for s in socks:
    data = b""
    while not (b"\r\n\r\n" in data and len(data) >= data.index(b"\r\n\r\n") + 4 + 612):
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed early")
        data += chunk
print("ready", len(socks), flush=True)
time.sleep(3600)
"#;

/// wrk's pipelining script: 16 keyed requests per write.
fn pipeline_script(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("pipeline.lua");
    std::fs::write(
        &path,
        format!(
            "init = function(args)\n  local r = {{}}\n  for i = 1, 16 do\n    r[i] = wrk.format(nil, \"/\", {{[\"{KEY_HEADER}\"] = \"{KEY}\"}})\n  end\n  req = table.concat(r)\nend\nrequest = function()\n  return req\nend\n"
        ),
    )?;
    Ok(path)
}

/// Holds `n` idle keep-alive connections open on their own nginx until dropped.
struct IdleConnections {
    _nginx: Nginx,
    clients: Vec<Child>,
}

impl IdleConnections {
    fn open(dir: &Path, n: u32) -> Result<Self> {
        let processes = n.div_ceil(PER_PROCESS);
        let html = dir.join("html");
        let server = format!(
            "server {{ listen 127.0.0.1:{IDLE_PORT} reuseport; root {}; location / {{ }} }}",
            html.display()
        );
        let nginx = start_nginx(
            dir,
            "idle",
            IDLE_PORT,
            processes + 1,
            "access_log off;",
            &server,
        )?;
        let mut idle = IdleConnections {
            _nginx: nginx,
            clients: Vec::new(),
        };
        for i in 0..processes {
            let share = n / processes + u32::from(i < n % processes);
            let mut child = Command::new("python3")
                .args([
                    "-c",
                    IDLE_CLIENT,
                    &share.to_string(),
                    &IDLE_PORT.to_string(),
                    KEY_HEADER,
                    KEY,
                ])
                .stdout(Stdio::piped())
                .spawn()
                .context("starting an idle-connection client")?;
            let stdout = child.stdout.take().context("client stdout")?;
            idle.clients.push(child);
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            if !line.starts_with("ready") {
                bail!("an idle-connection client did not get its {share} connections answered");
            }
        }
        Ok(idle)
    }
}

impl Drop for IdleConnections {
    fn drop(&mut self) {
        for c in &mut self.clients {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn run_one(bin: &Path, dir: &Path, duration: u64, w: Workload) -> Result<Outcome> {
    let mut agent = Agent::start(bin, dir, &format!("{PORT},{IDLE_PORT}"), &[])?;
    let script;
    let cookie = format!("Cookie: c={}", "k".repeat(8 * 1024));
    let mut opts = Wrk::default();
    let mut idle = None;
    let mut extra_sent = 0u64;
    match w {
        Workload::KeepAlive => {}
        Workload::Churn => opts.headers.push("Connection: close".into()),
        Workload::LargeHeaders => opts.headers.push(cookie),
        Workload::Pipelined => {
            script = pipeline_script(dir)?;
            opts.script = Some(&script);
        }
        Workload::LargeBodies => {
            opts.path = "/big.bin";
            opts.connections = Some(10);
        }
        Workload::Idle(n) => {
            idle = Some(IdleConnections::open(dir, n)?);
            extra_sent = n as u64;
        }
    }
    let settle = Duration::from_millis(500);
    let opts = &opts;
    let load = |secs: u64| {
        move || wrk_with(PORT, secs, opts).with_context(|| format!("workload {}", w.name()))
    };
    // As the headline's runs: the same load, unmeasured, first, so that the figures are a running agent's. Exchanges
    // are the agent's own count over each part (the idle connections' requests come before both).
    let x0 = agent.exchanges();
    let (warm, cold_cpu, _) = agent.measure(false, settle, load(WARM_UP_S))?;
    let x1 = agent.exchanges();
    let (r, cpu, progs) = agent.measure(true, settle, load(duration))?;
    let x2 = agent.exchanges();
    let (rss_mib, hwm_mib) = memory_mib(agent.pid());
    drop(idle);
    let (events, drops) = agent.stop_with_reasons()?;
    let per_event = |cpu: f64, exchanges: f64| {
        if exchanges.is_finite() && exchanges > 0.0 {
            cpu * 1e6 / exchanges
        } else {
            f64::NAN
        }
    };
    Ok(Outcome {
        workload: w,
        sent: warm.requests + r.requests + extra_sent,
        events,
        drops,
        agent_us: per_event(cpu, x2 - x1),
        cold_us: per_event(cold_cpu, x1 - x0),
        kernel_us: progs.iter().map(|c| c.ns as f64).sum::<f64>()
            / r.requests.max(1) as f64
            / 1000.0,
        rss_mib,
        hwm_mib,
    })
}

/// Drops by counter, `0` when none.
fn drops_text(drops: &[(&str, f64)]) -> String {
    if drops.is_empty() {
        return "0".into();
    }
    let parts: Vec<String> = drops
        .iter()
        .map(|(name, n)| format!("{n:.0} `{name}`"))
        .collect();
    parts.join(", ")
}

/// Runs every workload once and returns the BENCHMARKS.md section.
pub fn run(bin: &Path, dir: &Path, duration: u64, prov: &str) -> Result<String> {
    let all = [
        Workload::KeepAlive,
        Workload::Churn,
        Workload::LargeHeaders,
        Workload::Pipelined,
        Workload::LargeBodies,
        Workload::Idle(10_000),
        Workload::Idle(100_000),
    ];
    // `OBSERVER_BENCH_WORKLOADS=idle` runs only the workloads whose name contains one of its comma-separated words
    // (for a quick look; the section it writes then lists only those).
    let only = std::env::var("OBSERVER_BENCH_WORKLOADS").unwrap_or_default();
    let wanted = |w: &Workload| {
        let name = w.name();
        only.is_empty() || only.split(',').any(|word| name.contains(word.trim()))
    };
    let mut outcomes = Vec::new();
    for w in all.into_iter().filter(wanted) {
        let o = run_one(bin, dir, duration, w)?;
        say(format!(
            "workload {}: {} sent, {:.0} events, drops {}, agent {:.2} µs/event (first {WARM_UP_S} s {:.2}), \
             kernel {:.2} µs/exchange, RSS {:.0} MiB",
            o.workload.name(),
            o.sent,
            o.events,
            drops_text(&o.drops),
            o.agent_us,
            o.cold_us,
            o.kernel_us,
            o.rss_mib
        ));
        outcomes.push(o);
    }
    let mut md = format!("## Workloads beyond keep-alive loopback\n\n{prov}\n\n");
    let _ = writeln!(md, "Each workload runs once against the same loopback nginx, with the capturing agent (registry \
        enrichment, NDJSON sink): {WARM_UP_S} s of its load unmeasured (the warm-up, as in the headline's runs), then \
        {duration} s measured with `kernel.bpf_stats_enabled=1`. The agent's CPU per event is over the exchanges it \
        counted in the measured window (`observer_exchanges_total`); the warm-up's, from the agent's start, is beside \
        it. Sent: requests wrk completed in both parts, plus the idle client's one request per connection. Reported: \
        events the agent wrote (it also reports requests in flight when wrk stops, so it may exceed sent by up to the \
        connection count). Memory is the agent's RSS after the run (high-water mark in brackets), with the idle \
        connections still open.\n");
    let _ = writeln!(md, "| workload | sent | reported | reported / sent | drops by counter | agent µs per event | agent µs per event, first {WARM_UP_S} s | kernel µs per exchange | agent RSS MiB |\n|---|---|---|---|---|---|---|---|---|");
    for o in &outcomes {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.3} | {} | {:.2} | {:.2} | {:.2} | {:.0} ({:.0}) |",
            o.workload.name(),
            o.sent,
            o.events,
            o.events / o.sent.max(1) as f64,
            drops_text(&o.drops),
            o.agent_us,
            o.cold_us,
            o.kernel_us,
            o.rss_mib,
            o.hwm_mib
        );
    }
    md.push('\n');
    Ok(md)
}
