//! `cargo xtask demo [--scenario NAME]`: a small world to look at in the UI, on this machine, in two minutes.
//!
//! Two network namespaces joined by a veth pair: `uidemo-s` runs three HTTP APIs (`xtask/demo/world.py servers`:
//! payments with an API key, catalog anonymous, orders with a bearer token), `uidemo-c` runs five client
//! applications, each its own process in its own cgroup under `uidemo/` (one of them, checkout-v2, replaces
//! checkout-v1, starts a minute after it and calls three times as often). A demo registry names them all; the local ClickHouse dev server
//! stores the traffic; the agent runs with the UI. A scenario starts, after a short delay, the behaviour its insight
//! is about. Ctrl-C (or `--for`) stops the clients, the agent (which detaches its programs), the servers and
//! ClickHouse, then deletes the namespaces and cgroups: [`World`]'s drop does it on every exit path.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::toolchain::{run as run_cmd, say};
use crate::{clickhouse, toolchain};

/// Namespaces, cgroup and addresses of the demo world.
const NS_SERVERS: &str = "uidemo-s";
const NS_CLIENTS: &str = "uidemo-c";
const VETH: (&str, &str) = ("uidemo-vs", "uidemo-vc");
const SERVER_IP: &str = "10.77.0.1";
const CLIENT_IP: &str = "10.77.0.2";
const CGROUP: &str = "uidemo";
const CLICKHOUSE_PORT: u16 = 8124;
const METRICS: &str = "127.0.0.1:9466";
pub const UI: &str = "127.0.0.1:9465";
/// The clients that run from the start.
const CLIENTS: &[&str] = &["web-shop", "checkout-v1", "billing-batch", "inventory-sync"];
/// The successor and when it starts: a minute after its predecessor, as a replacement arrives, so the agent has
/// learned what the predecessor does before comparing them (it keeps a replaced predecessor's profile as it was).
const SUCCESSOR: (&str, Duration) = ("checkout-v2", Duration::from_secs(60));

/// A scenario: the (client, behaviour) processes it starts, the kinds of finding it makes the agent raise, and
/// what to look at.
type Scenario = (
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
    &'static str,
);

/// The scenarios `--scenario` accepts.
pub const SCENARIOS: &[&str] = &[
    "new-app",
    "novel-stream",
    "retry-storm",
    "client-bug",
    "flood",
    "key-misuse",
];

fn scenario(name: &str) -> Result<Scenario> {
    Ok(match name {
        "new-app" => (
            &[("partner-portal", "normal")],
            &["new_consumer"],
            "Partner Portal, registered but never seen, starts calling catalog and orders: Overview → new \
             applications, Insights → new_consumer",
        ),
        "novel-stream" => (
            &[("web-shop", "novel-stream")],
            &["novel_pattern"],
            "Web Shop starts calling POST /v1/payments/{id}/refunds, a route it never called: Insights → \
             novel_pattern, API Payments → routes",
        ),
        "retry-storm" => (
            &[("billing-batch", "retry-storm")],
            &["retry_storm"],
            "orders fail for Billing Batch, which retries at once, six times: Insights → retry_storm (after 2-3 \
             minutes), Application Billing Batch → errors",
        ),
        "client-bug" => (
            &[("checkout-v2", "client-bug")],
            &["client_bug"],
            "Checkout v2 sends eight times its usual calls, each twice, all rejected with 400: Insights → \
             client_bug (after 2-3 minutes), Application Checkout v2 → errors",
        ),
        "flood" => (
            &[("bots", "flood")],
            &["flood"],
            "a hundred keyless bots scan the catalog: Insights → flood (after 2-3 minutes), API Catalog → \
             consumers",
        ),
        "key-misuse" => (
            &[("laptop", "normal"), ("ci-job", "normal")],
            &["key_outside_grant", "key_shared"],
            "Web Shop's key is used from a laptop (curl) and CI uses a revoked key: Access and audit → shared \
             keys and keys used outside their grant, Insights → key_outside_grant",
        ),
        other => bail!("unknown scenario {other:?}: {}", SCENARIOS.join(", ")),
    })
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn ip(args: &[&str]) -> Result<()> {
    run_cmd(Command::new("ip").args(args))
}

fn cgroup_root() -> PathBuf {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.controllers").exists())
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
}

/// Everything the demo started; dropping it stops and removes it all.
struct World {
    cgroup: PathBuf,
    /// Clients first, then the agent, then the servers: stopped in that order.
    clients: Vec<(String, Child)>,
    agent: Option<Child>,
    servers: Option<Child>,
    clickhouse: Option<clickhouse::DevServer>,
}

impl World {
    fn new() -> Result<World> {
        let w = World {
            cgroup: cgroup_root().join(CGROUP),
            clients: Vec::new(),
            agent: None,
            servers: None,
            clickhouse: None,
        };
        w.remove_network(); // leftovers of a demo that was killed
        for ns in [NS_SERVERS, NS_CLIENTS] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "link", "add", VETH.0, "type", "veth", "peer", "name", VETH.1,
        ])?;
        for (veth, ns, addr) in [
            (VETH.0, NS_SERVERS, SERVER_IP),
            (VETH.1, NS_CLIENTS, CLIENT_IP),
        ] {
            ip(&["link", "set", veth, "netns", ns])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", veth])?;
            ip(&["-n", ns, "link", "set", veth, "up"])?;
        }
        std::fs::create_dir_all(&w.cgroup)
            .with_context(|| format!("creating cgroup {}", w.cgroup.display()))?;
        Ok(w)
    }

    /// Runs `python3 world.py ARGS` in namespace `ns` and cgroup `uidemo/GROUP`, in its own process group.
    fn spawn_world(&self, script: &Path, ns: &str, group: &str, args: &[&str]) -> Result<Child> {
        let cg = self.cgroup.join(group);
        std::fs::create_dir_all(&cg)?;
        // The shell joins the cgroup before exec, so the program's first connection is already in it.
        let mut full = Command::new("sh");
        full.arg("-c")
            .arg(r#"cg=$1; ns=$2; script=$3; shift 3; echo $$ > "$cg/cgroup.procs" && exec nsenter --net="/run/netns/$ns" python3 "$script" "$@""#)
            .arg("demo")
            .arg(&cg)
            .arg(ns)
            .arg(script)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut full, 0);
        full.spawn()
            .context("starting python3 in the demo namespace")
    }

    /// Starts client `name` of world.py with `behaviour` in the clients' namespace and its own cgroup.
    fn spawn_client(&mut self, script: &Path, name: &str, behaviour: &str) -> Result<()> {
        let c = self.spawn_world(
            script,
            NS_CLIENTS,
            name,
            &["client", name, SERVER_IP, behaviour],
        )?;
        self.clients.push((format!("{name} ({behaviour})"), c));
        Ok(())
    }

    /// An error if the agent has exited.
    fn check_agent(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self
            .agent
            .as_mut()
            .and_then(|a| a.try_wait().ok().flatten())
        {
            bail!("the agent exited ({status}); see {}", log.display());
        }
        Ok(())
    }

    fn remove_network(&self) {
        for ns in [NS_SERVERS, NS_CLIENTS] {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}

/// Sends `sig` to `child` and waits up to `grace` for it, then kills it.
fn stop(child: &mut Child, sig: libc::c_int, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    // SAFETY: kill(2) on a pid we spawned and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for World {
    fn drop(&mut self) {
        for (_, c) in &mut self.clients {
            stop(c, libc::SIGINT, Duration::from_secs(3));
        }
        if let Some(a) = &mut self.agent {
            // SIGINT: the agent drains, detaches every program and flushes its sinks.
            stop(a, libc::SIGINT, Duration::from_secs(30));
        }
        if let Some(s) = &mut self.servers {
            stop(s, libc::SIGINT, Duration::from_secs(3));
        }
        if let Some(ch) = self.clickhouse.take() {
            let _ = ch.stop();
        }
        self.remove_network();
        // Children first; a cgroup is removable once its processes are gone.
        if let Ok(dir) = std::fs::read_dir(&self.cgroup) {
            for e in dir.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.cgroup);
        say("demo stopped: namespaces, cgroups and processes removed, programs detached");
    }
}

fn fingerprint(bin: &Path, secret: &Path, key: &str) -> Result<String> {
    let text = toolchain::output(
        Command::new(bin)
            .args(["registry", "fingerprint", "--key-secret-file"])
            .arg(secret)
            .arg(key),
    )?;
    text.split_whitespace()
        .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_string)
        .with_context(|| format!("no fingerprint in {text:?}"))
}

/// The demo registry: teams, the three APIs, the applications and their keys' grants.
fn registry(
    fp: &serde_json::Map<String, serde_json::Value>,
    bin: &Path,
    secret: &Path,
) -> Result<String> {
    let mut keys = String::new();
    for (name, key) in fp {
        let key = key.as_str().unwrap_or_default();
        let f = fingerprint(bin, secret, key)?;
        let suffix = &key[key.len() - 4..];
        let (app, grants) = match name.as_str() {
            "web-shop" => ("web-shop", "[payments-api, orders-api]"),
            "checkout-v1" | "checkout-v2" => (name.as_str(), "[payments-api]"),
            "billing-batch" => ("billing-batch", "[orders-api, payments-api]"),
            "partner-portal" => ("partner-portal", "[orders-api]"),
            _ => ("ci-pipeline", "[payments-api]"),
        };
        let revoked = if name == "revoked-ci" {
            "\n    revoked_at: 2026-01-20T10:00:00Z\n    revoked_by: bob"
        } else {
            ""
        };
        keys.push_str(&format!(
            "  - id: {name}-key\n    application: {app}\n    fingerprint: {f}\n    suffix: \"{suffix}\"\n    \
             granted_by: alice\n    granted_at: 2026-01-05\n    apis: {grants}{revoked}\n"
        ));
    }
    Ok(format!(
        r#"version: 1
teams:
  - {{id: web, name: Web shop, line_of_business: Retail, alert_contact: web@example.com}}
  - {{id: mobile, name: Mobile, line_of_business: Retail, alert_contact: mobile@example.com}}
  - {{id: finance, name: Finance, line_of_business: Corporate, alert_contact: finance@example.com}}
  - {{id: data, name: Data platform, line_of_business: Wholesale, alert_contact: data@example.com}}
  - {{id: partners, name: Partnerships, line_of_business: Partnerships, alert_contact: partners@example.com}}
apis:
  - id: payments-api
    name: Payments
    owner: finance
    match: {{hosts: [payments.demo], ports: [8081]}}
    auth: {{type: api_key, headers: [X-Api-Key]}}
    routes: ["GET /v1/payments/{{id}}", "POST /v1/payments", "POST /v1/payments/{{id}}/refunds"]
  - id: catalog-api
    name: Catalog
    owner: web
    match: {{hosts: [catalog.demo], ports: [8082]}}
    auth: anonymous
    routes: ["GET /v1/items", "GET /v1/items/{{sku}}"]
  - id: orders-api
    name: Orders
    owner: web
    match: {{hosts: [orders.demo], ports: [8083]}}
    auth: bearer
    routes: ["GET /v1/orders/{{id}}", "POST /v1/orders"]
applications:
  - {{id: web-shop, name: Web Shop, team: web, created_by: alice, created_at: 2025-06-01, workload: {{cgroup: /{CGROUP}/web-shop}}}}
  - {{id: checkout-v1, name: Checkout v1, team: mobile, created_by: alice, created_at: 2024-03-01, workload: {{cgroup: /{CGROUP}/checkout-v1}}}}
  - {{id: checkout-v2, name: Checkout v2, team: mobile, created_by: alice, created_at: 2026-01-05, predecessor: checkout-v1, workload: {{cgroup: /{CGROUP}/checkout-v2}}}}
  - {{id: billing-batch, name: Billing Batch, team: finance, created_by: carol, created_at: 2025-02-01, workload: {{cgroup: /{CGROUP}/billing-batch}}}}
  - id: inventory-sync
    name: Inventory Sync
    team: data
    created_by: dave
    created_at: 2025-09-01
    workload: {{cgroup: /{CGROUP}/inventory-sync}}
  - {{id: partner-portal, name: Partner Portal, team: partners, created_by: erin, created_at: 2026-01-05, workload: {{cgroup: /{CGROUP}/partner-portal}}}}
  - {{id: ci-pipeline, name: CI pipeline, team: web, created_by: alice, created_at: 2025-01-01}}
keys:
{keys}"#
    ))
}

fn http_ok(addr: &str, path: &str) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    s.read(&mut buf)
        .is_ok_and(|n| buf[..n].starts_with(b"HTTP/1.1 200"))
}

/// Options of `cargo xtask demo`.
pub struct DemoOptions {
    /// Scenarios, comma-separated (see [`SCENARIOS`]).
    pub scenario: Option<String>,
    /// How long after the start the scenarios begin.
    pub scenario_after: Duration,
    /// Stop by itself after this long (tests); default: until Ctrl-C.
    pub run_for: Option<Duration>,
    /// Extra arguments for `observer run` (e.g. insights options).
    pub agent_args: Vec<String>,
}

pub fn run(root: &Path, bin: &Path, opts: DemoOptions) -> Result<()> {
    if !toolchain::is_root() {
        bail!("the demo needs root (network namespaces, cgroups, eBPF): run `sudo -E cargo xtask demo`");
    }
    let scenarios: Vec<Scenario> = opts
        .scenario
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| scenario(s.trim()))
        .collect::<Result<_>>()?;
    toolchain::ensure_packages(&[
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("python3", "python3"),
    ])?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let dir = root.join(".data/demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let script = root.join("xtask/demo/world.py");
    let secret = dir.join("key-secret");

    let keys = Command::new("python3").arg(&script).arg("keys").output()?;
    let keys: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&keys.stdout).context("world.py keys")?;
    let reg = dir.join("registry.yaml");
    std::fs::write(&reg, registry(&keys, bin, &secret)?)?;
    run_cmd(Command::new(bin).args(["registry", "check"]).arg(&reg))?;

    let mut world = World::new()?;
    say(format!(
        "starting the local ClickHouse on port {CLICKHOUSE_PORT} (data in {})",
        dir.join("clickhouse").display()
    ));
    let ch = clickhouse::spawn(root, CLICKHOUSE_PORT, &dir.join("clickhouse"))?;
    let url = ch.url();
    world.clickhouse = Some(ch);
    run_cmd(Command::new(bin).args(["schema", "apply", "--clickhouse-url", &url]))?;

    let log = std::fs::File::create(dir.join("agent.log"))?;
    let mut agent = Command::new(bin);
    agent
        .args(["run", "--registry"])
        .arg(&reg)
        .arg("--key-secret-file")
        .arg(&secret)
        .args([
            "--sink",
            "clickhouse",
            "--clickhouse-url",
            &url,
            "--spool-dir",
        ])
        .arg(dir.join("spool"))
        .args([
            "--ports",
            "8081,8082,8083",
            "--metrics",
            METRICS,
            "--ui",
            UI,
            "--insights",
            "--insights-config",
        ])
        .arg(root.join("xtask/demo/insights.toml"))
        .args(&opts.agent_args)
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut agent, 0);
    world.agent = Some(agent.spawn().context("starting the agent")?);
    let agent_log = dir.join("agent.log");
    let ready = Instant::now() + Duration::from_secs(60);
    while !http_ok(METRICS, "/readyz") {
        if Instant::now() > ready || STOP.load(Ordering::SeqCst) {
            bail!(
                "the agent did not become ready; see {}",
                agent_log.display()
            );
        }
        world.check_agent(&agent_log)?;
        std::thread::sleep(Duration::from_millis(200));
    }

    world.servers =
        Some(world.spawn_world(&script, NS_SERVERS, "apis", &["servers", SERVER_IP])?);
    std::thread::sleep(Duration::from_secs(1));
    for name in CLIENTS {
        world.spawn_client(&script, name, "normal")?;
    }
    say(format!(
        "the demo is running. Open http://{UI}/ (Overview: consumption by application within a minute or two; \
         Applications → Checkout v2: three times its predecessor; Access and audit: grants and their use; \
         Insights: what the agent finds, with short demo windows from xtask/demo/insights.toml).\n\
         \x20 agent log: {}; ClickHouse: {url}; Ctrl-C stops everything.",
        agent_log.display()
    ));
    let started = Instant::now();
    let mut pending = Some(scenarios);
    let mut successor = Some(SUCCESSOR);
    loop {
        if STOP.load(Ordering::SeqCst) {
            say("stopping the demo");
            break;
        }
        if opts.run_for.is_some_and(|d| started.elapsed() >= d) {
            say("--for elapsed: stopping the demo");
            break;
        }
        world.check_agent(&agent_log)?;
        if let Some((name, after)) = successor.filter(|s| started.elapsed() >= s.1) {
            world.spawn_client(&script, name, "normal")?;
            say(format!(
                "{name} started {} s after the others: it replaces checkout-v1",
                after.as_secs()
            ));
            successor = None;
        }
        if started.elapsed() >= opts.scenario_after {
            for (procs, kinds, what) in pending.take().unwrap_or_default() {
                for (name, behaviour) in procs {
                    world.spawn_client(&script, name, behaviour)?;
                }
                say(format!(
                    "scenario started: {what} (finding kinds: {})",
                    kinds.join(", ")
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(world);
    Ok(())
}
