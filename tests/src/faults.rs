//! What the fault suites (`tests/tests/faults*.rs`) share: phased curl traffic, waiting on a /metrics series, the
//! rows ClickHouse stored per phase, the agent's RSS, and a small tmpfs for a spool that runs out of disk.
#![forbid(unsafe_code)]
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{curl, eventually, sh, ClickHouse, Observer};

/// `n` keep-alive GETs of `/{phase}/0..n` to nginx on loopback `port` with curl; returns `n`.
pub fn send(port: u16, phase: &str, n: u64) -> u64 {
    let mut args = Vec::new();
    for i in 0..n {
        args.extend([
            "-o".to_string(),
            "/dev/null".to_string(),
            format!("http://127.0.0.1:{port}/{phase}/{i}"),
        ]);
    }
    curl(None, &args.iter().map(String::as_str).collect::<Vec<_>>());
    n
}

/// Waits up to `timeout` for series `name` to reach `at_least`; panics naming `what` with /metrics and the log.
pub fn wait_metric_for(obs: &Observer, name: &str, at_least: f64, what: &str, timeout: Duration) {
    let ok = eventually(timeout, || {
        obs.metrics_map().get(name).copied().unwrap_or(0.0) >= at_least
    });
    assert!(
        ok,
        "{what}: {name} did not reach {at_least}:\n{}\nlog:\n{}",
        obs.metrics_text(),
        obs.log()
    );
}

/// [`wait_metric_for`] with 30 s.
pub fn wait_metric(obs: &Observer, name: &str, at_least: f64, what: &str) {
    wait_metric_for(obs, name, at_least, what, Duration::from_secs(30));
}

/// Waits until the agent's spool is empty (every spooled batch replayed).
pub fn wait_spool_drained(obs: &Observer, timeout: Duration) {
    let drained = eventually(timeout, || {
        obs.metrics_map()
            .get("observer_sink_spool_batches")
            .copied()
            == Some(0.0)
    });
    assert!(
        drained,
        "spool not drained:\n{}\nlog:\n{}",
        obs.metrics_text(),
        obs.log()
    );
}

/// (rows, distinct exchanges) stored in ClickHouse for `/{phase}/...` on `port`.
pub fn stored(ch: &ClickHouse, port: u16, phase: &str) -> (u64, u64) {
    let v = ch.query(&format!(
        "SELECT count(), uniqExact(conn_id, ts, path) FROM observer.http_requests \
         WHERE dst_port = {port} AND startsWith(path, '/{phase}/')"
    ));
    let (a, b) = v.split_once('\t').unwrap_or(("0", "0"));
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

/// Resident memory of the agent, MiB (`/proc/PID/status`).
pub fn rss_mib(obs: &Observer) -> f64 {
    std::fs::read_to_string(format!("/proc/{}/status", obs.proc.child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A tmpfs of `size` (`1m`) mounted on a directory; unmounted when dropped.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    pub fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = sh(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir));
        assert!(out.status.success(), "mount tmpfs on {}", dir.display());
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
