//! The sinks' counters and the ClickHouse insert latency histogram, shared by every sink task, and their
//! Prometheus text (`observer_sink_*`).
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// Latency histogram with fixed buckets (seconds, Prometheus style).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; HISTOGRAM_BOUNDS_MS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// Upper bounds of the insert latency buckets, in milliseconds.
pub const HISTOGRAM_BOUNDS_MS: [u64; 14] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000,
];

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        for (i, b) in HISTOGRAM_BOUNDS_MS.iter().enumerate() {
            if us <= b * 1000 {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            count: self.count.load(Relaxed),
            sum_us: self.sum_us.load(Relaxed),
            cumulative: HISTOGRAM_BOUNDS_MS
                .iter()
                .zip(&self.buckets)
                .map(|(b, c)| (*b, c.load(Relaxed)))
                .collect(),
        }
    }
}

/// Histogram values: `cumulative` holds (upper bound ms, observations <= bound).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HistogramSnapshot {
    pub count: u64,
    pub sum_us: u64,
    pub cumulative: Vec<(u64, u64)>,
}

/// Live counters shared by the sinks.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub events_accepted: AtomicU64,
    pub rows_sent: AtomicU64,
    pub batches_sent: AtomicU64,
    pub insert_errors: AtomicU64,
    pub insert_latency: Histogram,
    pub spool_bytes: AtomicU64,
    pub spool_batches: AtomicU64,
    pub spooled_batches: AtomicU64,
    pub spooled_rows: AtomicU64,
    pub replayed_batches: AtomicU64,
    pub replayed_rows: AtomicU64,
    pub quarantined_files: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_spool_full: AtomicU64,
    pub dropped_spool_error: AtomicU64,
    pub dropped_write_error: AtomicU64,
    pub ndjson_lines: AtomicU64,
    pub stdout_lines: AtomicU64,
    pub registry_writes: AtomicU64,
    pub registry_errors: AtomicU64,
}

/// A copy of [`SinkMetrics`] at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// Events handed to [`SinkHandle::send`] and queued (per sink).
    pub events_accepted: u64,
    /// Rows acknowledged by ClickHouse (including replayed ones).
    pub rows_sent: u64,
    pub batches_sent: u64,
    pub insert_errors: u64,
    pub insert_latency: HistogramSnapshot,
    /// Current spool size.
    pub spool_bytes: u64,
    pub spool_batches: u64,
    /// Batches / rows written to the spool since start.
    pub spooled_batches: u64,
    pub spooled_rows: u64,
    /// Batches / rows inserted from the spool since start.
    pub replayed_batches: u64,
    pub replayed_rows: u64,
    pub quarantined_files: u64,
    pub dropped_queue_full: u64,
    pub dropped_spool_full: u64,
    pub dropped_spool_error: u64,
    pub dropped_write_error: u64,
    pub ndjson_lines: u64,
    pub stdout_lines: u64,
    pub registry_writes: u64,
    pub registry_errors: u64,
}

impl MetricsSnapshot {
    pub fn dropped_total(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_spool_full
            + self.dropped_spool_error
            + self.dropped_write_error
    }

    /// Prometheus text exposition.
    pub fn to_prometheus(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let mut c = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(o, "# HELP observer_sink_{name} {help}\n# TYPE observer_sink_{name} {kind}\nobserver_sink_{name} {v}");
        };
        c(
            "events_accepted_total",
            "Events queued to sinks.",
            "counter",
            self.events_accepted,
        );
        c(
            "rows_sent_total",
            "Rows acknowledged by ClickHouse.",
            "counter",
            self.rows_sent,
        );
        c(
            "batches_sent_total",
            "Batches acknowledged by ClickHouse.",
            "counter",
            self.batches_sent,
        );
        c(
            "insert_errors_total",
            "Failed ClickHouse inserts.",
            "counter",
            self.insert_errors,
        );
        c(
            "spool_bytes",
            "Bytes in the spool.",
            "gauge",
            self.spool_bytes,
        );
        c(
            "spool_batches",
            "Batches in the spool.",
            "gauge",
            self.spool_batches,
        );
        c(
            "spooled_rows_total",
            "Rows written to the spool.",
            "counter",
            self.spooled_rows,
        );
        c(
            "replayed_batches_total",
            "Spooled batches inserted.",
            "counter",
            self.replayed_batches,
        );
        c(
            "replayed_rows_total",
            "Spooled rows inserted.",
            "counter",
            self.replayed_rows,
        );
        c(
            "quarantined_files_total",
            "Corrupted spool files quarantined.",
            "counter",
            self.quarantined_files,
        );
        c(
            "ndjson_lines_total",
            "Lines written by NDJSON sinks.",
            "counter",
            self.ndjson_lines,
        );
        c(
            "registry_writes_total",
            "Registry states written to ClickHouse.",
            "counter",
            self.registry_writes,
        );
        let _ = writeln!(o, "# HELP observer_sink_dropped_total Events dropped, by reason.\n# TYPE observer_sink_dropped_total counter");
        for (reason, v) in [
            ("queue_full", self.dropped_queue_full),
            ("spool_full", self.dropped_spool_full),
            ("spool_error", self.dropped_spool_error),
            ("write_error", self.dropped_write_error),
        ] {
            let _ = writeln!(o, "observer_sink_dropped_total{{reason=\"{reason}\"}} {v}");
        }
        let h = &self.insert_latency;
        let _ = writeln!(o, "# HELP observer_sink_insert_seconds ClickHouse insert latency.\n# TYPE observer_sink_insert_seconds histogram");
        for (le_ms, n) in &h.cumulative {
            let _ = writeln!(
                o,
                "observer_sink_insert_seconds_bucket{{le=\"{}\"}} {n}",
                *le_ms as f64 / 1000.0
            );
        }
        let _ = writeln!(
            o,
            "observer_sink_insert_seconds_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            o,
            "observer_sink_insert_seconds_sum {}",
            h.sum_us as f64 / 1e6
        );
        let _ = writeln!(o, "observer_sink_insert_seconds_count {}", h.count);
        o
    }
}

impl SinkMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            events_accepted: self.events_accepted.load(Relaxed),
            rows_sent: self.rows_sent.load(Relaxed),
            batches_sent: self.batches_sent.load(Relaxed),
            insert_errors: self.insert_errors.load(Relaxed),
            insert_latency: self.insert_latency.snapshot(),
            spool_bytes: self.spool_bytes.load(Relaxed),
            spool_batches: self.spool_batches.load(Relaxed),
            spooled_batches: self.spooled_batches.load(Relaxed),
            spooled_rows: self.spooled_rows.load(Relaxed),
            replayed_batches: self.replayed_batches.load(Relaxed),
            replayed_rows: self.replayed_rows.load(Relaxed),
            quarantined_files: self.quarantined_files.load(Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Relaxed),
            dropped_spool_full: self.dropped_spool_full.load(Relaxed),
            dropped_spool_error: self.dropped_spool_error.load(Relaxed),
            dropped_write_error: self.dropped_write_error.load(Relaxed),
            ndjson_lines: self.ndjson_lines.load(Relaxed),
            stdout_lines: self.stdout_lines.load(Relaxed),
            registry_writes: self.registry_writes.load(Relaxed),
            registry_errors: self.registry_errors.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], (1, 1));
        assert_eq!(s.cumulative[4], (25, 2));
        assert_eq!(s.cumulative.last().copied(), Some((30_000, 2)));
    }
}
