//! Where the agent's findings go besides its log: the `insights` table when a ClickHouse sink is configured (through
//! [`FindingsWriter`], which never waits), and `findings.ndjson` next to the NDJSON sink's file when one is.
use std::io::Write;
use std::path::PathBuf;

use tracing::warn;

use super::Finding;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, MetricType},
};

use crate::metrics::{Counter, Metrics};
use crate::sink::clickhouse::insights_rows::FindingsWriter;
use crate::sink::clickhouse::insights_rows::WriterStats;
use crate::sink::{SinkConfig, SinkError, SinkSpec};

/// The file findings are appended to, in the NDJSON sink's directory.
pub const FINDINGS_NDJSON: &str = "findings.ndjson";

/// The configured outputs.
#[derive(Default)]
pub struct Outputs {
    clickhouse: Option<(FindingsWriter, tokio::task::JoinHandle<()>)>,
    ndjson: Option<NdjsonFindings>,
    /// The UI's in-memory store, when the UI runs without ClickHouse.
    memory: Option<(std::sync::Arc<crate::ui::memory::MemoryStore>, String)>,
}

struct NdjsonFindings {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    lines: Counter,
    errors: Counter,
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
                lines: Counter::default(),
                errors: Counter::default(),
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
        if let Some((m, source)) = &self.memory {
            m.push_findings(findings, source);
        }
        if let Some(n) = &mut self.ndjson {
            let mut res = Ok(());
            for f in findings {
                res = res.and_then(|()| super::cli::print_finding(f, true, &mut n.out));
            }
            match res.and_then(|()| n.out.flush()) {
                Ok(()) => {
                    n.lines.inc_by(findings.len() as u64);
                }
                Err(e) => {
                    n.errors.inc_by(findings.len() as u64);
                    warn!(path = %n.path.display(), error = %e, "insights: writing findings failed");
                }
            }
        }
    }

    /// Also hands every finding version to the UI's in-memory store (`source` as in the `insights` table).
    pub fn with_memory(
        mut self,
        store: std::sync::Arc<crate::ui::memory::MemoryStore>,
        source: &str,
    ) -> Self {
        self.memory = Some((store, source.to_string()));
        self
    }

    /// Registers `observer_insights_findings_written_total` / `_dropped_total` per output, read at each scrape.
    pub fn register(&self, metrics: &Metrics) {
        metrics.register_collector(OutputCounts {
            clickhouse: self.clickhouse.as_ref().map(|(w, _)| w.stats()),
            ndjson: self
                .ndjson
                .as_ref()
                .map(|n| (n.lines.clone(), n.errors.clone())),
        });
    }

    /// Inserts (or spools) what is queued and stops the writer.
    pub async fn shutdown(self) {
        if let Some((w, task)) = self.clickhouse {
            drop(w);
            let _ = task.await;
        }
    }
}

/// The outputs' counts, read at scrape time.
struct OutputCounts {
    clickhouse: Option<WriterStats>,
    ndjson: Option<(Counter, Counter)>,
}

impl std::fmt::Debug for OutputCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutputCounts")
    }
}

impl Collector for OutputCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut rows: Vec<(&str, u64, u64)> = Vec::new();
        if let Some(w) = &self.clickhouse {
            rows.push(("clickhouse", w.written(), w.dropped()));
        }
        if let Some((lines, errors)) = &self.ndjson {
            rows.push(("ndjson", lines.get(), errors.get()));
        }
        for (name, help, pick) in [
            (
                "insights_findings_written",
                "Finding versions stored, per output (clickhouse, ndjson)",
                0,
            ),
            (
                "insights_findings_dropped",
                "Finding versions not stored (queue or spool full, write errors), per output",
                1,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (output, written, dropped) in &rows {
                let v = if pick == 0 { *written } else { *dropped };
                ConstCounter::new(v).encode(family.encode_family(&[("output", *output)])?)?;
            }
        }
        Ok(())
    }
}
