//! The load and what it runs against: nginx as the app (and as the reverse-proxy peer), wrk, and the CPU accounting
//! of processes and of the whole machine.
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The app nginx's port.
pub const PORT: u16 = 18181;
/// The header and value wrk sends with every request: the registry knows the key, so every exchange is enriched.
pub const KEY_HEADER: &str = "X-Api-Key";
pub const KEY: &str = "bench-key-0123456789";

/// An nginx master; SIGQUIT (graceful: workers finish and flush their logs) on drop.
pub struct Nginx {
    pub child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our own child, not yet
        // reaped (we wait for it just below), so it cannot name another process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGQUIT) };
        let _ = self.child.wait();
    }
}

/// The app: nginx answering a 612-byte page on 127.0.0.1:[`PORT`].
pub fn start_app(dir: &Path) -> Result<Nginx> {
    std::fs::create_dir_all(dir.join("html"))?;
    std::fs::write(dir.join("html/index.html"), "x".repeat(612))?;
    std::fs::write(dir.join("html/big.bin"), vec![b'b'; 1 << 20])?;
    let server = format!(
        "server {{ listen 127.0.0.1:{PORT}; root {}/html; location / {{ }} }}",
        dir.display()
    );
    // Header buffers of 16 KiB, not nginx's 8: the workloads send an 8 KiB cookie, which the default refuses
    // with `400 Request Header Or Cookie Too Large` and a closed connection (the workload was connection churn of
    // errors until stop 24).
    start_nginx(
        dir,
        "app",
        PORT,
        1,
        "access_log off; large_client_header_buffers 4 16k;",
        &server,
    )
}

/// Starts nginx named `name` (one worker unless `workers` says more; each can hold 19,000 connections, under the
/// 20,000 descriptors a process may have here) with `http` directives and a `server` block listening on `port`.
pub fn start_nginx(
    dir: &Path,
    name: &str,
    port: u16,
    workers: u32,
    http: &str,
    server: &str,
) -> Result<Nginx> {
    if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        bail!("127.0.0.1:{port} is already in use: stop what listens there (the benchmark starts its own nginx)");
    }
    let d = dir.join(name);
    std::fs::create_dir_all(d.join("tmp"))?;
    let conf = format!(
        "daemon off; master_process on; worker_processes {workers}; user root; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         worker_rlimit_nofile 20000; events {{ worker_connections {conns}; }}\n\
         http {{ {http} keepalive_requests 1000000; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;\n\
           fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
           {server} }}\n",
        d = d.display(),
        conns = if workers > 1 { 19_000 } else { 1024 }
    );
    std::fs::write(d.join("nginx.conf"), conf)?;
    let child = Command::new("nginx")
        .args([
            "-c",
            &d.join("nginx.conf").display().to_string(),
            "-e",
            &d.join("error.log").display().to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting nginx ({name})"))?;
    let ng = Nginx { child };
    wait_port(port)?;
    Ok(ng)
}

pub fn wait_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 10 s")
}

/// Where the paced runs place the app and the load: nginx's workers on the first CPU this process may use, wrk on
/// the last. Left to the scheduler, the two land on one CPU in some runs and on two in others, and with the machine
/// mostly idle that alone moved the baseline's busy time by 5-9 µs per request (17.6-18.8 on one CPU, 22.1-26.8 on
/// two; 2 vCPU VM, `wrk` paced at 8,400 requests/s), more than the observer adds. The observer and the sidecar
/// stand-in are not pinned: where they run is part of what they cost. `None` with one CPU.
pub fn paced_cpus() -> Option<(usize, usize)> {
    let cpus = allowed_cpus();
    match (cpus.first(), cpus.last()) {
        (Some(&first), Some(&last)) if first != last => Some((first, last)),
        _ => None,
    }
}

/// The CPUs this process may run on (its affinity: a container's cpuset may not start at CPU 0).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads a bit below CPU_SETSIZE of a valid set.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Sets the CPUs `pid` may run on: `cpu` alone, or (`None`) every CPU this process may use.
fn set_affinity(pid: u32, cpu: Option<usize>) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set, filled by the libc macros below.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let cpus = match cpu {
        Some(c) => vec![c],
        None => allowed_cpus(),
    };
    for c in cpus {
        // SAFETY: `c` is below CPU_SETSIZE (an allowed CPU, or one `paced_cpus` gave).
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; the kernel checks the pid.
    let rc = unsafe { libc::sched_setaffinity(pid as i32, size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// An nginx's workers held on one CPU ([`paced_cpus`]) until dropped, when they may run anywhere again.
pub struct PinnedWorkers(Vec<u32>);

impl PinnedWorkers {
    pub fn new(nginx: &Nginx, cpu: usize) -> Result<PinnedWorkers> {
        let master = nginx.child.id();
        let workers = children(master);
        if workers.is_empty() {
            bail!("nginx {master} has no workers to pin");
        }
        for &w in &workers {
            set_affinity(w, Some(cpu))
                .with_context(|| format!("pinning nginx worker {w} to CPU {cpu}"))?;
        }
        Ok(PinnedWorkers(workers))
    }
}

impl Drop for PinnedWorkers {
    fn drop(&mut self) {
        for &w in &self.0 {
            let _ = set_affinity(w, None);
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct WrkResult {
    pub rps: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Responses with a status other than 2xx or 3xx (wrk's "Non-2xx or 3xx responses").
    pub errors: u64,
}

/// `wrk -t1 -c50` for `duration` seconds against 127.0.0.1:`port`, every request carrying the bench key.
pub fn wrk(port: u16, duration: u64) -> Result<WrkResult> {
    wrk_with(port, duration, &Wrk::default())
}

/// What a workload changes in the wrk run.
#[derive(Default)]
pub struct Wrk<'a> {
    /// Connections (default 50).
    pub connections: Option<u32>,
    /// Path (default `/`).
    pub path: &'a str,
    /// Extra headers, `Name: value`.
    pub headers: Vec<String>,
    /// A Lua script for wrk (`-s`).
    pub script: Option<&'a Path>,
    /// The one CPU wrk runs on (default: any).
    pub cpu: Option<usize>,
}

pub fn wrk_with(port: u16, duration: u64, o: &Wrk) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{}", o.connections.unwrap_or(50)),
        &format!("-d{duration}s"),
        "--latency",
        "-H",
        &format!("{KEY_HEADER}: {KEY}"),
    ]);
    for h in &o.headers {
        cmd.args(["-H", h]);
    }
    if let Some(s) = o.script {
        cmd.arg("-s").arg(s);
    }
    if let Some(cpu) = o.cpu {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the forked child before exec and only makes a system call (async-signal-safe).
        unsafe {
            cmd.pre_exec(move || set_affinity(0, Some(cpu)));
        }
    }
    let path = if o.path.is_empty() { "/" } else { o.path };
    let out = cmd
        .arg(format!("http://127.0.0.1:{port}{path}"))
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
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors = v.trim().parse().unwrap_or(0);
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
    // A run answered with errors measures the errors (the 8 KiB cookie workload was connection churn of 400s until
    // stop 24): it fails, whichever configuration or workload it was.
    if r.errors > 0 {
        bail!(
            "nginx on 127.0.0.1:{port} answered {} of {} requests for {path} with an error status, so this run is \
             not the load it claims to be",
            r.errors,
            r.requests
        );
    }
    Ok(r)
}

pub fn parse_latency_ms(v: &str) -> Option<f64> {
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

/// The fields of `/proc/PID/stat` after the comm (state is index 0, ppid 1, utime 11, stime 12).
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    after.split_whitespace().map(str::to_string).collect()
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let f = stat_fields(pid);
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Every living process as (pid, parent pid).
fn processes() -> Vec<(u32, u32)> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(ppid) = stat_fields(pid).get(1).and_then(|p| p.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    parents
}

/// The living children of `parent`.
fn children(parent: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, pp)| *pp == parent)
        .map(|(c, _)| c)
        .collect()
}

/// CPU seconds a process and its living descendants have used so far (nginx's workers, tshark's dumpcap).
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let parents = processes();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree.iter().map(|&p| cpu_seconds(p)).sum()
}

/// Busy CPU seconds of the whole machine so far (all CPUs; `/proc/stat` less idle and iowait): what a run costs
/// everything on the box, the kernel's work in softirq and in other processes' system calls included.
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: f64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3).copied().unwrap_or(0.0) + cpu.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}

pub fn count_lines(path: &Path) -> Result<u64> {
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

/// A free loopback address for an agent's metrics (another agent on the box, a test's, may hold any fixed one).
pub fn free_metrics_addr() -> Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.to_string())
}

/// The sum of the series named `name` (all labels) on the agent's `/metrics` at `addr`.
pub fn scrape(addr: &str, name: &str) -> f64 {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
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
