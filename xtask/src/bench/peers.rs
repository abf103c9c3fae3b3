//! `cargo xtask bench --peers`: other ways of seeing the same traffic, on the same workload and in the same rounds as
//! the observer: a sidecar stand-in (an nginx reverse proxy in front of the app, logging key, status and time per
//! request: the cheapest sidecar there is), live `tshark` decoding HTTP, and `tcpdump` writing packets to a file.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::load::{count_lines, start_nginx, Nginx, KEY_HEADER, PORT};

/// The reverse proxy's port: wrk talks to it, it talks to the app on [`PORT`].
pub const PROXY_PORT: u16 = 18182;

/// Packages the peers need: binary, Debian package.
pub const PACKAGES: &[(&str, &str)] = &[("tshark", "tshark"), ("tcpdump", "tcpdump")];

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Peer {
    Proxy,
    Tshark,
    Tcpdump,
}

impl Peer {
    pub const ALL: [Peer; 3] = [Peer::Proxy, Peer::Tshark, Peer::Tcpdump];

    pub fn name(self) -> &'static str {
        match self {
            Peer::Proxy => "sidecar stand-in (nginx proxy)",
            Peer::Tshark => "tshark decoding HTTP",
            Peer::Tcpdump => "tcpdump to a file",
        }
    }

    /// What wrk talks to while this peer runs.
    pub fn port(self) -> u16 {
        match self {
            Peer::Proxy => PROXY_PORT,
            _ => PORT,
        }
    }

    /// How it is run, for the report.
    pub fn command(self) -> String {
        match self {
            Peer::Proxy => format!(
                "nginx (1 worker) on {PROXY_PORT}: `proxy_pass` to the app over keep-alive upstream connections, \
                 `log_format '$http_{} $status $request_time'` to a buffered access log",
                KEY_HEADER.to_ascii_lowercase().replace('-', "_")
            ),
            Peer::Tshark => format!(
                "`tshark -i lo -l -n -f 'tcp port {PORT}' -d tcp.port=={PORT},http -Y http.request -T fields \
                 -e http.request.method -e http.request.uri` to a file"
            ),
            Peer::Tcpdump => format!("`tcpdump -i lo -n -s 0 -w FILE tcp port {PORT}`"),
        }
    }

    /// Starts the peer; it is ready (listening or capturing) when this returns.
    pub fn start(self, dir: &Path) -> Result<Running> {
        let out = dir.join(format!("peer-{}", self.port_name()));
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir_all(&out)?;
        let proc = match self {
            Peer::Proxy => {
                let http = format!(
                    "log_format bench '$http_{h} $status $request_time'; \
                     access_log {d}/access.log bench buffer=64k flush=1s; \
                     upstream app {{ server 127.0.0.1:{PORT}; keepalive 64; }}",
                    h = KEY_HEADER.to_ascii_lowercase().replace('-', "_"),
                    d = out.display()
                );
                let server = format!(
                    "server {{ listen 127.0.0.1:{PROXY_PORT}; location / {{ proxy_pass http://app; \
                     proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
                );
                Proc::Nginx(start_nginx(&out, "proxy", PROXY_PORT, 1, &http, &server)?)
            }
            Peer::Tshark => {
                let filter = format!("tcp port {PORT}");
                let decode = format!("tcp.port=={PORT},http");
                let child = Command::new("tshark")
                    .args(["-i", "lo", "-l", "-n", "-f", &filter, "-d", &decode])
                    .args(["-Y", "http.request", "-T", "fields"])
                    .args(["-e", "http.request.method", "-e", "http.request.uri"])
                    .stdout(std::fs::File::create(out.join("requests.txt"))?)
                    .stderr(std::fs::File::create(out.join("stderr.txt"))?)
                    .spawn()
                    .context("starting tshark")?;
                wait_for_line(&out.join("stderr.txt"), "Capturing on", &child)?;
                Proc::Capture(child)
            }
            Peer::Tcpdump => {
                let child = Command::new("tcpdump")
                    .args(["-i", "lo", "-n", "-s", "0", "-w"])
                    .arg(out.join("packets.pcap"))
                    .args(["tcp", "port", &PORT.to_string()])
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(out.join("stderr.txt"))?)
                    .spawn()
                    .context("starting tcpdump")?;
                wait_for_line(&out.join("stderr.txt"), "listening on", &child)?;
                Proc::Capture(child)
            }
        };
        Ok(Running {
            peer: self,
            proc,
            out,
        })
    }

    fn port_name(self) -> &'static str {
        match self {
            Peer::Proxy => "proxy",
            Peer::Tshark => "tshark",
            Peer::Tcpdump => "tcpdump",
        }
    }
}

enum Proc {
    Nginx(Nginx),
    Capture(Child),
}

/// A started peer.
pub struct Running {
    peer: Peer,
    proc: Proc,
    out: PathBuf,
}

/// What a peer reported of the run's requests once stopped.
pub struct Reported {
    /// Requests it reported (access log lines, decoded requests); `None` when it decodes nothing (tcpdump).
    pub requests: Option<u64>,
    /// Its own account of what it missed, when it gives one (tcpdump's "dropped by kernel").
    pub note: String,
}

impl Running {
    /// The peer's main process (its children's CPU is counted too).
    pub fn pid(&self) -> u32 {
        match &self.proc {
            Proc::Nginx(n) => n.child.id(),
            Proc::Capture(c) => c.id(),
        }
    }

    /// Stops the peer (gracefully: nginx flushes its log, tshark decodes what it buffered, within 60 s) and counts
    /// what it reported.
    pub fn finish(self) -> Result<Reported> {
        let Running { peer, proc, out } = self;
        match proc {
            Proc::Nginx(n) => drop(n),
            Proc::Capture(mut c) => {
                // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our own child, not
                // yet reaped (we wait for it below), so it cannot name another process.
                unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
                let deadline = Instant::now() + Duration::from_secs(60);
                while c.try_wait()?.is_none() {
                    if Instant::now() > deadline {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let stderr = std::fs::read_to_string(out.join("stderr.txt")).unwrap_or_default();
        let reported = match peer {
            Peer::Proxy => Reported {
                requests: Some(count_lines(&out.join("access.log"))?),
                note: String::new(),
            },
            Peer::Tshark => Reported {
                requests: Some(count_lines(&out.join("requests.txt"))?),
                note: stderr
                    .lines()
                    .filter(|l| l.contains("dropped"))
                    .collect::<Vec<_>>()
                    .join("; "),
            },
            Peer::Tcpdump => Reported {
                requests: None,
                note: stderr
                    .lines()
                    .filter(|l| l.contains("packets"))
                    .collect::<Vec<_>>()
                    .join("; "),
            },
        };
        let _ = std::fs::remove_dir_all(&out);
        Ok(reported)
    }
}

/// Waits (up to 20 s) for `needle` in the file a child writes its stderr to.
fn wait_for_line(path: &Path, needle: &str, child: &Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "process {} did not say `{needle}` within 20 s; it said: {text}",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
