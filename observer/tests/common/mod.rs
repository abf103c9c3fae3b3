//! The ClickHouse dev server harness shared by the integration tests (`mod common;` in each test file).
//!
//! The server is located with `OBSERVER_CLICKHOUSE_DEVSERVER` (path to devserver.py) and `OBSERVER_CLICKHOUSE_PYTHON`
//! (a Python with `chdb-core` and `lz4`). Without them each test prints `skipped: ...` and passes, unless
//! `OBSERVER_REQUIRE_CLICKHOUSE=1`, which turns the skip into a failure (CI). Every test starts its own server on a
//! free port with a temporary data directory and holds [`serial`] while it runs (the engine is memory-hungry):
//! [`dev_fixture`].
// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]
pub mod rowbinary;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use observer::sink::clickhouse::schema::{self, Retention, SchemaConfig};
use observer::sink::clickhouse::ClickHouseConfig;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// A test's dev server: started on a temporary data directory while the test holds [`serial`].
///
/// Fields drop in declaration order: the server stops first, then its data directory is deleted, then the next test
/// may start. Keep the fixture whole in a test (use its fields, do not move them out) so that order holds.
pub struct DevFixture {
    pub server: DevServer,
    /// Holds the server's data (`ch`) and whatever else the test writes there (spools, configuration).
    pub dir: tempfile::TempDir,
    serial: MutexGuard<'static, ()>,
    /// The server's HTTP address (the same after [`DevServer::restart`]).
    pub url: String,
}

/// The dev server for `test`, or `None` (after printing why) when the test should be skipped.
pub fn dev_fixture(test: &str) -> Option<DevFixture> {
    let (python, script) = devserver_paths(test)?;
    let serial = serial();
    let dir = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(&python, &script, &dir.path().join("ch"));
    let url = server.url();
    Some(DevFixture {
        server,
        dir,
        serial,
        url,
    })
}

/// Python and devserver.py, or `None` (after printing why) when the test should be skipped.
fn devserver_paths(test: &str) -> Option<(PathBuf, PathBuf)> {
    let script = std::env::var_os("OBSERVER_CLICKHOUSE_DEVSERVER").map(PathBuf::from);
    let python = std::env::var_os("OBSERVER_CLICKHOUSE_PYTHON").map(PathBuf::from);
    let require = std::env::var("OBSERVER_REQUIRE_CLICKHOUSE").is_ok_and(|v| v == "1");
    match (python, script) {
        (Some(p), Some(s)) if s.is_file() => Some((p, s)),
        (p, s) => {
            let why = format!(
                "{test}: skipped: ClickHouse dev server not configured (OBSERVER_CLICKHOUSE_PYTHON={p:?}, \
                 OBSERVER_CLICKHOUSE_DEVSERVER={s:?} must name a Python with chdb-core and devserver.py)"
            );
            if require {
                panic!("{why}, and OBSERVER_REQUIRE_CLICKHOUSE=1");
            }
            println!("{why}");
            None
        }
    }
}

/// One dev server process over a data directory.
pub struct DevServer {
    python: PathBuf,
    script: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl DevServer {
    pub fn start(python: &Path, script: &Path, data: &Path) -> Self {
        let mut s = DevServer {
            python: python.to_path_buf(),
            script: script.to_path_buf(),
            data: data.to_path_buf(),
            log: data.with_extension("log"),
            port: 0,
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open server log {}: {e}", self.log.display()));
        let mut child = Command::new(&self.python)
            .arg(&self.script)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--data",
            ])
            .arg(&self.data)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} {}: {e}",
                    self.python.display(),
                    self.script.display()
                )
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://127.0.0.1:").nth(1) {
                        let port: String =
                            rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                        self.port = port
                            .parse()
                            .unwrap_or_else(|_| panic!("bad port in {line:?}"));
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    panic!("dev server did not report listening within 90 s; log:\n{log}");
                }
            }
        }
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as an outage without goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as an orderly shutdown (the server finishes what it is doing); SIGKILL after 20 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The port may linger briefly; the server reports a clear error and exits, so retry.
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => {
                    drop(l);
                    break;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => panic!(
                    "port {} stays busy after the server was killed: {e}",
                    self.port
                ),
            }
        }
        self.spawn();
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn client(url: &str) -> clickhouse::Client {
    clickhouse::Client::default().with_url(url)
}

pub async fn apply(url: &str, target: Option<u32>) -> schema::ApplyReport {
    let cfg = SchemaConfig::new("observer", None, Retention::days(3650))
        .expect("config")
        .with_rollup_retention(Retention::days(3650), Retention::days(3650))
        .with_request_id_retention(Retention::days(3650));
    schema::apply(&client(url), url, &cfg, target)
        .await
        .unwrap_or_else(|e| panic!("schema apply failed: {e}"))
}

pub async fn count(url: &str, sql: &str) -> u64 {
    client(url)
        .query(sql)
        .fetch_one::<u64>()
        .await
        .unwrap_or_else(|e| panic!("query {sql:?} failed: {e}"))
}

pub fn sink_config(url: &str, spool: &Path) -> ClickHouseConfig {
    let mut c = ClickHouseConfig::new(url, spool.to_path_buf());
    c.agent_id = "itest".into();
    c.batch_rows = 200;
    c.batch_interval = Duration::from_millis(100);
    c.insert_timeout = Duration::from_secs(5);
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(800);
    c.shutdown_grace = Duration::from_secs(20);
    c
}

pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond().await {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `events` through a real ClickHouse sink (spooling under `spool`) and waits until every row is stored.
pub async fn insert_events(url: &str, spool: &Path, events: &[observer::event::Event]) {
    let sink = observer::sink::build_clickhouse(sink_config(url, spool), events.len().max(16))
        .await
        .expect("sink");
    for e in events {
        sink.send(e.clone());
    }
    let m = sink.shutdown().await.expect("shutdown");
    assert_eq!(m.rows_sent, events.len() as u64, "{m:?}");
}
