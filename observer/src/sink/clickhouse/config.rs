//! The ClickHouse sink's settings: server, credentials, batch bounds, spool and retry timings, with defaults that
//! follow ClickHouse's guidance. Built by the agent from the command line (`config::SinkArgs`).
use std::path::PathBuf;
use std::time::Duration;

/// The table events go to (a Distributed table when the schema was applied with `--cluster`).
pub const TABLE: &str = "http_requests";

/// Everything the ClickHouse sink needs.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Identifies this agent in deduplication tokens (default: host name).
    pub agent_id: String,
    pub batch_rows: usize,
    pub batch_max_bytes: usize,
    pub batch_interval: Duration,
    pub insert_timeout: Duration,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long shutdown keeps replaying the spool before leaving the rest for the next start.
    pub shutdown_grace: Duration,
}

impl ClickHouseConfig {
    /// Defaults that follow ClickHouse's guidance (large batches, about one insert per second).
    pub fn new(url: &str, spool_dir: PathBuf) -> Self {
        ClickHouseConfig {
            url: url.to_string(),
            database: "observer".into(),
            user: None,
            password: None,
            agent_id: default_agent_id(),
            batch_rows: 100_000,
            batch_max_bytes: 32 << 20,
            batch_interval: Duration::from_secs(1),
            insert_timeout: Duration::from_secs(30),
            spool_dir,
            spool_max_bytes: 1 << 30,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// A client for this server and database (LZ4 compression on, validation on for typed inserts).
    pub fn client(&self) -> clickhouse::Client {
        let mut c = clickhouse::Client::default()
            .with_url(&self.url)
            .with_database(&self.database);
        if let Some(u) = &self.user {
            c = c.with_user(u);
        }
        if let Some(p) = &self.password {
            c = c.with_password(p);
        }
        c
    }
}

/// The host name, or `observer` when it cannot be read.
pub fn default_agent_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "observer".to_string()
}
