//! The ClickHouse sink's settings: server, credentials, batch bounds, spool and retry timings, with defaults that
//! follow ClickHouse's guidance. Built by the agent from the command line (`config::SinkArgs`).
use std::path::PathBuf;
use std::time::Duration;

/// The table events go to (a Distributed table when the schema was applied with `--cluster`).
pub const TABLE: &str = "http_requests";

/// Everything the ClickHouse sink needs. Its `Debug` leaves the password out.
#[derive(Clone)]
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

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ClickHouseConfig {
            url,
            database,
            user,
            password,
            agent_id,
            batch_rows,
            batch_max_bytes,
            batch_interval,
            insert_timeout,
            spool_dir,
            spool_max_bytes,
            backoff_min,
            backoff_max,
            shutdown_grace,
        } = self;
        f.debug_struct("ClickHouseConfig")
            .field("url", url)
            .field("database", database)
            .field("user", user)
            .field("password", &password.as_ref().map(|_| "<redacted>"))
            .field("agent_id", agent_id)
            .field("batch_rows", batch_rows)
            .field("batch_max_bytes", batch_max_bytes)
            .field("batch_interval", batch_interval)
            .field("insert_timeout", insert_timeout)
            .field("spool_dir", spool_dir)
            .field("spool_max_bytes", spool_max_bytes)
            .field("backoff_min", backoff_min)
            .field("backoff_max", backoff_max)
            .field("shutdown_grace", shutdown_grace)
            .finish()
    }
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
    host_name().unwrap_or_else(|| "observer".to_string())
}

/// This UTS namespace's host name (what gethostname(2) returns), when set.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|n| !n.is_empty())
}
