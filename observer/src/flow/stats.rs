//! The engine's counters and table gauges: live atomics the engine bumps where it finds each fact (read by
//! `/metrics` at scrape time, see [`FlowCounters::register`]) and the plain [`FlowStats`] copy tests read. Each
//! counter is declared once, in the [`flow_counters!`] table.
use crate::http;
use crate::metrics::{labelled, Counter, Family, Gauge, Labels, Metrics};

/// The tables whose sizes and evictions are shown, as the `table` label names them.
const TABLES: [&str; 3] = ["connections", "pending_requests", "sockets"];

macro_rules! flow_counters {
    ($( $(#[$doc:meta])* $field:ident = $name:literal, $help:literal; )*) => {
        /// Counters (monotonic) and gauges (`connections`, `pending_requests`, `sockets`) of the engine.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct FlowStats {
            $( $(#[$doc])* pub $field: u64, )*
            /// Connections evicted because the table was full.
            pub evicted_connections: u64,
            /// Requests handed out early because a connection had too many waiting.
            pub evicted_pending: u64,
            /// Socket identities evicted because the table was full.
            pub evicted_sockets: u64,
            /// Gauge: connections tracked.
            pub connections: u64,
            /// Gauge: requests awaiting a response or their sizes.
            pub pending_requests: u64,
            /// Gauge: local sockets whose identity is tracked.
            pub sockets: u64,
            /// Messages with each framing anomaly, in [`http::Anomalies::ALL`] order.
            pub framing_anomalies: [u64; http::Anomalies::ALL.len()],
        }

        /// The live counters behind [`FlowStats`]; clones share them.
        #[derive(Debug, Clone)]
        pub struct FlowCounters {
            $( pub(crate) $field: Counter, )*
            /// By table, in [`TABLES`] order.
            pub(crate) evicted: Vec<Counter>,
            pub(crate) framing_anomalies: Vec<Counter>,
            /// Table sizes, in [`TABLES`] order, set by the engine at each tick.
            pub(crate) tables: Vec<Gauge>,
            families: (Family<Labels, Counter>, Family<Labels, Counter>, Family<Labels, Gauge>),
        }

        impl Default for FlowCounters {
            fn default() -> Self {
                let (evicted_family, evicted) = labelled("table", &TABLES);
                let (tables_family, tables) = labelled("table", &TABLES);
                let (anomalies_family, framing_anomalies) =
                    labelled("reason", &http::Anomalies::ALL.map(|(_, reason)| reason));
                FlowCounters {
                    $( $field: Counter::default(), )*
                    evicted,
                    framing_anomalies,
                    tables,
                    families: (evicted_family, anomalies_family, tables_family),
                }
            }
        }

        impl FlowCounters {
            /// Shows these series on `/metrics` (they are read at each scrape).
            pub fn register(&self, m: &Metrics) {
                $( m.register($name, $help, self.$field.clone()); )*
                let (evicted, anomalies, tables) = self.families.clone();
                m.register("flow_evicted", "Table evictions", evicted);
                m.register(
                    "flow_framing_anomalies",
                    "Messages whose framing another reader may take differently (smuggling), per reason",
                    anomalies,
                );
                m.register("flow_table_size", "Entries in the engine's tables", tables);
            }

            /// The counters' values now; the table gauges as last set.
            pub fn snapshot(&self) -> FlowStats {
                let g = |i: usize| self.tables[i].get().max(0) as u64;
                FlowStats {
                    $( $field: self.$field.get(), )*
                    evicted_connections: self.evicted[0].get(),
                    evicted_pending: self.evicted[1].get(),
                    evicted_sockets: self.evicted[2].get(),
                    connections: g(0),
                    pending_requests: g(1),
                    sockets: g(2),
                    framing_anomalies: std::array::from_fn(|i| self.framing_anomalies[i].get()),
                }
            }
        }
    };
}

flow_counters! {
    /// Exchanges handed out.
    exchanges = "exchanges", "HTTP exchanges reported";
    /// Heads or bodies that could not be parsed, invalid records.
    malformed = "flow_malformed", "Heads or records that could not be parsed";
    /// Segments seen a second time by another hook (both ends local): merged, not parsed twice.
    duplicates = "flow_duplicates", "Segments seen by both local ends, merged";
    /// Segments a hook saw again (TCP retransmissions): dropped.
    retransmits = "flow_retransmits", "Retransmitted segments dropped";
    /// Records that arrived late or ahead of a gap, or continue a message whose start was never seen.
    out_of_order = "flow_out_of_order", "Records out of order or continuing an unseen start";
    /// Captured bytes or whole messages known to be missing (ring buffer loss, reordering beyond repair).
    gaps = "flow_gaps", "Captured bytes or messages known to be missing";
    /// Message starts inside a body whose length the headers gave: ignored.
    misframed = "flow_misframed", "Message starts inside a delimited body, ignored";
    /// Heads longer than the capture (parsed as far as captured).
    truncated_heads = "flow_truncated_heads", "Heads longer than the capture";
    /// Final responses with no request to pair with.
    unmatched_responses = "flow_unmatched_responses", "Responses without a request";
    /// Requests handed out without a response (connection closed, idle or evicted first).
    no_response = "flow_no_response", "Requests reported without a response";
    /// Exchanges handed out by the idle timeout with sizes estimated.
    timed_out = "flow_timed_out", "Exchanges reported by the idle timeout";
    /// Connections dropped after the idle timeout.
    idle_connections = "flow_idle_connections", "Connections dropped after the idle timeout";
}

impl FlowCounters {
    /// Counts a message's framing anomalies, one per reason.
    pub(crate) fn count_anomalies(&self, a: http::Anomalies) {
        if a.is_empty() {
            return;
        }
        for (n, (reason, _)) in self.framing_anomalies.iter().zip(http::Anomalies::ALL) {
            if a.contains(reason) {
                n.inc();
            }
        }
    }
}
