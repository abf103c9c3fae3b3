//! `cargo xtask soak [--for 30m]`: steady mixed traffic with connection churn through the agent and its ClickHouse
//! sink for a long time, sampling what must stay flat (agent RSS, the flow-table gauges, the spool on disk,
//! ClickHouse lag), then a PNG plot (one panel per series) and the "Soak" section of RELIABILITY.md with each
//! series' start/end/max, its slope per 10 minutes over the second half and a flatness verdict. Not part of CI.
//!
//! The world: nginx in network namespace `soak-srv`, two rate-bounded wrk clients in `soak-cli` (one keep-alive,
//! one `Connection: close`, several endpoints and methods, three registry keys of examples/registry.yaml), the
//! agent on the host (socket hooks see both ends), the ClickHouse dev server on loopback.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{benchmarks_md, clickhouse, toolchain};

const NS: (&str, &str) = ("soak-srv", "soak-cli");
const VETH: (&str, &str) = ("soak-s", "soak-c");
const IP: (&str, &str) = ("10.213.0.1", "10.213.0.2");
const PORT: u16 = 8080;
const CH_PORT: u16 = 28690;
const METRICS: &str = "127.0.0.1:28691";
/// Where the plot goes (committed beside RELIABILITY.md's section).
pub const PNG: &str = "docs/reliability/soak.png";
/// A series is flat when its slope over the second half, per 10 minutes, is at most this
/// fraction of its largest value, or at most its absolute allowance (RSS: [`RSS_SLOPE_MIB`]).
const FLAT_FRACTION: f64 = 0.05;
/// RSS allowance: MiB per 10 minutes over the second half.
const RSS_SLOPE_MIB: f64 = 2.0;

pub struct Options {
    pub run_for: Duration,
    /// Requests per second, both clients together.
    pub rate: u32,
    pub sample_every: Duration,
}

/// One sample: seconds since the traffic started, and each series' value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    t: f64,
    values: BTreeMap<String, f64>,
}

/// Everything started; dropping it stops it and removes the namespaces.
struct World {
    children: Vec<(String, Child)>,
    clickhouse: Option<clickhouse::DevServer>,
}

impl World {
    fn stop(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.children.remove(i);
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let names: Vec<String> = self.children.iter().rev().map(|(n, _)| n.clone()).collect();
        for n in names {
            self.stop(&n);
        }
        if let Some(ch) = self.clickhouse.take() {
            let _ = ch.stop();
        }
        remove_network();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    toolchain::run(Command::new("ip").args(args))
}

fn remove_network() {
    for ns in [NS.0, NS.1] {
        if Path::new("/run/netns").join(ns).exists() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn network() -> Result<()> {
    remove_network();
    for ns in [NS.0, NS.1] {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "link", "add", VETH.0, "type", "veth", "peer", "name", VETH.1,
    ])?;
    for (veth, ns, addr) in [(VETH.0, NS.0, IP.0), (VETH.1, NS.1, IP.1)] {
        ip(&["link", "set", veth, "netns", ns])?;
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", veth])?;
        ip(&["-n", ns, "link", "set", veth, "up"])?;
    }
    Ok(())
}

fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off; master_process on; worker_processes 1; user root; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ log_format c '$request_method $request_uri $status'; access_log {d}/access.log c;\n\
           client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
           uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp; keepalive_requests 1000000;\n\
           server {{ listen {ip}:{PORT}; root {d}/html;\n\
             location /v1/payments/ {{ default_type application/json; return 200 '{{\"status\":\"paid\"}}'; }}\n\
             location /v1/orders {{ client_body_buffer_size 64k; return 201 \"created\\n\"; }}\n\
             location /status {{ return 204; }}\n\
             location / {{ }} }} }}\n",
        ip = IP.0
    )
}

/// A wrk script: rotates paths, methods and API keys; `delay_ms` between requests on each connection bounds the
/// rate; `close` asks for a new connection per request.
fn wrk_script(delay_ms: u64, close: bool) -> String {
    format!(
        r#"local reqs = {{
  {{"GET", "/v1/payments/42", nil}},
  {{"GET", "/v1/payments/7?expand=true", nil}},
  {{"POST", "/v1/orders", '{{"sku":"a-1","qty":2}}'}},
  {{"GET", "/v1/orders/99", nil}},
  {{"GET", "/status", nil}},
  {{"GET", "/page.html", nil}},
}}
local keys = {{"sk_live_mobile_checkout_7Hq2x93f9a", "sk_live_legacy_checkout_Zp81k2b7c1", "sk_test_partner_portal_Qm4t0a5e02"}}
local i = 0
request = function()
  i = i + 1
  local r = reqs[(i % #reqs) + 1]
  local h = {{["Host"] = "api.example.com", ["X-Api-Key"] = keys[(i % #keys) + 1]}}
  {close}
  if r[3] then h["Content-Type"] = "application/json" end
  return wrk.format(r[1], r[2], h, r[3])
end
delay = function() return {delay_ms} end
"#,
        close = if close {
            r#"h["Connection"] = "close""#
        } else {
            ""
        }
    )
}

/// GET `path` on `addr` over HTTP/1.0; the body of a 200 answer.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    // Only a 200 counts: something else on the port must not pass for the agent.
    head.lines()
        .next()
        .is_some_and(|l| l.split(' ').nth(1) == Some("200"))
        .then(|| body.to_string())
}

/// The gauges of a Prometheus text (series whose `# TYPE` is gauge), by name with labels.
fn gauges(text: &str) -> BTreeMap<String, f64> {
    let mut gauge_names = std::collections::BTreeSet::new();
    let mut out = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            if let Some((name, "gauge")) = rest.split_once(' ') {
                gauge_names.insert(name.to_string());
            }
            continue;
        }
        let Some((k, v)) = l.rsplit_once(' ') else {
            continue;
        };
        let name = k.split('{').next().unwrap_or(k);
        if gauge_names.contains(name) {
            if let Ok(v) = v.trim().parse() {
                out.insert(k.to_string(), v);
            }
        }
    }
    out
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn dir_bytes(dir: &Path) -> f64 {
    walk_bytes(dir) as f64
}

fn walk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(|e| e.ok())
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => walk_bytes(&e.path()),
                _ => e.metadata().map_or(0, |m| m.len()),
            })
            .sum()
    })
}

fn ch_rows(url_addr: &str) -> Option<f64> {
    let q = "SELECT%20count()%20FROM%20observer.http_requests";
    http_get(url_addr, &format!("/?query={q}"))?
        .trim()
        .parse()
        .ok()
}

fn lines_in(path: &Path) -> f64 {
    std::fs::read(path).map_or(0.0, |b| bytecount(&b) as f64)
}

fn bytecount(b: &[u8]) -> usize {
    b.iter().filter(|&&c| c == b'\n').count()
}

pub fn run(root: &Path, bin: &Path, opts: Options) -> Result<()> {
    if !toolchain::is_root() {
        bail!("the soak needs root (eBPF, network namespaces): run `sudo -E cargo xtask soak`");
    }
    toolchain::ensure_packages(toolchain::TEST_PACKAGES)?;
    let dir = root.join("target/soak");
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["html", "tmp", "spool"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::write(dir.join("html/page.html"), "x".repeat(2048))?;
    let mut world = World {
        children: Vec::new(),
        clickhouse: None,
    };
    let ch = clickhouse::spawn(root, CH_PORT, &dir.join("clickhouse"))?;
    let ch_url = ch.url();
    world.clickhouse = Some(ch);
    toolchain::run(Command::new(bin).args(["schema", "apply", "--clickhouse-url", &ch_url]))?;
    network()?;
    std::fs::write(dir.join("nginx.conf"), nginx_conf(&dir))?;
    let nginx = in_ns(NS.0, "nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    world.children.push(("nginx".into(), nginx));

    let secret = dir.join("key-secret");
    std::fs::copy(root.join("examples/example-key-secret"), &secret)?;
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let spool = dir.join("spool");
    let agent = Command::new(bin)
        .args(["run", "--sink", "clickhouse", "--clickhouse-url", &ch_url])
        .arg("--spool-dir")
        .arg(&spool)
        .args(["--metrics", METRICS, "--ports", &PORT.to_string()])
        .arg("--registry")
        .arg(root.join("examples/registry.yaml"))
        .arg("--key-secret-file")
        .arg(&secret)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log"))?)
        .spawn()
        .context("starting the agent")?;
    let agent_pid = agent.id();
    world.children.push(("agent".into(), agent));
    let ready = (0..300).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        http_get(METRICS, "/readyz").is_some()
    });
    if !ready {
        bail!(
            "the agent did not answer /readyz; see {}",
            dir.join("agent.log").display()
        );
    }

    // Two thirds of the rate on keep-alive connections, a third on a new connection each.
    let secs = opts.run_for.as_secs().max(10);
    let mut clients = Vec::new();
    for (name, conns, share, close) in [("keepalive", 8u64, 2.0, false), ("close", 4, 1.0, true)] {
        let per_conn = (opts.rate as f64 * share / 3.0) / conns as f64;
        let delay = (1000.0 / per_conn.max(0.1)).round() as u64;
        let script = dir.join(format!("{name}.lua"));
        std::fs::write(&script, wrk_script(delay, close))?;
        let c = in_ns(NS.1, "wrk")
            .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s")])
            .arg("-s")
            .arg(&script)
            .arg(format!("http://{}:{PORT}/", IP.0))
            .stdout(std::fs::File::create(dir.join(format!("wrk-{name}.txt")))?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting wrk")?;
        clients.push(name.to_string());
        world.children.push((format!("wrk-{name}"), c));
    }
    toolchain::say(format!(
        "soak: {} s of ~{} req/s ({}); sampling every {} s into {}",
        secs,
        opts.rate,
        clients.join(" + "),
        opts.sample_every.as_secs(),
        dir.join("samples.csv").display()
    ));

    let started = Instant::now();
    let ch_addr = format!("127.0.0.1:{CH_PORT}");
    let access = dir.join("access.log");
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_answered = (0.0, 0.0);
    // Samples while the traffic runs: a tail after it would read as a fall in every series.
    let end = started + Duration::from_secs(secs);
    while Instant::now() + opts.sample_every <= end {
        std::thread::sleep(opts.sample_every);
        if let Some((_, c)) = world.children.iter_mut().find(|(n, _)| n == "agent") {
            if let Some(st) = c.try_wait()? {
                bail!(
                    "the agent exited during the soak ({st}); see {}",
                    dir.join("agent.log").display()
                );
            }
        }
        let t = started.elapsed().as_secs_f64();
        let mut v = BTreeMap::new();
        v.insert("agent RSS (MiB)".to_string(), rss_mib(agent_pid));
        let metrics = http_get(METRICS, "/metrics").unwrap_or_default();
        for (k, g) in gauges(&metrics) {
            v.insert(k, g);
        }
        v.insert("spool on disk (KiB)".into(), dir_bytes(&spool) / 1024.0);
        // Rows first: the count query can take a second or two under load, and nginx's log read after it makes
        // the lag an upper bound (read the other way round, rows stored meanwhile made it negative).
        let rows = ch_rows(&ch_addr).unwrap_or(f64::NAN);
        let answered = lines_in(&access);
        v.insert("exchanges answered by nginx".into(), answered);
        v.insert("rows in ClickHouse".into(), rows);
        v.insert("ClickHouse lag (answered - stored)".into(), answered - rows);
        let rate = (answered - last_answered.1) / (t - last_answered.0).max(0.001);
        last_answered = (t, answered);
        v.insert("request rate (req/s)".into(), rate);
        samples.push(Sample { t, values: v });
        if samples.len().is_multiple_of(12) {
            toolchain::say(format!(
                "soak {:.0}/{} s: RSS {:.1} MiB, {:.0} answered, lag {:.0}",
                t,
                secs,
                rss_mib(agent_pid),
                answered,
                answered - rows
            ));
        }
    }
    world.stop("wrk-keepalive");
    world.stop("wrk-close");
    // The tail: give the sink two batch intervals, then the final count.
    std::thread::sleep(Duration::from_secs(5));
    let answered = lines_in(&access);
    let rows = ch_rows(&ch_addr).unwrap_or(f64::NAN);
    let final_metrics = http_get(METRICS, "/metrics").unwrap_or_default();
    world.stop("agent");
    drop(world);

    write_csv(&dir.join("samples.csv"), &samples)?;
    let series = plotted(&samples);
    let svg = dir.join("soak.svg");
    plot(&svg, &series, &samples)?;
    let png = root.join(PNG);
    std::fs::create_dir_all(png.parent().expect("docs dir"))?;
    screenshot(&svg, &png, &series)?;
    let figures = figures(&samples, &series);
    let section = render_section(
        root,
        bin,
        &opts,
        secs,
        &figures,
        answered,
        rows,
        &final_metrics,
    );
    let path = root.join("RELIABILITY.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Reliability\n".into());
    std::fs::write(&path, benchmarks_md::replace_section(&doc, &section))?;
    toolchain::say(format!(
        "wrote the Soak section of RELIABILITY.md and {}",
        png.display()
    ));
    let failed: Vec<_> = figures
        .iter()
        .filter(|f| !f.flat)
        .map(|f| &f.name)
        .collect();
    if !failed.is_empty() {
        bail!("not flat over the second half: {failed:?}");
    }
    Ok(())
}

fn write_csv(path: &Path, samples: &[Sample]) -> Result<()> {
    let names: Vec<&String> = samples
        .iter()
        .flat_map(|s| s.values.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut out = String::from("t_seconds");
    for n in &names {
        let _ = write!(out, ",\"{}\"", n.replace('"', "'"));
    }
    out.push('\n');
    for s in samples {
        let _ = write!(out, "{:.1}", s.t);
        for n in &names {
            let _ = write!(out, ",{}", s.values.get(*n).copied().unwrap_or(f64::NAN));
        }
        out.push('\n');
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// The series plotted and judged: RSS, every flow-table gauge, the sink's queue and spool gauges, the spool on disk,
/// ClickHouse lag, and the request rate (for context, not judged).
fn plotted(samples: &[Sample]) -> Vec<String> {
    let mut names: Vec<String> = vec!["agent RSS (MiB)".into()];
    let all: std::collections::BTreeSet<&String> =
        samples.iter().flat_map(|s| s.values.keys()).collect();
    names.extend(
        all.iter()
            .filter(|n| n.starts_with("observer_flow_table_size"))
            .map(|n| n.to_string()),
    );
    names.extend(
        [
            "observer_sink_spool_bytes",
            "spool on disk (KiB)",
            "ClickHouse lag (answered - stored)",
            "request rate (req/s)",
        ]
        .iter()
        .filter(|n| all.contains(&n.to_string()))
        .map(|n| n.to_string()),
    );
    names
}

/// Least-squares slope of `(t, y)` in units per second; 0 with fewer than two points.
fn slope(points: &[(f64, f64)]) -> f64 {
    let pts: Vec<_> = points.iter().filter(|(_, y)| y.is_finite()).collect();
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return 0.0;
    }
    let mt = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let num: f64 = pts.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    let den: f64 = pts.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Figure {
    name: String,
    start: f64,
    end: f64,
    max: f64,
    /// Per 10 minutes, over the second half.
    slope_10min: f64,
    judged: bool,
    flat: bool,
}

fn figures(samples: &[Sample], series: &[String]) -> Vec<Figure> {
    let t_end = samples.last().map_or(0.0, |s| s.t);
    series
        .iter()
        .map(|name| {
            let pts: Vec<(f64, f64)> = samples
                .iter()
                .filter_map(|s| s.values.get(name).map(|v| (s.t, *v)))
                .filter(|(_, v)| v.is_finite())
                .collect();
            let second: Vec<(f64, f64)> = pts
                .iter()
                .copied()
                .filter(|(t, _)| *t >= t_end / 2.0)
                .collect();
            let max = pts.iter().map(|p| p.1).fold(0.0, f64::max);
            let slope_10min = slope(&second) * 600.0;
            let judged = !name.starts_with("request rate");
            let allowance = if name.starts_with("agent RSS") {
                RSS_SLOPE_MIB
            } else {
                FLAT_FRACTION * max
            };
            Figure {
                name: name.clone(),
                start: pts.first().map_or(f64::NAN, |p| p.1),
                end: pts.last().map_or(f64::NAN, |p| p.1),
                max,
                slope_10min,
                judged,
                // Growth is what a soak looks for: a falling series is flat.
                flat: !judged || slope_10min <= allowance.max(1e-9) || max == 0.0,
            }
        })
        .collect()
}

fn panel_size(n: usize) -> (u32, u32) {
    (1200, 260 * n.div_ceil(2) as u32)
}

/// One panel per series against minutes, as SVG (plotters).
fn plot(path: &Path, series: &[String], samples: &[Sample]) -> Result<()> {
    use plotters::prelude::*;
    let e = |e: &dyn std::fmt::Debug| anyhow!("plotting: {e:?}");
    let size = panel_size(series.len());
    let area = SVGBackend::new(path, size).into_drawing_area();
    area.fill(&WHITE).map_err(|x| e(&x))?;
    let panels = area.split_evenly((series.len().div_ceil(2), 2));
    let t_max = samples.last().map_or(1.0, |s| s.t / 60.0).max(0.1);
    for (panel, name) in panels.iter().zip(series) {
        let pts: Vec<(f64, f64)> = samples
            .iter()
            .filter_map(|s| s.values.get(name).map(|v| (s.t / 60.0, *v)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        let hi = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max);
        let lo = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min).min(0.0);
        let hi = if hi <= lo { lo + 1.0 } else { hi * 1.1 };
        let mut chart = ChartBuilder::on(panel)
            .caption(name, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, lo..hi)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .x_desc("minutes")
            .light_line_style(WHITE)
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(LineSeries::new(pts, &BLUE))
            .map_err(|x| e(&x))?;
    }
    area.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Renders the SVG to PNG with headless Chromium (as the UI tests take their screenshots).
fn screenshot(svg: &Path, png: &Path, series: &[String]) -> Result<()> {
    let (w, h) = panel_size(series.len());
    let profile = svg.with_extension("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={w},{h}"))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", svg.display()))
        .output()
        .context("running chromium")?;
    let _ = std::fs::remove_dir_all(&profile);
    if !png.exists() {
        bail!(
            "chromium wrote no screenshot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn render_section(
    root: &Path,
    bin: &Path,
    opts: &Options,
    secs: u64,
    figures: &[Figure],
    answered: f64,
    rows: f64,
    final_metrics: &str,
) -> String {
    let mut s = String::from("## Soak\n\n");
    let span = if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    };
    let cmd = format!("sudo -E cargo xtask soak --for {span} --rate {}", opts.rate);
    let _ = writeln!(
        s,
        "{} Agent binary: `{}`.\n",
        benchmarks_md::provenance(root, &cmd),
        bin.display()
    );
    let _ = writeln!(
        s,
        "{} s of steady mixed traffic, bounded at ~{} req/s: wrk in a network namespace against nginx in another, two \
         thirds on 8 keep-alive connections and a third with `Connection: close` on 4 (a new connection per request: \
         ~{} connections a second opened and closed), six endpoints (GET/POST, query strings, a 2 KiB page, 204s), \
         three registry keys of examples/registry.yaml; the agent with the ClickHouse sink to the dev server. Sampled \
         every {} s: agent RSS (/proc), the flow-table and sink gauges (/metrics), the spool on disk, ClickHouse lag \
         (exchanges nginx answered minus rows in `observer.http_requests`).\n",
        secs,
        opts.rate,
        opts.rate / 3,
        opts.sample_every.as_secs()
    );
    let _ = writeln!(s, "![soak: one panel per series against minutes]({PNG})\n");
    let _ = writeln!(
        s,
        "A series is *flat* when its least-squares slope over the second half, per 10 minutes, is at most +{} MiB \
         (RSS) or +{:.0} % of its largest value (the others; a falling series is flat); the request rate is context, \
         not judged.\n",
        RSS_SLOPE_MIB,
        FLAT_FRACTION * 100.0
    );
    s.push_str(
        "| series | start | end | max | slope per 10 min (second half) | verdict |\n|---|---:|---:|---:|---:|---|\n",
    );
    for f in figures {
        let _ = writeln!(
            s,
            "| `{}` | {:.1} | {:.1} | {:.1} | {:+.2} | {} |",
            f.name.replace('|', "\\|"),
            f.start,
            f.end,
            f.max,
            f.slope_10min,
            if !f.judged {
                "context"
            } else if f.flat {
                "flat"
            } else {
                "**growing**"
            }
        );
    }
    let m = |k: &str| {
        final_metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(k)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    let dropped: f64 = final_metrics
        .lines()
        .filter(|l| l.starts_with("observer_sink_dropped_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum();
    let verdict = if figures.iter().all(|f| f.flat) {
        "**flat**: every judged series within its allowance over the second half"
    } else {
        "**not flat**: see the series marked growing"
    };
    let _ = writeln!(
        s,
        "\nAt the end (after a 5 s tail): {answered:.0} exchanges answered by nginx, {rows:.0} rows in ClickHouse \
         ({:.0} missing, {:.3} %), agent counters: {:.0} rows sent, {:.0} spooled, {:.0} dropped by the sink, {:.0} \
         ring-buffer-full drops. Verdict: {verdict}.",
        answered - rows,
        (answered - rows) / answered.max(1.0) * 100.0,
        m("observer_sink_rows_sent_total"),
        m("observer_sink_spooled_rows_total"),
        dropped,
        m("observer_kernel_ringbuf_full_total"),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_only() {
        let text = "# TYPE observer_flow_table_size gauge\nobserver_flow_table_size{table=\"connections\"} 12\n\
                    # TYPE observer_x_total counter\nobserver_x_total 5\n";
        assert_eq!(
            gauges(text),
            BTreeMap::from([(
                "observer_flow_table_size{table=\"connections\"}".to_string(),
                12.0
            )])
        );
    }

    fn samples(f: impl Fn(f64) -> f64) -> Vec<Sample> {
        (0..=60)
            .map(|i| {
                let t = i as f64 * 30.0;
                Sample {
                    t,
                    values: BTreeMap::from([("agent RSS (MiB)".to_string(), f(t))]),
                }
            })
            .collect()
    }

    #[test]
    fn slope_and_verdict() {
        assert!((slope(&[(0.0, 1.0), (10.0, 3.0), (20.0, 5.0)]) - 0.2).abs() < 1e-12);
        let names = vec!["agent RSS (MiB)".to_string()];
        // Warm-up growth in the first half, flat after: flat.
        let warm = figures(&samples(|t| 20.0 + (t.min(600.0)) / 60.0), &names);
        assert!(warm[0].flat, "{warm:?}");
        assert_eq!(
            (warm[0].start, warm[0].end, warm[0].max),
            (20.0, 30.0, 30.0)
        );
        // A steady leak of 3 MiB per 10 minutes: growing.
        let leak = figures(&samples(|t| 20.0 + t / 200.0), &names);
        assert!(
            !leak[0].flat && (leak[0].slope_10min - 3.0).abs() < 1e-9,
            "{leak:?}"
        );
    }
}
