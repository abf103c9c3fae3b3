//! Command-line configuration of `observer run`: capture scope, limits, and how long to run.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

/// Capture options of `observer run`.
#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// cgroup v2 directory whose sockets are observed (default: the hierarchy's root, i.e. the whole node).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Also attach TC programs to these interfaces, for traffic no local socket owns (forwarded, bridged).
    #[arg(long, value_name = "IF,...", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// Ports to capture (either end of the connection), or `all`.
    #[arg(long, value_name = "LIST|all", default_value = "all", value_parser = parse_ports)]
    pub ports: PortList,
    /// Bytes of headers captured per HTTP message (max 16384); longer headers are marked truncated.
    #[arg(long, value_name = "N", default_value_t = observer_common::DEFAULT_CAPTURE,
          value_parser = clap::value_parser!(u32).range(64..=observer_common::MAX_CAPTURE as i64))]
    pub capture_bytes: u32,
    /// Serve Prometheus metrics on /metrics and readiness on /readyz at this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Stop after this long (e.g. `30s`, `5m`); default: until SIGINT/SIGTERM.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration)]
    pub run_for: Option<Duration>,
    /// Most connections tracked at once; the least recently used is evicted (and counted) beyond it.
    #[arg(long, default_value_t = 65536)]
    pub max_connections: usize,
    /// Most requests awaiting a response per connection (pipelining depth); beyond it the oldest is evicted.
    #[arg(long, default_value_t = 64)]
    pub max_pending: usize,
    /// A request still waiting for its response after this long is reported with status 0.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Longest wait between two drains of the ring buffer while records flow. Under load the kernel wakes the
    /// reader sooner, once 256 KiB of records wait, so this matters only for light traffic: it bounds how late
    /// its events appear. When drains come back nearly empty the wait doubles up to 100 ms. Keep it above the
    /// scheduler tick (4 ms at 250 Hz): shorter timers cost a busy server throughput (`cargo xtask bench`).
    #[arg(long, value_name = "DURATION", default_value = "50ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Benchmarking only: drain the ring buffer as usual but drop every data record unread, so nothing is parsed,
    /// paired or written. `cargo xtask bench` uses it to split what capturing costs into the kernel's and the
    /// reader's part and the agent's processing.
    #[arg(long, hide = true)]
    pub drain_only: bool,
}

/// `--ports`: empty means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

fn parse_ports(s: &str) -> Result<PortList, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(PortList(Vec::new()));
    }
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let lo: u16 = lo
            .parse()
            .map_err(|_| format!("invalid port {lo:?} in {s:?}"))?;
        let hi: u16 = hi
            .parse()
            .map_err(|_| format!("invalid port {hi:?} in {s:?}"))?;
        if lo == 0 || hi < lo {
            return Err(format!("invalid port range {part:?} in {s:?}"));
        }
        out.extend(lo..=hi);
    }
    if out.is_empty() {
        return Err("no ports given; use `all` to capture every port".into());
    }
    Ok(PortList(out))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 30s, 5m, 1h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_lists_ranges_and_all() {
        assert_eq!(parse_ports("all").unwrap(), PortList(vec![]));
        assert_eq!(
            parse_ports("80,8080-8082").unwrap(),
            PortList(vec![80, 8080, 8081, 8082])
        );
        assert!(parse_ports("http")
            .unwrap_err()
            .contains("invalid port \"http\""));
        assert!(parse_ports("90-80")
            .unwrap_err()
            .contains("invalid port range"));
        // The kernel filter is a bitmap: any set of ports fits, e.g. the NodePort range.
        assert_eq!(parse_ports("30000-32767").unwrap().0.len(), 2768);
        assert!(parse_ports("0").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("soon")
            .unwrap_err()
            .contains("invalid duration"));
    }
}
