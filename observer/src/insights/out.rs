//! Where the agent's findings go besides its log: the `insights` table when a ClickHouse sink is configured (through
//! [`FindingsWriter`], which never waits), and `findings.ndjson` next to the NDJSON sink's file when one is.
use std::io::Write;
use std::path::PathBuf;

use tracing::warn;

use super::Finding;
use crate::metrics::Sample;
use crate::sink::clickhouse::insights_rows::FindingsWriter;
use crate::sink::{SinkConfig, SinkError, SinkSpec};

/// The file findings are appended to, in the NDJSON sink's directory.
pub const FINDINGS_NDJSON: &str = "findings.ndjson";

/// The configured outputs.
#[derive(Default)]
pub struct Outputs {
    clickhouse: Option<(FindingsWriter, tokio::task::JoinHandle<()>)>,
    ndjson: Option<NdjsonFindings>,
}

struct NdjsonFindings {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    lines: u64,
    errors: u64,
}

impl Outputs {
    /// The outputs the sinks imply: ClickHouse (source `source`) and/or the NDJSON sink's directory.
    pub async fn from_sinks(cfg: &SinkConfig, source: &str) -> Result<Self, SinkError> {
        let mut out = Outputs::default();
        if let Some(ch) = cfg
            .clickhouse
            .as_ref()
            .filter(|_| cfg.sinks.contains(&SinkSpec::ClickHouse))
        {
            out.clickhouse = Some(FindingsWriter::start(ch.clone(), source.to_string()).await?);
        }
        if let Some(events) = cfg.sinks.iter().find_map(|s| match s {
            SinkSpec::Ndjson(p) => Some(p),
            _ => None,
        }) {
            let dir = events
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let path = dir.join(FINDINGS_NDJSON);
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| SinkError::NdjsonOpen {
                    path: path.clone(),
                    source,
                })?;
            out.ndjson = Some(NdjsonFindings {
                path,
                out: std::io::BufWriter::new(file),
                lines: 0,
                errors: 0,
            });
        }
        Ok(out)
    }

    /// Hands finding versions to every output. ClickHouse gets them through a bounded queue (drops counted); the
    /// NDJSON file is appended to and flushed (a failed write is counted and logged).
    pub fn write(&mut self, findings: &[Finding]) {
        if findings.is_empty() {
            return;
        }
        if let Some((w, _)) = &self.clickhouse {
            w.offer(findings);
        }
        if let Some(n) = &mut self.ndjson {
            let mut res = Ok(());
            for f in findings {
                res = res.and_then(|()| super::cli::print_finding(f, true, &mut n.out));
            }
            match res.and_then(|()| n.out.flush()) {
                Ok(()) => n.lines += findings.len() as u64,
                Err(e) => {
                    n.errors += findings.len() as u64;
                    warn!(path = %n.path.display(), error = %e, "insights: writing findings failed");
                }
            }
        }
    }

    /// `/metrics` samples: finding versions written and dropped, per output.
    pub fn samples(&self) -> Vec<Sample> {
        let mut s = Vec::new();
        let mut add = |output: &str, written: u64, dropped: u64| {
            s.push(
                Sample::counter(
                    "insights_findings_written_total",
                    "Finding versions stored, per output (clickhouse, ndjson)",
                    written,
                )
                .label("output", output),
            );
            s.push(
                Sample::counter(
                    "insights_findings_dropped_total",
                    "Finding versions not stored (queue or spool full, write errors), per output",
                    dropped,
                )
                .label("output", output),
            );
        };
        if let Some((w, _)) = &self.clickhouse {
            add("clickhouse", w.stats().written(), w.stats().dropped());
        }
        if let Some(n) = &self.ndjson {
            add("ndjson", n.lines, n.errors);
        }
        s
    }

    /// Inserts (or spools) what is queued and stops the writer.
    pub async fn shutdown(self) {
        if let Some((w, task)) = self.clickhouse {
            drop(w);
            let _ = task.await;
        }
    }
}
