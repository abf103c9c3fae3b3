//! The agent's own health: counters and gauges every component publishes, served as Prometheus text on
//! `/metrics`, `/healthz` (the process answers: liveness) and `/readyz`, which answers 200 only once every program is
//! attached (and, with `--kubernetes`, this node's pods are listed).
use std::{
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use axum::{extract::State, http::StatusCode, routing::get, Router};

/// A named sample: `observer_<name>{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Sample {
    pub fn counter(name: impl Into<String>, help: &'static str, value: u64) -> Self {
        Sample {
            name: name.into(),
            help,
            kind: Kind::Counter,
            labels: Vec::new(),
            value: value as f64,
        }
    }
    pub fn gauge(name: impl Into<String>, help: &'static str, value: f64) -> Self {
        Sample {
            name: name.into(),
            help,
            kind: Kind::Gauge,
            labels: Vec::new(),
            value,
        }
    }
    pub fn label(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.labels.push((k, v.into()));
        self
    }
}

/// Shared between the capture thread (which publishes a fresh snapshot every poll) and the HTTP server.
#[derive(Default)]
pub struct Metrics {
    ready: AtomicBool,
    /// Samples published by each component, replaced wholesale on each publish.
    snapshots: Mutex<Vec<(&'static str, Vec<Sample>)>>,
    /// Pre-rendered exposition text published by components that format their own (the sinks).
    texts: Mutex<Vec<(&'static str, String)>>,
    pub scrapes: AtomicU64,
}

impl Metrics {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Replaces the samples of `component`.
    pub fn publish(&self, component: &'static str, samples: Vec<Sample>) {
        let mut snaps = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        match snaps.iter_mut().find(|(c, _)| *c == component) {
            Some(slot) => slot.1 = samples,
            None => snaps.push((component, samples)),
        }
    }

    /// Replaces the pre-rendered Prometheus text of `component`.
    pub fn publish_text(&self, component: &'static str, text: String) {
        let mut texts = self.texts.lock().unwrap_or_else(|e| e.into_inner());
        match texts.iter_mut().find(|(c, _)| *c == component) {
            Some(slot) => slot.1 = text,
            None => texts.push((component, text)),
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let snaps = self.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<&Sample> = snaps.iter().flat_map(|(_, s)| s.iter()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = String::new();
        let mut last = String::new();
        for s in all {
            let full = format!("observer_{}", s.name);
            if full != last {
                let kind = match s.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP {full} {}\n# TYPE {full} {kind}", s.help);
            }
            out.push_str(&full);
            if !s.labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in s.labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let v = v
                        .replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', "\\n");
                    let _ = write!(out, "{k}=\"{v}\"");
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", s.value);
            last = full;
        }
        for (_, text) in self.texts.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.push_str(text);
            if !text.is_empty() && !text.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

async fn metrics_handler(
    State(m): State<Arc<Metrics>>,
) -> ([(&'static str, &'static str); 1], String) {
    m.scrapes.fetch_add(1, Ordering::Relaxed);
    ([("content-type", "text/plain; version=0.0.4")], m.render())
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
    fn renders_prometheus_text_grouped_by_name() {
        let m = Metrics::default();
        m.publish(
            "kernel",
            vec![
                Sample::counter("drops_total", "Dropped records", 3)
                    .label("reason", "ringbuf_full"),
                Sample::counter("drops_total", "Dropped records", 1)
                    .label("reason", "load \"failed\""),
            ],
        );
        m.publish(
            "flow",
            vec![Sample::gauge("connections", "Open connections", 7.0)],
        );
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
        m.publish(
            "flow",
            vec![Sample::gauge("connections", "Open connections", 2.0)],
        );
        assert!(
            m.render().contains("observer_connections 2\n"),
            "publish replaces a component's samples"
        );
    }
}
