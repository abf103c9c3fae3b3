//! Command-line configuration of `observer run`: capture scope, limits, how long to run, and the sinks (durations
//! and sizes through [`crate::units`]). The agent turns these into the plain configurations the components take (`loader::LoadOptions`,
//! `flow::FlowConfig`, `sink::SinkConfig`).
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use crate::sink::clickhouse::schema::ConnectArgs;
use crate::sink::{ClickHouseConfig, Retention, SinkConfig, SinkError, SinkSpec};
use crate::units::{parse_bytes, parse_duration};

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
    #[arg(long, default_value_t = 131_072)]
    pub max_connections: usize,
    /// Most requests awaiting a response per connection (pipelining depth); beyond it the oldest is evicted.
    #[arg(long, default_value_t = 64)]
    pub max_pending: usize,
    /// Fill the origin-across-hops fields (origin_*, parent_*, hop, origin_by): which inbound request each
    /// outbound one was made for. Off by default: it notes every request head and costs agent CPU per event (about
    /// 0.7 µs in `cargo bench --bench flow`, see the README); without it those fields stay empty and `origin_by` is
    /// `none`.
    #[arg(long)]
    pub origin: bool,
    /// A request still waiting for its response after this long is reported with status 0.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Longest wait between two drains of the ring buffer while records flow. Under load the kernel wakes the
    /// reader sooner, once 512 KiB of records waits, so this matters only for light traffic: it bounds how late
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

/// Sink options of `observer run`.
#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Where events go: stdout, clickhouse, ndjson:PATH. Repeat or separate with commas for several.
    #[arg(long = "sink", value_delimiter = ',', default_value = "stdout", value_parser = |s: &str| s.parse::<SinkSpec>().map_err(|e| e.to_string()))]
    pub sinks: Vec<SinkSpec>,
    /// Events queued per sink before new ones are dropped (counted) instead of slowing capture.
    #[arg(long, default_value_t = 65_536)]
    pub sink_queue: usize,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// ClickHouse database holding observer's tables.
    #[arg(long, default_value = "observer")]
    pub clickhouse_database: String,
    /// Apply the schema (idempotent migrations) at start.
    #[arg(long)]
    pub clickhouse_apply_schema: bool,
    /// Raw event retention used when applying the schema.
    #[arg(long, default_value = "30d")]
    pub retention: Retention,
    /// Insert a batch at this many rows...
    #[arg(long, default_value_t = 100_000)]
    pub batch_rows: usize,
    /// ...or this many bytes...
    #[arg(long, default_value = "32MiB", value_parser = parse_bytes)]
    pub batch_max_bytes: u64,
    /// ...or this long after its first row.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub batch_interval: Duration,
    /// Timeout of one ClickHouse insert.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub clickhouse_timeout: Duration,
    /// Directory for batches ClickHouse could not take yet (replayed in order, also after a restart).
    #[arg(long, default_value = "/var/lib/observer/spool")]
    pub spool_dir: PathBuf,
    /// Spool size bound; past it new batches are dropped and counted.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    pub spool_max_bytes: u64,
    /// This agent's id in insert deduplication tokens (default: host name).
    #[arg(long, env = "OBSERVER_AGENT_ID")]
    pub agent_id: Option<String>,
}

impl SinkArgs {
    /// The sinks' configuration. Fails when ClickHouse is selected without a URL, or its password file cannot be
    /// read.
    pub fn sink_config(&self) -> Result<SinkConfig, SinkError> {
        let clickhouse = if self.sinks.contains(&SinkSpec::ClickHouse) {
            Some(self.clickhouse_config()?)
        } else {
            None
        };
        Ok(SinkConfig {
            sinks: self.sinks.clone(),
            queue: self.sink_queue,
            clickhouse,
            apply_schema: self.clickhouse_apply_schema.then_some(self.retention),
        })
    }

    /// The ClickHouse sink's configuration (also when `--sink clickhouse` is not selected).
    pub fn clickhouse_config(&self) -> Result<ClickHouseConfig, SinkError> {
        if self.connect.clickhouse_url.is_none() {
            return Err(SinkError::MissingClickHouseUrl);
        }
        let creds = self
            .connect
            .credentials()
            .map_err(crate::sink::clickhouse::schema::SchemaError::from)?;
        let mut c = ClickHouseConfig::new(&creds.url, self.spool_dir.clone());
        c.database = self.clickhouse_database.clone();
        c.user = creds.user;
        c.password = creds.password;
        if let Some(a) = &self.agent_id {
            c.agent_id = a.clone();
        }
        c.batch_rows = self.batch_rows.max(1);
        c.batch_max_bytes = usize::try_from(self.batch_max_bytes).unwrap_or(usize::MAX);
        c.batch_interval = self.batch_interval;
        c.insert_timeout = self.clickhouse_timeout;
        c.spool_max_bytes = self.spool_max_bytes;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sink: SinkArgs,
    }

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
    fn sink_specs_parse_as_list_and_repeated() {
        let cli = Cli::try_parse_from([
            "x",
            "--sink",
            "stdout,ndjson:/tmp/a.json",
            "--sink",
            "clickhouse",
            "--clickhouse-url",
            "http://h:8123",
        ])
        .expect("parses");
        assert_eq!(
            cli.sink.sinks,
            vec![
                SinkSpec::Stdout,
                SinkSpec::Ndjson("/tmp/a.json".into()),
                SinkSpec::ClickHouse
            ]
        );
        let err = Cli::try_parse_from(["x", "--sink", "kafka"])
            .err()
            .expect("kafka is rejected")
            .to_string();
        assert!(
            err.contains("expected stdout, clickhouse or ndjson:PATH"),
            "{err}"
        );
    }

    #[test]
    fn defaults_follow_clickhouse_guidance() {
        let cli = Cli::try_parse_from(["x", "--clickhouse-url", "http://h:8123"]).expect("parses");
        let c = cli.sink.clickhouse_config().expect("config");
        assert_eq!(c.batch_rows, 100_000);
        assert_eq!(c.batch_interval, Duration::from_secs(1));
        assert_eq!(c.spool_max_bytes, 1 << 30);
        assert_eq!(c.database, "observer");
        assert_eq!(cli.sink.sinks, vec![SinkSpec::Stdout]);
    }

    #[test]
    fn missing_password_file_names_the_file() {
        let cli = Cli::try_parse_from([
            "x",
            "--clickhouse-url",
            "http://h",
            "--clickhouse-password-file",
            "/nonexistent/pw",
        ])
        .expect("parses");
        let err = cli.sink.clickhouse_config().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/pw"), "{err}");
    }

    #[test]
    fn clickhouse_sink_requires_url() {
        let args = Cli::try_parse_from(["x", "--sink", "clickhouse"])
            .expect("parses")
            .sink;
        if args.connect.clickhouse_url.is_some() {
            return; // CLICKHOUSE_URL set in the environment
        }
        let err = args.sink_config().expect_err("must fail").to_string();
        assert!(err.contains("--clickhouse-url"), "{err}");
    }
}
