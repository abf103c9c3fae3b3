//! The local ClickHouse for development and tests: `xtask/clickhouse/devserver.py`, ClickHouse's HTTP interface
//! over chdb (the ClickHouse 26.9 engine as a Python module), run from a virtualenv in `<root>/.data/venv`.
//!
//! * [`ensure_venv`] creates the venv and installs `chdb-core` + `lz4` once.
//! * [`spawn`] starts a server in the background and returns a guard that stops it when dropped.
//! * [`run_foreground`] runs one until interrupted (`cargo xtask clickhouse`).

// `spawn` and the guard are for `cargo xtask run` / test tasks, which live in other modules.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The chdb release the dev server is written and tested against (ClickHouse 26.9).
pub const CHDB_VERSION: &str = "26.9.0";
pub const DEFAULT_PORT: u16 = 8123;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// `<root>/xtask/clickhouse/devserver.py`.
pub fn devserver_script(root: &Path) -> PathBuf {
    root.join("xtask").join("clickhouse").join("devserver.py")
}

/// The default data directory, `<root>/.data/clickhouse`.
pub fn default_data_dir(root: &Path) -> PathBuf {
    root.join(".data").join("clickhouse")
}

/// Creates `<root>/.data/venv` and installs `chdb-core==26.9.0` and `lz4` (`--no-deps`) when they are missing.
/// Idempotent: a second run only checks. Returns the venv's python interpreter.
pub fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".data").join("venv");
    let python = crate::toolchain::python_venv(&venv, "the ClickHouse dev server")?;
    // Checking the package metadata does not load chdb's 500 MB library.
    let check = "import importlib.metadata as m, sys\n\
                 try:\n    v = m.version('chdb-core'); m.version('lz4'); import lz4.block, lz4.frame\n\
                 except Exception:\n    sys.exit(1)\n\
                 sys.exit(0 if v == sys.argv[1] else 1)";
    let ok = Command::new(&python)
        .args(["-c", check, CHDB_VERSION])
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", python.display()))?
        .success();
    if !ok {
        eprintln!(
            "xtask: installing chdb-core=={CHDB_VERSION} and lz4 into {} (~565 MB, once)",
            venv.display()
        );
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .arg(format!("chdb-core=={CHDB_VERSION}"))
            .arg("lz4")
            .status()?;
        if !status.success() {
            bail!("pip install chdb-core=={CHDB_VERSION} lz4 failed ({status})");
        }
    }
    Ok(python)
}

/// A dev server running in the background; stopped (SIGTERM, then SIGKILL after 30 s) when dropped.
pub struct DevServer {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
}

impl DevServer {
    /// `http://127.0.0.1:PORT`, for `CLICKHOUSE_URL` / `clickhouse::Client::with_url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops the server and waits for it to flush and exit.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        // std has no signal API: SIGTERM through kill(1) lets the server close chdb cleanly.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(anyhow!("dev server exited with {status}"))
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill()?;
        child.wait()?;
        bail!("dev server did not stop within {STOP_TIMEOUT:?}; killed")
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("xtask: stopping the ClickHouse dev server: {e:#}");
        }
    }
}

/// Starts the dev server on 127.0.0.1:`port` (0 picks a free port) with data in `data_dir`, waits until `/ping`
/// answers, and returns a guard that stops it on drop.
pub fn spawn(root: &Path, port: u16, data_dir: &Path) -> Result<DevServer> {
    let python = ensure_venv(root)?;
    let port = if port == 0 {
        TcpListener::bind("127.0.0.1:0")?.local_addr()?.port()
    } else {
        port
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
        bail!("127.0.0.1:{port} is already in use (another ClickHouse or dev server?)");
    }
    std::fs::create_dir_all(data_dir)?;
    let child = Command::new(&python)
        .arg(devserver_script(root))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--data"])
        .arg(data_dir)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", devserver_script(root).display()))?;
    let mut server = DevServer {
        child: Some(child),
        port,
        data_dir: data_dir.to_path_buf(),
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if ping(addr) {
            return Ok(server);
        }
        if let Some(status) = server.child.as_mut().unwrap().try_wait()? {
            server.child = None;
            bail!(
                "the ClickHouse dev server exited during start-up ({status}); see its output above"
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the ClickHouse dev server did not answer /ping on {addr} within {READY_TIMEOUT:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the dev server in the foreground until it is interrupted (Ctrl-C / SIGTERM).
pub fn run_foreground(root: &Path, port: u16, data_dir: &Path) -> Result<()> {
    let python = ensure_venv(root)?;
    std::fs::create_dir_all(data_dir)?;
    let mut cmd = Command::new(&python);
    cmd.arg(devserver_script(root))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--data"])
        .arg(data_dir);
    #[cfg(unix)]
    {
        // Replace this process so that Ctrl-C and SIGTERM reach the server directly.
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        Err(err).with_context(|| format!("exec {}", python.display()))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status()?;
        if status.success() {
            Ok(())
        } else {
            bail!("dev server exited with {status}")
        }
    }
}

/// True when `GET /ping` on `addr` answers `Ok.`.
pub fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /ping HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.") && buf.windows(4).any(|w| w == b" 200") && buf.ends_with(b"Ok.\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs the dev server's venv (`cargo xtask test` makes it first); skipped with a message without it, unless
    /// `OBSERVER_REQUIRE_CLICKHOUSE=1`.
    #[test]
    fn spawn_ping_and_stop() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf();
        if !root.join(".data/venv/bin/python").exists() {
            let why = "spawn_ping_and_stop: skipped: no .data/venv (run `cargo xtask test`)";
            assert!(
                std::env::var("OBSERVER_REQUIRE_CLICKHOUSE").as_deref() != Ok("1"),
                "{why}, and OBSERVER_REQUIRE_CLICKHOUSE=1"
            );
            println!("{why}");
            return;
        }
        let data = std::env::temp_dir().join(format!("xtask-ch-test-{}", std::process::id()));
        let server = spawn(&root, 0, &data).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
        assert!(ping(addr));
        assert!(server.url().starts_with("http://127.0.0.1:"));
        server.stop().unwrap();
        assert!(!ping(addr));
        // Dropping a running server stops it as well.
        let server = spawn(&root, 0, &data).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
        drop(server);
        assert!(!ping(addr));
        std::fs::remove_dir_all(&data).unwrap();
    }
}
