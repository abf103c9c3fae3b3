//! Per-team webhooks: each new finding, and each version whose severity rose, is POSTed as JSON to the
//! `alert_webhook` of the finding's team (registry `teams`). Detection never waits for it: deliveries go through a
//! bounded queue (full: dropped and counted), each is tried a bounded number of times with exponential backoff, and
//! sent / failed / dropped / retried deliveries are counted in `/metrics`.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tracing::warn;

use super::finding::{Finding, Severity, Status};
use crate::metrics::{Counter, Metrics};
use crate::registry::Registry;

/// How deliveries are queued and retried.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// Deliveries waiting to be sent before new ones are dropped.
    pub queue: usize,
    /// Deliveries in flight at once (one slow webhook does not hold up the others).
    pub concurrency: usize,
    /// Tries per delivery, the first included.
    pub attempts: u32,
    /// Wait before the first retry; doubled after each, up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Per try: connect, send, and the response status.
    pub timeout: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            queue: 256,
            concurrency: 8,
            attempts: 4,
            backoff: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Delivery counters, shared by the notifier and its task.
#[derive(Debug, Default)]
pub struct NotifyStats {
    pub sent: Counter,
    pub failed: Counter,
    pub dropped: Counter,
    pub retries: Counter,
}

impl NotifyStats {
    /// Registers `observer_insights_webhook_{sent,failed,dropped,retries}_total`.
    pub fn register(&self, m: &Metrics) {
        for (name, help, c) in [
            (
                "insights_webhook_sent",
                "Findings delivered to a team's alert_webhook (2xx answer)",
                &self.sent,
            ),
            (
                "insights_webhook_failed",
                "Finding deliveries given up after every retry failed",
                &self.failed,
            ),
            (
                "insights_webhook_dropped",
                "Finding deliveries dropped because the webhook queue was full",
                &self.dropped,
            ),
            (
                "insights_webhook_retries",
                "Webhook tries that failed and were retried",
                &self.retries,
            ),
        ] {
            m.register(name, help, c.clone());
        }
    }
}

/// Why a finding version is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    New,
    Escalated,
}

/// The JSON body POSTed: `text` for chat webhooks (Slack, Mattermost, Teams), the finding for everything else.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    text: String,
    reason: Reason,
    finding: &'a Finding,
}

struct Delivery {
    url: Arc<str>,
    body: Bytes,
}

/// The engine side: picks the versions to deliver and queues them without waiting.
pub struct Notifier {
    webhooks: HashMap<String, Arc<str>>,
    /// Severity last delivered per open finding (removed when it closes).
    notified: HashMap<String, Severity>,
    tx: mpsc::Sender<Delivery>,
    stats: Arc<NotifyStats>,
}

impl Notifier {
    /// A notifier for `registry`'s team webhooks and the task that delivers (spawn it on a Tokio runtime; it ends
    /// once the notifier is dropped and the queue is empty).
    pub fn new(
        cfg: NotifyConfig,
        registry: &Registry,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let stats = Arc::new(NotifyStats::default());
        let mut n = Notifier {
            webhooks: HashMap::new(),
            notified: HashMap::new(),
            tx,
            stats: stats.clone(),
        };
        n.set_registry(registry);
        (n, deliver(cfg, rx, stats))
    }

    /// Follows a registry reload (webhooks added, changed or removed).
    pub fn set_registry(&mut self, registry: &Registry) {
        self.webhooks = registry
            .teams
            .iter()
            .filter(|t| !t.alert_webhook.is_empty())
            .map(|t| (t.id.clone(), Arc::from(t.alert_webhook.as_str())))
            .collect();
    }

    pub fn stats(&self) -> &Arc<NotifyStats> {
        &self.stats
    }

    /// Queues a delivery for each version in `findings` that is new or more severe than the last one delivered,
    /// when its team has a webhook. Never waits: a full queue drops the delivery and counts it.
    pub fn offer(&mut self, findings: &[Finding]) {
        for f in findings {
            let reason = match f.status {
                Status::Closed => {
                    self.notified.remove(&f.id);
                    continue;
                }
                Status::Open => Reason::New,
                Status::Update => match self.notified.get(&f.id) {
                    Some(&s) if f.severity > s => Reason::Escalated,
                    Some(_) => continue,
                    // Opened before this notifier started (restored state): only a rise is news.
                    None => {
                        self.notified.insert(f.id.clone(), f.severity);
                        continue;
                    }
                },
            };
            self.notified.insert(f.id.clone(), f.severity);
            let Some(url) = self.webhooks.get(&f.team) else {
                continue;
            };
            let payload = Payload {
                text: format!(
                    "[{}] {}{}: {}",
                    f.severity.as_str(),
                    f.kind.as_str(),
                    if reason == Reason::Escalated {
                        " (escalated)"
                    } else {
                        ""
                    },
                    f.explanation
                ),
                reason,
                finding: f,
            };
            let body = match serde_json::to_vec(&payload) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    warn!(error = %e, "insights: finding not serializable for its webhook");
                    continue;
                }
            };
            let d = Delivery {
                url: url.clone(),
                body,
            };
            if self.tx.try_send(d).is_err() {
                self.stats.dropped.inc();
            }
        }
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client() -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let https =
        match builder.with_provider_and_native_roots(rustls::crypto::ring::default_provider()) {
            Ok(b) => b.https_or_http().enable_http1().wrap_connector(http),
            Err(e) => {
                warn!(error = %e, "insights: no system CA certificates; https webhooks will fail");
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(
                        rustls::ClientConfig::builder_with_provider(Arc::new(
                            rustls::crypto::ring::default_provider(),
                        ))
                        .with_safe_default_protocol_versions()
                        .expect("ring supports the default protocol versions")
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                    )
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http)
            }
        };
    Client::builder(TokioExecutor::new()).build(https)
}

/// The delivery task: at most `concurrency` deliveries in flight, each tried `attempts` times.
async fn deliver(cfg: NotifyConfig, mut rx: mpsc::Receiver<Delivery>, stats: Arc<NotifyStats>) {
    let client = client();
    let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let cfg = Arc::new(cfg);
    let mut running = tokio::task::JoinSet::new();
    while let Some(d) = rx.recv().await {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (client, cfg, stats) = (client.clone(), cfg.clone(), stats.clone());
        running.spawn(async move {
            let _permit = permit;
            post_with_retries(&client, &cfg, &stats, d).await;
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

async fn post_with_retries(
    client: &HttpsClient,
    cfg: &NotifyConfig,
    stats: &NotifyStats,
    d: Delivery,
) {
    let mut wait = cfg.backoff;
    for attempt in 1..=cfg.attempts.max(1) {
        let why = match tokio::time::timeout(cfg.timeout, post(client, &d)).await {
            Ok(Ok(())) => {
                stats.sent.inc();
                return;
            }
            Ok(Err(why)) => why,
            Err(_) => format!("no answer within {:?}", cfg.timeout),
        };
        if attempt == cfg.attempts.max(1) {
            warn!(url = %d.url, attempts = attempt, error = %why, "insights: webhook delivery failed");
            stats.failed.inc();
            return;
        }
        stats.retries.inc();
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(cfg.backoff_max);
    }
}

/// One try: `Err` names what went wrong (connection, or a status other than 2xx).
async fn post(client: &HttpsClient, d: &Delivery) -> Result<(), String> {
    let req = hyper::Request::post(&*d.url)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("observer/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(d.body.clone()))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    // The body is not read: dropping the response closes or recycles the connection.
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::post;
    use serde_json::Value;

    use super::*;
    use crate::event::Timestamp;
    use crate::insights::Kind;
    use crate::registry::KeySecret;

    /// A webhook receiver on loopback that answers 500 to the first `fail_first` POSTs, then 200; every POST's
    /// JSON body arrives on the returned channel.
    async fn receiver(fail_first: u32) -> (String, mpsc::UnboundedReceiver<Value>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new((tx, AtomicU32::new(0), fail_first));
        type St = Arc<(mpsc::UnboundedSender<Value>, AtomicU32, u32)>;
        let app = axum::Router::new()
            .route(
                "/hook",
                post(|State(st): State<St>, body: axum::body::Bytes| async move {
                    let n = st.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = st.0.send(serde_json::from_slice(&body).expect("JSON body"));
                    if n < st.2 {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }),
            )
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), rx)
    }

    fn registry(url: &str) -> Registry {
        let yaml = format!("teams:\n  - id: pay\n    alert_webhook: {url}\n  - id: quiet\n");
        crate::registry::load_str(
            &yaml,
            std::path::Path::new("."),
            &KeySecret::from_bytes(b"notify-test"),
        )
        .unwrap_or_else(|p| panic!("valid: {p:?}"))
        .registry
    }

    fn finding(id: &str, version: u32, status: Status, severity: Severity, team: &str) -> Finding {
        Finding {
            id: id.into(),
            version,
            status,
            kind: Kind::RetryStorm,
            severity,
            api_id: "orders-api".into(),
            app_id: String::new(),
            key_id: String::new(),
            key_fingerprint: String::new(),
            workload: String::new(),
            route: String::new(),
            team: team.into(),
            detected_at: Timestamp(1_772_443_800_000_000),
            first_seen: Timestamp(1_772_443_800_000_000),
            last_seen: Timestamp(1_772_443_800_000_000),
            explanation: format!("finding {id} v{version}"),
            evidence: Default::default(),
        }
    }

    fn fast() -> NotifyConfig {
        NotifyConfig {
            backoff: Duration::from_millis(1),
            backoff_max: Duration::from_millis(4),
            ..NotifyConfig::default()
        }
    }

    #[tokio::test]
    async fn new_and_escalated_findings_reach_their_teams_webhook_and_nothing_else_does() {
        let (url, mut got) = receiver(0).await;
        let (mut n, task) = Notifier::new(fast(), &registry(&url));
        let stats = n.stats().clone();
        let task = tokio::spawn(task);
        n.offer(&[
            finding("a", 1, Status::Open, Severity::Warning, "pay"),
            finding("b", 1, Status::Open, Severity::Critical, "quiet"),
        ]);
        n.offer(&[finding("a", 2, Status::Update, Severity::Warning, "pay")]);
        n.offer(&[finding("a", 3, Status::Update, Severity::Critical, "pay")]);
        n.offer(&[finding("a", 4, Status::Update, Severity::Critical, "pay")]);
        n.offer(&[finding("a", 5, Status::Closed, Severity::Critical, "pay")]);
        // Opened before a restart: its first update is not news, a later rise is.
        n.offer(&[finding("c", 7, Status::Update, Severity::Info, "pay")]);
        n.offer(&[finding("c", 8, Status::Update, Severity::Warning, "pay")]);
        drop(n);
        task.await.expect("delivery task");
        let mut bodies = Vec::new();
        while let Ok(v) = got.try_recv() {
            bodies.push(v);
        }
        let seen: Vec<(String, u64, String)> = bodies
            .iter()
            .map(|b| {
                (
                    b["finding"]["id"].as_str().unwrap_or("").to_string(),
                    b["finding"]["version"].as_u64().unwrap_or(0),
                    b["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            vec![
                ("a".to_string(), 1, "new".to_string()),
                ("a".to_string(), 3, "escalated".to_string()),
                ("c".to_string(), 8, "escalated".to_string()),
            ],
            "{bodies:#?}"
        );
        let a1 = bodies
            .iter()
            .find(|b| b["finding"]["version"] == 1)
            .expect("a v1");
        assert_eq!(a1["text"], "[warning] retry_storm: finding a v1");
        assert_eq!(a1["finding"]["kind"], "retry_storm");
        assert_eq!(a1["finding"]["team"], "pay");
        assert_eq!(
            (stats.sent.get(), stats.failed.get(), stats.dropped.get()),
            (3, 0, 0)
        );
    }

    #[tokio::test]
    async fn a_failing_webhook_is_retried_with_backoff_then_given_up() {
        // Two 500s, then 200: delivered on the third try.
        let (url, mut got) = receiver(2).await;
        let (mut n, task) = Notifier::new(fast(), &registry(&url));
        let stats = n.stats().clone();
        let task = tokio::spawn(task);
        n.offer(&[finding("a", 1, Status::Open, Severity::Critical, "pay")]);
        drop(n);
        task.await.expect("delivery task");
        let mut tries = 0;
        while got.try_recv().is_ok() {
            tries += 1;
        }
        assert_eq!(tries, 3);
        assert_eq!(
            (stats.sent.get(), stats.retries.get(), stats.failed.get()),
            (1, 2, 0)
        );

        // Always 500: `attempts` tries, then counted failed.
        let (url, mut got) = receiver(u32::MAX).await;
        let (mut n, task) = Notifier::new(fast(), &registry(&url));
        let stats = n.stats().clone();
        let task = tokio::spawn(task);
        n.offer(&[finding("b", 1, Status::Open, Severity::Critical, "pay")]);
        drop(n);
        task.await.expect("delivery task");
        let mut tries = 0;
        while got.try_recv().is_ok() {
            tries += 1;
        }
        assert_eq!(tries, NotifyConfig::default().attempts);
        assert_eq!(
            (stats.sent.get(), stats.retries.get(), stats.failed.get()),
            (0, 3, 1)
        );

        // Nothing listening: connection errors count the same way.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", dead.local_addr().expect("addr"));
        drop(dead);
        let (mut n, task) = Notifier::new(fast(), &registry(&url));
        let stats = n.stats().clone();
        let task = tokio::spawn(task);
        n.offer(&[finding("c", 1, Status::Open, Severity::Critical, "pay")]);
        drop(n);
        task.await.expect("delivery task");
        assert_eq!(stats.failed.get(), 1);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let cfg = NotifyConfig { queue: 2, ..fast() };
        let (mut n, task) = Notifier::new(cfg, &registry("http://127.0.0.1:9/hook"));
        // The delivery task is not running: the queue fills and offer still returns at once.
        let many: Vec<Finding> = (0..5)
            .map(|i| finding(&format!("f{i}"), 1, Status::Open, Severity::Warning, "pay"))
            .collect();
        n.offer(&many);
        assert_eq!(n.stats().dropped.get(), 3);
        let metrics = crate::metrics::Metrics::default();
        n.stats().register(&metrics);
        assert!(metrics
            .render()
            .contains("observer_insights_webhook_dropped_total 3"));
        drop(task);
    }
}
