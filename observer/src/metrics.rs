//! The agent's own health: counters and gauges every component publishes, served as Prometheus text on
//! `/metrics`, `/healthz` (the process answers: liveness) and `/readyz`, which answers 200 only once every program is
//! attached (and, with `--kubernetes`, this node's pods are listed).
//! The agent's own health: every component registers its counters and gauges (the `prometheus-client` crate) in one
//! [`Metrics`] registry, which `/metrics` encodes at scrape time as Prometheus text 0.0.4; `/healthz` (the process
//! answers: liveness) and `/readyz`, which answers 200 only once every program is attached (and, with `--kubernetes`,
//! this node's pods are listed).
//!
//! How a component adds a metric (and how a former `Sample`/`publish` metric converts):
//! - Keep a [`Counter`] / [`Gauge`] (or [`FGauge`] for fractions) in the component and bump it where the fact happens
//!   (`c.inc()`, `c.inc_by(n)`, `g.set(v)`): an atomic add, no lock, no per-tick snapshot. Register it once at start
//!   with [`Metrics::register`], named without the `observer_` prefix and, for counters, without `_total` (the encoder
//!   adds both): `Sample::counter("kube_watch_errors_total", ..)` becomes `register("kube_watch_errors", ..)`.
//! - A label with a fixed set of values: [`Metrics::labelled`] registers the family and hands back one child per value,
//!   in order, to keep and bump like a plain counter (no lookup on the hot path). Open label sets: a [`Family`] of
//!   [`Labels`], registered as it is.
//! - Values another structure already holds (kernel per-CPU maps, the registry's reload counts): a
//!   [`prometheus_client::collector::Collector`] read at scrape time, registered with [`Metrics::register_collector`].
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use axum::{extract::State, http::StatusCode, routing::get, Router};
pub use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::{
    collector::Collector,
    encoding::prometheus_text,
    metrics::TypedMetric,
    registry::{Metric, Registry},
};

/// `observer_exchanges_lost_total{reason}`: exchanges the agent knows it could not report, by why, one each. Every
/// reason is a kernel counter of request starts that never reached the agent (see
/// [`observer_common::CNT_RINGBUF_FULL_REQUEST`]), so that exchanges reported plus these equal the exchanges sent.
pub const EXCHANGES_LOST: &str = "exchanges_lost";
/// The `reason` of each [`EXCHANGES_LOST`] series and the kernel counter that counts it.
pub const EXCHANGES_LOST_REASONS: [(&str, u32); 2] = [
    ("ring_full", observer_common::CNT_RINGBUF_FULL_REQUEST),
    ("load_failed", observer_common::CNT_LOAD_FAILED_REQUEST),
];

/// A gauge holding a fraction (seconds, ratios).
pub type FGauge = Gauge<f64, AtomicU64>;

/// Label pairs of a [`Family`] whose label values are fixed strings.
pub type Labels = Vec<(&'static str, &'static str)>;

/// A family with one label whose values are `values` (each created, so shown at 0), and the child of each value in
/// the same order: bump the children (no lookup), register the family.
pub fn labelled<M>(label: &'static str, values: &[&'static str]) -> (Family<Labels, M>, Vec<M>)
where
    M: Metric + TypedMetric + Clone + Default,
{
    let family = Family::<Labels, M>::default();
    let children = values
        .iter()
        .map(|v| family.get_or_create_owned(&vec![(label, *v)]))
        .collect();
    (family, children)
}

/// The registry `/metrics` encodes, shared by every component and the HTTP server.
pub struct Metrics {
    ready: AtomicBool,
    /// Locked only to register (at start) and to encode (per scrape); metrics are bumped without it.
    registry: Mutex<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            ready: AtomicBool::new(false),
            registry: Mutex::new(Registry::with_prefix("observer")),
        }
    }
}

impl Metrics {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `metric` as `observer_<name>` (counters also get `_total`); `help` is one sentence, no final dot.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry().register(name, help, metric);
    }

    /// Registers a family with one label whose values are `values`, all shown from the start (at 0), and returns
    /// the child of each value, in the same order.
    pub fn labelled<M>(
        &self,
        name: &str,
        help: &str,
        label: &'static str,
        values: &[&'static str],
    ) -> Vec<M>
    where
        M: Metric + TypedMetric + Clone + Default,
    {
        let (family, children) = labelled(label, values);
        self.register(name, help, family);
        children
    }

    /// Registers a collector, read on every scrape.
    pub fn register_collector(&self, collector: impl Collector) {
        self.registry().register_collector(Box::new(collector));
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would only truncate the text.
        let _ = prometheus_text::encode(&mut out, &self.registry());
        out
    }
}

async fn metrics_handler(
    State(m): State<Arc<Metrics>>,
) -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", prometheus_text::CONTENT_TYPE)],
        m.render(),
    )
}

async fn ready_handler(State(m): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if m.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: programs not attached (or, with --kubernetes, pods not listed yet)\n",
        )
    }
}

/// Binds `addr` and serves until the future is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/readyz", get(ready_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(metrics);
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_as_prometheus_text() {
        let m = Metrics::default();
        let drops: Vec<Counter> = m.labelled(
            "drops",
            "Dropped records",
            "reason",
            &["ringbuf_full", "load \"failed\""],
        );
        let open = Gauge::<i64>::default();
        m.register("connections", "Open connections", open.clone());
        drops[0].inc_by(3);
        drops[1].inc();
        open.set(7);
        let text = m.render();
        assert_eq!(
            text.matches("# TYPE observer_drops_total counter").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("observer_drops_total{reason=\"ringbuf_full\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("observer_drops_total{reason=\"load \\\"failed\\\"\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE observer_connections gauge\nobserver_connections 7\n"),
            "{text}"
        );
        open.set(2);
        assert!(
            m.render().contains("observer_connections 2\n"),
            "a scrape reads the live value"
        );
    }
}
