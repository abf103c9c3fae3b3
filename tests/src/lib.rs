//! Harness for the privileged end-to-end tests: runs the real agent binary, real servers (nginx, python) and real
//! clients (curl, python, wrk) on loopback and in network namespaces, and reads what reached the NDJSON sink.
//!
//! Needs root and `OBSERVER_BIN` (set by `cargo xtask test`). Every helper panics with a message on failure.
#![warn(clippy::undocumented_unsafe_blocks)]
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

mod faults;
mod reliability;
pub use faults::{
    rss_mib, send, stored, wait_metric, wait_metric_for, wait_spool_drained, SmallDisk,
};
pub use reliability::{metrics_delta, parse_metrics, CaseReport};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "observer-e2e-{}-{}-{}",
        name,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
    d
}

pub fn observer_bin() -> PathBuf {
    let bin = std::env::var_os("OBSERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("OBSERVER_BIN is not set: run these tests with `cargo xtask test` (as root)")
        });
    assert!(
        bin.exists(),
        "OBSERVER_BIN {} does not exist",
        bin.display()
    );
    bin
}

pub fn require_root() {
    let out = Command::new("id").arg("-u").output().expect("running id");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "the end-to-end tests must run as root"
    );
}

/// Runs a command to completion, panicking with its output when it fails.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn wait_tcp(addr: &str, ns: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let ok = match ns {
            None => TcpStream::connect(addr).is_ok(),
            Some(ns) => {
                let (host, port) = addr.rsplit_once(':').expect("host:port");
                Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        ns,
                        "bash",
                        "-c",
                        &format!("exec 3<>/dev/tcp/{host}/{port}"),
                    ])
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            }
        };
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing accepted connections on {addr} (netns {ns:?}) within 15 s");
}

/// A plain HTTP GET over a fresh TCP connection (for the agent's own endpoints).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub what: String,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, what: &str) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what} ({cmd:?}): {e}"));
        Proc {
            child,
            what: what.to_string(),
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our child, not yet reaped.
        unsafe { libc_kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM and wait up to `timeout`; returns the exit status.
    pub fn stop(&mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal(15);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("waiting") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("{} did not exit within {timeout:?} of SIGTERM", self.what);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(15);
            std::thread::sleep(Duration::from_millis(100));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

static METRICS_PORT: AtomicU32 = AtomicU32::new(19500);

/// The agent under test, writing NDJSON to a file.
pub struct Observer {
    pub proc: Proc,
    pub ndjson: PathBuf,
    pub metrics: String,
    pub dir: PathBuf,
}

/// How [`Observer::launch`] starts the agent: in a network namespace, behind a wrapper command (`setpriv ...`), at
/// a log level other than `info`, with stdout kept in a file.
#[derive(Debug, Clone, Default)]
pub struct Launch<'a> {
    pub ns: Option<&'a str>,
    pub wrapper: Vec<String>,
    pub log_level: Option<&'a str>,
    pub stdout: Option<PathBuf>,
}

impl Observer {
    /// Starts `observer run --sink ndjson:... --metrics ...` plus `extra`, and waits for /readyz.
    pub fn start(dir: &Path, extra: &[&str]) -> Observer {
        Self::launch(&Launch::default(), dir, extra)
    }

    /// Same, inside network namespace `ns` (for TC on an interface of that namespace).
    pub fn start_in(ns: Option<&str>, dir: &Path, extra: &[&str]) -> Observer {
        Self::launch(
            &Launch {
                ns,
                ..Launch::default()
            },
            dir,
            extra,
        )
    }

    /// Same, started as `how` says.
    pub fn launch(how: &Launch, dir: &Path, extra: &[&str]) -> Observer {
        let ndjson = dir.join("events.ndjson");
        let metrics = format!("127.0.0.1:{}", METRICS_PORT.fetch_add(1, Ordering::SeqCst));
        let bin = observer_bin();
        // nsenter switches only the network namespace: `ip netns exec` would also remount /sys, hiding the host's
        // cgroup v2 mount the agent attaches its socket hooks to.
        let mut argv: Vec<std::ffi::OsString> = how.wrapper.iter().map(Into::into).collect();
        if let Some(ns) = how.ns {
            argv.extend([
                "nsenter".into(),
                format!("--net=/run/netns/{ns}").into(),
                "--".into(),
            ]);
        }
        argv.push(bin.into());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd.args([
            "run",
            "--sink",
            &format!("ndjson:{}", ndjson.display()),
            "--metrics",
            &metrics,
        ])
        .args([
            "--key-secret-file",
            &dir.join("key-secret").display().to_string(),
        ])
        .args(extra)
        .env("RUST_LOG", how.log_level.unwrap_or("info"))
        .stdout(match &how.stdout {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("stdout file")),
            None => Stdio::null(),
        })
        .stderr(std::fs::File::create(dir.join("observer.log")).expect("log file"));
        let proc = Proc::spawn(&mut cmd, "observer");
        let obs = Observer {
            proc,
            ndjson,
            metrics,
            dir: dir.to_path_buf(),
        };
        obs.wait_ready(how.ns);
        obs
    }

    fn wait_ready(&self, ns: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = match ns {
                None => matches!(http_get(&self.metrics, "/readyz"), Some((200, _))),
                Some(ns) => Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        ns,
                        "curl",
                        "-sf",
                        &format!("http://{}/readyz", self.metrics),
                    ])
                    .stdout(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false),
            };
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("observer not ready within 30 s; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("observer.log")).unwrap_or_default()
    }

    /// Prometheus text from /metrics.
    pub fn metrics_text(&self) -> String {
        http_get(&self.metrics, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The value of one unlabelled metric (e.g. `observer_kernel_ringbuf_full_total`); panics when it is missing.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not in /metrics:\n{text}"))
    }

    /// Every sample on /metrics, by its name and labels as written (`observer_flow_evicted_total{table="connections"}`).
    pub fn metrics_map(&self) -> BTreeMap<String, f64> {
        parse_metrics(&self.metrics_text())
    }

    /// SIGTERM, expect exit 0, and return every event written.
    pub fn stop(mut self) -> Vec<Value> {
        let st = self.proc.stop(Duration::from_secs(20));
        assert!(
            st.success(),
            "observer exited with {st} on SIGTERM; log:\n{}",
            self.log()
        );
        read_ndjson(&self.ndjson)
    }
}

pub fn read_ndjson(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("invalid NDJSON line {l:?}: {e}"))
        })
        .collect()
}

/// Events whose `dst_port` is `port`.
pub fn on_port(events: &[Value], port: u16) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["dst_port"].as_u64() == Some(port as u64))
        .cloned()
        .collect()
}

/// A pair of network namespaces joined by a veth pair: `ns_a` 10.213.N.1, `ns_b` 10.213.N.2. Removed on drop.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    pub ip_a: String,
    pub ip_b: String,
    pub veth_a: String,
    pub veth_b: String,
}

impl NetnsPair {
    pub fn new(tag: &str, subnet: u8) -> NetnsPair {
        let pid = std::process::id() % 10000;
        let p = NetnsPair {
            a: format!("obs{tag}a{pid}"),
            b: format!("obs{tag}b{pid}"),
            ip_a: format!("10.213.{subnet}.1"),
            ip_b: format!("10.213.{subnet}.2"),
            veth_a: format!("vo{tag}a{pid}"),
            veth_b: format!("vo{tag}b{pid}"),
        };
        for ns in [&p.a, &p.b] {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
            sh(Command::new("ip").args(["netns", "add", ns]));
            sh(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        sh(Command::new("ip").args([
            "link", "add", &p.veth_a, "type", "veth", "peer", "name", &p.veth_b,
        ]));
        sh(Command::new("ip").args(["link", "set", &p.veth_a, "netns", &p.a]));
        sh(Command::new("ip").args(["link", "set", &p.veth_b, "netns", &p.b]));
        sh(Command::new("ip").args([
            "-n",
            &p.a,
            "addr",
            "add",
            &format!("{}/24", p.ip_a),
            "dev",
            &p.veth_a,
        ]));
        sh(Command::new("ip").args([
            "-n",
            &p.b,
            "addr",
            "add",
            &format!("{}/24", p.ip_b),
            "dev",
            &p.veth_b,
        ]));
        sh(Command::new("ip").args(["-n", &p.a, "link", "set", &p.veth_a, "up"]));
        sh(Command::new("ip").args(["-n", &p.b, "link", "set", &p.veth_b, "up"]));
        p
    }

    /// A command run inside namespace `ns`.
    pub fn exec(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// An empty cgroup v2 directory (no process in it), removed on drop: socket hooks attached there see nothing.
pub struct EmptyCgroup(pub PathBuf);

impl EmptyCgroup {
    pub fn new(tag: &str) -> EmptyCgroup {
        let root = if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() {
            Path::new("/sys/fs/cgroup/unified")
        } else {
            Path::new("/sys/fs/cgroup")
        };
        let d = root.join(format!("observer-e2e-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("creating {}: {e}", d.display()));
        EmptyCgroup(d)
    }
}

impl Drop for EmptyCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

impl Observer {
    /// The agent inside `pair.a` with its socket hooks on an empty cgroup and TC on `pair.a`'s veth, capturing
    /// `port`: everything it reports comes through TC, each segment once (the path for traffic no local socket owns).
    pub fn start_tc_only(pair: &NetnsPair, dir: &Path, port: u16) -> (Observer, EmptyCgroup) {
        let cg = EmptyCgroup::new("empty");
        let obs = Observer::start_in(
            Some(&pair.a),
            dir,
            &[
                "--ports",
                &port.to_string(),
                "--iface",
                &pair.veth_a,
                "--cgroup",
                &cg.0.display().to_string(),
            ],
        );
        (obs, cg)
    }
}

/// A python3 HTTP/1.1 test server with endpoints for every framing case. See `server.py` next to this file.
pub const PY_SERVER: &str = include_str!("server.py");

/// Starts the python test server on `addr:port`, optionally in a namespace.
pub fn python_server(dir: &Path, ns: Option<&str>, addr: &str, port: u16) -> Proc {
    let script = dir.join("server.py");
    std::fs::write(&script, PY_SERVER).expect("writing server.py");
    let mut cmd = match ns {
        Some(ns) => NetnsPair::exec(ns, "python3"),
        None => Command::new("python3"),
    };
    cmd.arg(&script)
        .arg(addr)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc::spawn(&mut cmd, "python test server");
    wait_tcp(&format!("{addr}:{port}"), ns);
    p
}

/// A byte-level python3 HTTP/1.x server that answers any request line. See `raw_server.py` next to this file.
pub const RAW_SERVER: &str = include_str!("raw_server.py");

/// Starts the raw test server on `addr:port` (on loopback: no namespace).
pub fn raw_server(dir: &Path, addr: &str, port: u16) -> Proc {
    python_script(
        dir,
        "raw_server.py",
        RAW_SERVER,
        &[addr, &port.to_string()],
        addr,
        port,
    )
}

/// The hostile-traffic server: takes anything, see `hostile_server.py` next to this file.
pub const HOSTILE_SERVER: &str = include_str!("hostile_server.py");

/// Starts the hostile-traffic server on loopback: `port` answers requests, `banner_port` answers before any request.
pub fn hostile_server(dir: &Path, addr: &str, port: u16, banner_port: u16) -> Proc {
    let p = python_script(
        dir,
        "hostile_server.py",
        HOSTILE_SERVER,
        &[addr, &port.to_string(), &banner_port.to_string()],
        addr,
        port,
    );
    wait_tcp(&format!("{addr}:{banner_port}"), None);
    p
}

/// The ClickHouse fault injector: see `fault_proxy.py` next to this file.
pub const FAULT_PROXY: &str = include_str!("fault_proxy.py");

/// Starts the fault proxy on loopback `port` in front of `upstream`; returns it and the file whose content is the
/// mode (`pass`, `500`, `delay:SECONDS`), read at each request.
pub fn fault_proxy(dir: &Path, port: u16, upstream: u16) -> (Proc, PathBuf) {
    let mode = dir.join("fault-mode");
    std::fs::write(&mode, "pass").expect("fault mode");
    let p = python_script(
        dir,
        "fault_proxy.py",
        FAULT_PROXY,
        &[
            &port.to_string(),
            &upstream.to_string(),
            &mode.display().to_string(),
        ],
        "127.0.0.1",
        port,
    );
    (p, mode)
}

/// Ids of every BPF object of `kind` (`prog`, `link`, `map`) loaded on the node (`bpftool KIND show`).
pub fn bpf_ids(kind: &str) -> std::collections::BTreeSet<String> {
    let out = sh(Command::new("bpftool").args(["-j", kind, "show"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|o| format!("{} {}", o["id"], o["name"]))
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `text` to `dir/name`, runs it with python3 and `args` on loopback and waits for `addr:port` to accept.
fn python_script(dir: &Path, name: &str, text: &str, args: &[&str], addr: &str, port: u16) -> Proc {
    let script = dir.join(name);
    std::fs::write(&script, text).unwrap_or_else(|e| panic!("writing {name}: {e}"));
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let p = Proc::spawn(&mut cmd, name);
    wait_tcp(&format!("{addr}:{port}"), None);
    p
}

/// nginx serving `dir/html` on `addr:port` with an access log counting every request it answered.
pub fn nginx(dir: &Path, ns: Option<&str>, addr: &str, port: u16) -> Proc {
    std::fs::create_dir_all(dir.join("html")).expect("html dir");
    std::fs::create_dir_all(dir.join("tmp")).expect("tmp dir");
    std::fs::write(dir.join("html/index.html"), "hello from nginx\n").expect("index");
    std::fs::write(dir.join("html/big.bin"), vec![b'x'; 300_000]).expect("big");
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process on; worker_processes 1; user root; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{ log_format c '$request_method $request_uri $status'; access_log {d}/access.log c;\n\
           client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
           uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp; keepalive_requests 100000;\n\
           server {{ listen {addr}:{port}; root {d}/html;\n\
             location /echo {{ client_body_buffer_size 1m; return 201 \"created\\n\"; }}\n\
             location /nothing {{ return 204; }}\n\
             location / {{ }} }} }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
    let mut cmd = match ns {
        Some(ns) => NetnsPair::exec(ns, "nginx"),
        None => Command::new("nginx"),
    };
    cmd.args([
        "-c",
        &dir.join("nginx.conf").display().to_string(),
        "-e",
        &dir.join("error.log").display().to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let p = Proc::spawn(&mut cmd, "nginx");
    wait_tcp(&format!("{addr}:{port}"), ns);
    p
}

/// Lines of nginx's access log (one per answered request).
pub fn access_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Runs curl (optionally in a namespace) with `args`, returning stdout; panics when curl fails.
pub fn curl(ns: Option<&str>, args: &[&str]) -> String {
    let mut cmd = match ns {
        Some(ns) => NetnsPair::exec(ns, "curl"),
        None => Command::new("curl"),
    };
    let out = sh(cmd.args(["-sS", "--max-time", "10"]).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The registry fingerprint of `key` under the key secret in `dir` (`observer registry fingerprint`).
pub fn fingerprint(dir: &Path, key: &str) -> String {
    let out = sh(Command::new(observer_bin()).args([
        "registry",
        "fingerprint",
        "--key-secret-file",
        &dir.join("key-secret").display().to_string(),
        key,
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint in {text:?}"))
        .trim()
        .to_string()
}

/// Waits until `f` holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Short description of events for assertion messages.
pub fn brief(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {}{} -> {} side={} req={} resp={} client={}({}) server={}({})",
                e["method"],
                e["host"],
                e["path"],
                e["status"],
                e["side"],
                e["req_bytes"],
                e["resp_bytes"],
                e["client_comm"],
                e["client_pid"],
                e["server_comm"],
                e["server_pid"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The project's ClickHouse dev server (`xtask/clickhouse/devserver.py` over chdb) on a loopback port, data in a
/// scratch directory. `cargo xtask test` sets `OBSERVER_CLICKHOUSE_PYTHON` and `OBSERVER_CLICKHOUSE_DEVSERVER`.
pub struct ClickHouse {
    pub proc: Proc,
    pub url: String,
    addr: String,
}

impl ClickHouse {
    pub fn start(dir: &Path, port: u16) -> ClickHouse {
        let var = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    panic!("{name} is not set: run these tests with `cargo xtask test` (as root)")
                })
        };
        let python = var("OBSERVER_CLICKHOUSE_PYTHON");
        let script = var("OBSERVER_CLICKHOUSE_DEVSERVER");
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(python);
        cmd.arg(script)
            .args(["--port", &port.to_string()])
            .arg("--data")
            .arg(dir.join("clickhouse"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("clickhouse.log")).expect("clickhouse log"));
        let proc = Proc::spawn(&mut cmd, "ClickHouse dev server");
        let ch = ClickHouse {
            proc,
            url: format!("http://{addr}"),
            addr,
        };
        let up = eventually(Duration::from_secs(60), || {
            matches!(http_get(&ch.addr, "/ping"), Some((200, _)))
        });
        assert!(up, "ClickHouse dev server did not answer /ping within 60 s");
        ch
    }

    /// Runs `sql` over the HTTP interface and returns the TSV result, panicking with ClickHouse's message on error.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "60",
                "--data-binary",
                sql,
                "-w",
                "\n%{http_code}",
            ])
            .arg(&self.url)
            .output()
            .expect("running curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        assert!(
            out.status.success() && code == "200",
            "ClickHouse query failed ({code}): {sql}\n{body}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        body.trim_end().to_string()
    }

    /// A query returning one number.
    pub fn count(&self, sql: &str) -> u64 {
        let v = self.query(sql);
        v.parse()
            .unwrap_or_else(|e| panic!("{sql}: expected a number, got {v:?}: {e}"))
    }
}
