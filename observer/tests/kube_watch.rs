//! The pod watcher against a local HTTP server that answers as the Kubernetes API server does, from the recorded
//! responses in tests/fixtures/kube (their README tells the story): list, watch stream, 410 Gone, re-list.
#![forbid(unsafe_code)]
use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    extract::State,
    http::{header, StatusCode, Uri},
    response::Response,
    routing::get,
    Router,
};
use observer::{kube::PodIdentity, metrics::Metrics};

/// The decoded query parameters of a request.
fn params(uri: &Uri) -> BTreeMap<String, String> {
    form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

#[derive(Default)]
struct Api {
    /// Every request, as `path?sorted query`.
    log: Mutex<Vec<String>>,
}

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kube")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(body: String) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("response")
}

/// A watch that sends `lines` and then, when `hold`, stays open without more events (as an idle watch does).
fn watch_stream(lines: String, hold: bool) -> Response {
    let first = futures_util::stream::once(async move { Ok::<_, std::io::Error>(lines) });
    let body = if hold {
        Body::from_stream(futures_util::StreamExt::chain(
            first,
            futures_util::stream::pending(),
        ))
    } else {
        Body::from_stream(first)
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("response")
}

fn record(api: &Api, path: &str, q: &BTreeMap<String, String>) -> usize {
    let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut log = api.log.lock().expect("log");
    log.push(format!("{path}?{}", query.join("&")));
    log.iter()
        .filter(|l| l.starts_with(path) && !l.contains("watch=true"))
        .count()
}

/// The cluster-wide pod watch of `--kubernetes-remote-pods`.
const REMOTE_PODS: &str = "status.phase=Running,spec.hostNetwork=false";

async fn pods(State(api): State<Arc<Api>>, uri: Uri) -> Response {
    let q = params(&uri);
    if q.get("fieldSelector").map(String::as_str) == Some(REMOTE_PODS) {
        record(&api, "remote:/api/v1/pods", &q);
        return match (
            q.get("watch").map(String::as_str),
            q.get("resourceVersion").map(String::as_str),
        ) {
            (Some("true"), Some("1005")) => {
                watch_stream(fixture("pods-remote-watch-1.jsonl"), false)
            }
            (Some("true"), _) => watch_stream(String::new(), true),
            _ => json(fixture("pods-remote-list.json")),
        };
    }
    let lists = record(&api, "/api/v1/pods", &q);
    assert_eq!(
        q.get("fieldSelector").map(String::as_str),
        Some("spec.nodeName=node-a"),
        "every pod request is narrowed to this node"
    );
    if q.get("watch").map(String::as_str) == Some("true") {
        match q.get("resourceVersion").map(String::as_str) {
            Some("1005") => watch_stream(fixture("pods-watch-1.jsonl"), false),
            _ => watch_stream(String::new(), true),
        }
    } else if lists == 1 {
        json(fixture("pods-list-1.json"))
    } else {
        json(fixture("pods-list-2.json"))
    }
}

async fn metadata_list(
    api: Arc<Api>,
    path: &str,
    q: BTreeMap<String, String>,
    file: &str,
) -> Response {
    record(&api, path, &q);
    if q.get("watch").map(String::as_str) == Some("true") {
        watch_stream(String::new(), true)
    } else {
        json(fixture(file))
    }
}

async fn replicasets(State(api): State<Arc<Api>>, uri: Uri) -> Response {
    metadata_list(
        api,
        "/apis/apps/v1/replicasets",
        params(&uri),
        "replicasets-list.json",
    )
    .await
}

async fn jobs(State(api): State<Arc<Api>>, uri: Uri) -> Response {
    metadata_list(api, "/apis/batch/v1/jobs", params(&uri), "jobs-list.json").await
}

async fn services(State(api): State<Arc<Api>>, uri: Uri) -> Response {
    metadata_list(api, "/api/v1/services", params(&uri), "services-list.json").await
}

async fn endpointslices(State(api): State<Arc<Api>>, uri: Uri) -> Response {
    let q = params(&uri);
    let path = "/apis/discovery.k8s.io/v1/endpointslices";
    if q.get("watch").map(String::as_str) == Some("true")
        && q.get("resourceVersion").map(String::as_str) == Some("1005")
    {
        record(&api, path, &q);
        return watch_stream(fixture("endpointslices-watch-1.jsonl"), false);
    }
    metadata_list(api, path, q, "endpointslices-list.json").await
}

/// Serves the recorded API on a local port; returns the request log and a client of it.
async fn serve() -> (Arc<Api>, kube::Client) {
    let api = Arc::new(Api::default());
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .route("/apis/apps/v1/replicasets", get(replicasets))
        .route("/apis/batch/v1/jobs", get(jobs))
        .route("/api/v1/services", get(services))
        .route(
            "/apis/discovery.k8s.io/v1/endpointslices",
            get(endpointslices),
        )
        .with_state(api.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    let config = kube::Config::new(format!("http://{addr}").parse().expect("url"));
    (api, kube::Client::try_from(config).expect("client"))
}

fn workloads(id: &PodIdentity) -> BTreeMap<String, String> {
    [
        ("checkout", "6f2b8c3e-1a2b-4c5d-8e9f-0123456789ab"),
        ("report", "0a1b2c3d-4e5f-4a6b-9c7d-8e9fa0b1c2d3"),
        ("db", "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"),
        ("cart", "1c2d3e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5"),
        ("debug", "2d3e4f5a-6b7c-4d8e-9fa0-b1c2d3e4f5a6"),
    ]
    .into_iter()
    .filter_map(|(name, uid)| {
        let path = format!("/kubepods/burstable/pod{uid}");
        let pod = id.by_cgroup(&path)?;
        Some((
            name.to_string(),
            format!("{}/{} {}", pod.namespace, pod.name, pod.workload),
        ))
    })
    .collect()
}

/// Waits (bounded, as a guard against a hang, not a timing assertion) until `done` holds for the published view.
async fn until(id: &PodIdentity, what: &str, done: impl Fn(&PodIdentity) -> bool) {
    let wait = async {
        loop {
            let seen = id.generation();
            if done(id) {
                return;
            }
            id.changed_since(seen).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .is_err()
    {
        panic!("{what} never happened; the view: {:?}", workloads(id));
    }
}

#[tokio::test]
async fn lists_watches_and_relists_after_410_gone() {
    let (api, client) = serve().await;
    let identity = Arc::new(PodIdentity::default());
    let metrics = Arc::new(Metrics::default());
    let watcher = tokio::spawn(observer::kube::watch::run(
        client,
        observer::kube::watch::Scope::node("node-a"),
        identity.clone(),
        metrics.clone(),
    ));

    // The first complete view: the three listed pods, each named by its workload.
    until(&identity, "sync", |id| id.is_synced()).await;
    // The final view, after the watch events, the 410 Gone and the re-list.
    until(&identity, "the re-list", |id| {
        workloads(id).len() == 3 && workloads(id).contains_key("debug")
    })
    .await;
    let got = workloads(&identity);
    let want = BTreeMap::from([
        (
            "checkout".to_string(),
            "shop/checkout-7d9f8b6c5d-x2x9z Deployment/checkout".to_string(),
        ),
        (
            "cart".to_string(),
            "shop/cart-5f6d7c8b9a-q1w2e Deployment/cart".to_string(),
        ),
        ("debug".to_string(), "default/debug ".to_string()),
    ]);
    assert_eq!(
        got, want,
        "db-0 was deleted by the watch, report's pod by the re-list"
    );
    let checkout = identity
        .by_cgroup("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f2b8c3e_1a2b_4c5d_8e9f_0123456789ab.slice/cri-containerd-4f3c2b1a4f3c2b1a4f3c2b1a4f3c2b1a4f3c2b1a4f3c2b1a4f3c2b1a4f3c2b1a.scope")
        .expect("systemd-driver path of checkout");
    assert_eq!(
        checkout.labels.get("version").map(String::as_str),
        Some("v2"),
        "the MODIFIED event's labels"
    );
    assert_eq!(
        checkout.labels.get("team").map(String::as_str),
        Some("payments")
    );
    assert!(identity.is_synced());

    let log = api.log.lock().expect("log").clone();
    let pod_lists = log
        .iter()
        .filter(|l| l.starts_with("/api/v1/pods") && !l.contains("watch=true"))
        .count();
    assert_eq!(
        pod_lists, 2,
        "one list, then one re-list after 410 Gone: {log:#?}"
    );
    assert!(
        log.iter().any(|l| l.starts_with("/api/v1/pods")
            && l.contains("resourceVersion=1005")
            && l.contains("watch=true")),
        "the watch resumes from the list's resourceVersion: {log:#?}"
    );
    assert!(
        !log.iter().any(|l| l.starts_with("remote:")),
        "no cluster-wide pod watch unless asked: {log:#?}"
    );
    let text = metrics.render();
    assert!(text.contains("observer_kube_pods 3\n"), "{text}");
    assert!(text.contains("observer_kube_synced 1\n"), "{text}");
    assert!(
        text.contains("observer_kube_watch_errors_total{kind=\"pods\"} 1\n"),
        "the 410 is counted: {text}"
    );
    watcher.abort();
}

#[test]
fn report_pod_resolved_through_its_job_before_the_relist() {
    // The first listing alone, through the same store the watcher fills: report's pod names its CronJob.
    use observer::kube::store::{Owner, PodRecord, Store};
    let list: serde_json::Value = serde_json::from_str(&fixture("pods-list-1.json")).expect("json");
    let jobs: serde_json::Value = serde_json::from_str(&fixture("jobs-list.json")).expect("json");
    let mut store = Store::default();
    for j in jobs["items"].as_array().expect("items") {
        let m = &j["metadata"];
        let o = &m["ownerReferences"][0];
        store.jobs.apply(
            (
                m["namespace"].as_str().unwrap().into(),
                m["name"].as_str().unwrap().into(),
            ),
            Some(Owner {
                kind: o["kind"].as_str().unwrap().into(),
                name: o["name"].as_str().unwrap().into(),
            }),
        );
    }
    let item = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|p| {
            p["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("report"))
        })
        .expect("report pod");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(item.clone()).expect("a Pod");
    let owner = &pod.metadata.owner_references.as_ref().expect("owner")[0];
    let record = PodRecord {
        uid: pod.metadata.uid.clone().unwrap(),
        name: pod.metadata.name.clone().unwrap(),
        namespace: pod.metadata.namespace.clone().unwrap(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        owner: Some(Owner {
            kind: owner.kind.clone(),
            name: owner.name.clone(),
        }),
        ..PodRecord::default()
    };
    assert_eq!(store.workload(&record), "CronJob/report");
}

fn pod_at(id: &PodIdentity, ip: &str) -> Option<String> {
    let view = id.view();
    let p = view.by_ip(ip.parse().expect("ip"))?;
    Some(format!("{}/{} {}", p.namespace, p.name, p.workload))
}

fn services_at(id: &PodIdentity, ip: &str, port: u16) -> Vec<String> {
    id.view()
        .services(ip.parse().expect("ip"), port)
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[tokio::test]
async fn services_endpointslices_and_every_nodes_pods() {
    let (api, client) = serve().await;
    let identity = Arc::new(PodIdentity::default());
    let metrics = Arc::new(Metrics::default());
    let scope = observer::kube::watch::Scope {
        remote_pods: true,
        ..observer::kube::watch::Scope::node("node-a")
    };
    let watcher = tokio::spawn(observer::kube::watch::run(
        client,
        scope,
        identity.clone(),
        metrics.clone(),
    ));
    until(&identity, "sync", |id| id.is_synced()).await;
    until(&identity, "the slice and pod watch events", |id| {
        pod_at(id, "10.244.3.5").is_some() && services_at(id, "10.244.2.21", 8080).len() == 2
    })
    .await;
    // A pod on another node, by IP; its ReplicaSet is unknown, so the pod-template-hash names the Deployment.
    assert_eq!(
        pod_at(&identity, "10.244.2.21").as_deref(),
        Some("shop/cart-5f6d7c8b9a-z9y8x Deployment/cart")
    );
    assert_eq!(
        pod_at(&identity, "10.244.3.5").as_deref(),
        Some("shop/search-0 StatefulSet/search"),
        "added by the remote watch"
    );
    assert_eq!(
        pod_at(&identity, "10.244.1.10").as_deref(),
        Some("shop/checkout-7d9f8b6c5d-x2x9z Deployment/checkout"),
        "this node's pods by IP too"
    );
    // Endpoints (target port) and ClusterIPs (Service port); UDP ports name nothing.
    assert_eq!(
        services_at(&identity, "10.244.2.21", 8080),
        ["shop/cart", "shop/cart-headless"],
        "the MODIFIED slice's new endpoint and the ADDED headless slice"
    );
    assert_eq!(services_at(&identity, "10.244.1.13", 8080), ["shop/cart"]);
    assert_eq!(
        services_at(&identity, "10.244.1.10", 8080),
        ["shop/checkout"]
    );
    assert_eq!(services_at(&identity, "10.96.0.20", 80), ["shop/cart"]);
    assert_eq!(services_at(&identity, "10.96.0.21", 80), ["shop/checkout"]);
    assert!(services_at(&identity, "10.96.0.20", 53).is_empty(), "UDP");
    assert!(
        services_at(&identity, "10.244.1.13", 5353).is_empty(),
        "UDP"
    );
    assert!(services_at(&identity, "10.244.2.21", 9090).is_empty());

    let log = api.log.lock().expect("log").clone();
    assert!(
        log.iter().any(|l| l.starts_with("remote:/api/v1/pods")
            && l.contains("resourceVersion=1005")
            && l.contains("watch=true")),
        "the cluster-wide pod watch, narrowed to running pods off the host network: {log:#?}"
    );
    let text = metrics.render();
    for line in [
        "observer_kube_objects{kind=\"remote_pods\"} 3\n",
        "observer_kube_objects{kind=\"services\"} 3\n",
        "observer_kube_objects{kind=\"endpointslices\"} 3\n",
        "observer_kube_evictions_total{kind=\"remote_pods\"} 0\n",
        "observer_kube_watch_errors_total{kind=\"remote_pods\"} 0\n",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    watcher.abort();
}
