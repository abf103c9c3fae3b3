//! The sinks' counters and the ClickHouse insert latency histogram (`observer_sink_*`), shared by every sink task:
//! each metric is declared once in the [`sink_metrics!`] table below, which gives the live atomics the sinks bump,
//! their registration on `/metrics`, and the plain-number [`MetricsSnapshot`] tests and shutdown read.
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;

use crate::metrics::{Counter, Family, Gauge, Labels, Metrics};

/// Upper bounds of the insert latency buckets, in seconds.
pub const INSERT_SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A live metric read as a plain number for [`MetricsSnapshot`].
trait Read {
    fn read(&self) -> u64;
}

impl Read for Counter {
    fn read(&self) -> u64 {
        self.get()
    }
}

impl Read for Gauge {
    fn read(&self) -> u64 {
        self.get().max(0) as u64
    }
}

/// The `reason`s of `observer_sink_dropped_total` and of `observer_sink_insert_failures_total`, then one row per metric:
/// `field: Counter|Gauge = "name after observer_sink_", "help"`.
macro_rules! sink_metrics {
    (
        dropped { $( $(#[$ddoc:meta])* $dfield:ident = $reason:literal, )* }
        failed { $( $(#[$fdoc:meta])* $ffield:ident = $freason:literal, )* }
        $( $(#[$doc:meta])* $field:ident: $kind:ident = $name:literal, $help:literal; )*
    ) => {
        /// Live counters shared by the sinks.
        #[derive(Debug)]
        pub struct SinkMetrics {
            $( $(#[$doc])* pub $field: $kind, )*
            $( $(#[$ddoc])* pub $dfield: Counter, )*
            $( $(#[$fdoc])* pub $ffield: Counter, )*
            dropped: Family<Labels, Counter>,
            failed: Family<Labels, Counter>,
            pub insert_latency: Histogram,
        }

        impl Default for SinkMetrics {
            fn default() -> Self {
                let dropped = Family::<Labels, Counter>::default();
                let failed = Family::<Labels, Counter>::default();
                SinkMetrics {
                    $( $field: Default::default(), )*
                    $( $dfield: dropped.get_or_create_owned(&vec![("reason", $reason)]), )*
                    $( $ffield: failed.get_or_create_owned(&vec![("reason", $freason)]), )*
                    dropped,
                    failed,
                    insert_latency: Histogram::new(INSERT_SECONDS_BUCKETS),
                }
            }
        }

        /// A copy of [`SinkMetrics`] at one instant.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
        pub struct MetricsSnapshot {
            $( $(#[$doc])* pub $field: u64, )*
            $( pub $dfield: u64, )*
            $( pub $ffield: u64, )*
        }

        impl SinkMetrics {
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $( $field: self.$field.read(), )*
                    $( $dfield: self.$dfield.get(), )*
                    $( $ffield: self.$ffield.get(), )*
                }
            }

            /// Shows these metrics on `/metrics`.
            pub fn register(&self, m: &Metrics) {
                $( m.register(concat!("sink_", $name), $help, self.$field.clone()); )*
                m.register("sink_dropped", "Events dropped, by reason", self.dropped.clone());
                m.register(
                    "sink_insert_failures",
                    "Failed ClickHouse inserts, by reason (the batch is kept in the spool and retried)",
                    self.failed.clone(),
                );
                m.register("sink_insert_seconds", "ClickHouse insert latency", self.insert_latency.clone());
            }
        }

        impl MetricsSnapshot {
            pub fn dropped_total(&self) -> u64 {
                0 $( + self.$dfield )*
            }
        }
    };
}

sink_metrics! {
    dropped {
        dropped_queue_full = "queue_full",
        dropped_spool_full = "spool_full",
        dropped_spool_error = "spool_error",
        dropped_write_error = "write_error",
        /// The spool's file system is full (ENOSPC/EDQUOT) before the spool reached its own bound.
        dropped_spool_disk_full = "spool_disk_full",
    }
    failed {
        /// ClickHouse refused the batch's table or columns: dropped or renamed column, missing table, wrong type.
        insert_failed_schema = "schema",
        insert_failed_timeout = "timeout",
        /// Connection refused, reset or DNS: ClickHouse unreachable.
        insert_failed_unreachable = "unreachable",
        /// Any other error ClickHouse answered (5xx, overload, read-only...).
        insert_failed_server = "server",
    }
    /// Events handed to [`super::SinkHandle::send`] and queued (per sink).
    events_accepted: Counter = "events_accepted", "Events queued to sinks";
    /// Rows acknowledged by ClickHouse (including replayed ones).
    rows_sent: Counter = "rows_sent", "Rows acknowledged by ClickHouse";
    batches_sent: Counter = "batches_sent", "Batches acknowledged by ClickHouse";
    insert_errors: Counter = "insert_errors", "Failed ClickHouse inserts";
    /// Current spool size.
    spool_bytes: Gauge = "spool_bytes", "Bytes in the spool";
    spool_batches: Gauge = "spool_batches", "Batches in the spool";
    /// Batches / rows written to the spool since start.
    spooled_batches: Counter = "spooled_batches", "Batches written to the spool";
    spooled_rows: Counter = "spooled_rows", "Rows written to the spool";
    /// Batches / rows inserted from the spool since start.
    replayed_batches: Counter = "replayed_batches", "Spooled batches inserted";
    replayed_rows: Counter = "replayed_rows", "Spooled rows inserted";
    quarantined_files: Counter = "quarantined_files", "Corrupted spool files quarantined";
    /// `.tmp` files of a write cut short (crash, full disk) found at start and removed unreplayed.
    unfinished_files: Counter = "unfinished_files", "Unfinished spool files removed without replay";
    ndjson_lines: Counter = "ndjson_lines", "Lines written by NDJSON sinks";
    stdout_lines: Counter = "stdout_lines", "Lines written by the stdout sink";
    registry_writes: Counter = "registry_writes", "Registry states written to ClickHouse";
    registry_errors: Counter = "registry_errors", "Registry states ClickHouse refused";
}

impl SinkMetrics {
    /// Records one ClickHouse insert's latency.
    pub fn observe_insert(&self, d: Duration) {
        self.insert_latency.observe(d.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_every_series_with_its_type() {
        let s = SinkMetrics::default();
        s.dropped_spool_full.inc_by(2);
        s.spool_bytes.set(4096);
        s.observe_insert(Duration::from_millis(20));
        s.observe_insert(Duration::from_secs(60));
        let m = Metrics::default();
        s.register(&m);
        let text = m.render();
        for want in [
            "# TYPE observer_sink_rows_sent_total counter\n",
            "observer_sink_dropped_total{reason=\"spool_full\"} 2\n",
            "observer_sink_dropped_total{reason=\"queue_full\"} 0\n",
            "observer_sink_dropped_total{reason=\"spool_disk_full\"} 0\n",
            "observer_sink_insert_failures_total{reason=\"schema\"} 0\n",
            "# TYPE observer_sink_spool_bytes gauge\nobserver_sink_spool_bytes 4096\n",
            "# TYPE observer_sink_insert_seconds histogram\n",
            "observer_sink_insert_seconds_bucket{le=\"0.01\"} 0\n",
            "observer_sink_insert_seconds_bucket{le=\"0.025\"} 1\n",
            "observer_sink_insert_seconds_bucket{le=\"+Inf\"} 2\n",
            "observer_sink_insert_seconds_count 2\n",
        ] {
            assert!(text.contains(want), "{want:?} in:\n{text}");
        }
        let snap = s.snapshot();
        assert_eq!((snap.dropped_total(), snap.spool_bytes), (2, 4096));
    }
}
