//! Pod and workload identity on Kubernetes: which pod, namespace and workload each end of a connection is (a local
//! socket by its cgroup, a remote end by its IP), and which Services its address backs.
//!
//! [`cgroup`] reads the pod UID (and container id) from the kubepods cgroup path; [`watch`] keeps this node's pods,
//! the owners of their ReplicaSets and Jobs, the Services and EndpointSlices and optionally every node's pods from
//! the API server ([`store`]); [`PodIdentity`] joins them for the capture thread. `observer run --kubernetes
//! [--node-name NAME] [--kubernetes-remote-pods]` turns it on.
pub mod cgroup;
pub mod store;
pub mod watch;

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use arc_swap::ArcSwap;
use clap::Args;

pub use store::{PodIndex, PodMeta};

/// Options of `observer run` for Kubernetes.
#[derive(Debug, Clone, Default, Args)]
pub struct KubeArgs {
    /// Name each local end's pod, namespace and workload from the Kubernetes API (in-cluster service account, else
    /// KUBECONFIG or ~/.kube/config). Readiness then waits for this node's pods to be listed.
    #[arg(long)]
    pub kubernetes: bool,
    /// This node's name, whose pods are watched (default: $NODE_NAME, then the host name).
    #[arg(long, value_name = "NAME", requires = "kubernetes")]
    pub node_name: Option<String>,
    /// Pod label keys copied into events (`client_labels`, `server_labels`); selectors may use any label.
    #[arg(
        long,
        value_name = "KEY,...",
        value_delimiter = ',',
        default_value = "app,app.kubernetes.io/name,app.kubernetes.io/instance,app.kubernetes.io/component,app.kubernetes.io/version,team"
    )]
    pub pod_labels: Vec<String>,
    /// Also watch every node's pods (cluster-wide), so that an end which is a pod on another node is named by its
    /// IP. Costs memory in proportion to the cluster (capped by --kubernetes-max-objects).
    #[arg(long, requires = "kubernetes")]
    pub kubernetes_remote_pods: bool,
    /// Most objects kept per cluster-wide kind (pods of other nodes, Services, EndpointSlices, ReplicaSets,
    /// Jobs); past it the one unchanged for longest is evicted (counted in observer_kube_evictions_total).
    #[arg(long, value_name = "N", default_value_t = watch::DEFAULT_MAX_OBJECTS)]
    pub kubernetes_max_objects: usize,
}

impl KubeArgs {
    /// The node whose pods are watched: `--node-name`, `$NODE_NAME`, then the kernel's host name.
    pub fn node(&self) -> Result<String, KubeError> {
        if let Some(n) = self.node_name.as_ref().filter(|n| !n.is_empty()) {
            return Ok(n.clone());
        }
        if let Some(n) = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()) {
            return Ok(n);
        }
        crate::sink::clickhouse::config::host_name().ok_or(KubeError::NoNodeName)
    }
}

/// Why pod identity could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("no node name: pass --node-name or set NODE_NAME (the DaemonSet sets it from spec.nodeName)")]
    NoNodeName,
    #[error("no Kubernetes client configuration (in-cluster service account, KUBECONFIG or ~/.kube/config): {0}")]
    Config(#[source] ::kube::Error),
}

/// Pod metadata by cgroup path, as the watchers last published it.
#[derive(Debug, Default)]
pub struct PodIdentity {
    /// Label keys events carry.
    label_keys: Vec<String>,
    index: ArcSwap<PodIndex>,
    synced: AtomicBool,
    generation: AtomicU64,
    changed: tokio::sync::Notify,
}

impl PodIdentity {
    /// An empty view whose events will carry the labels with these keys.
    pub fn new(label_keys: Vec<String>) -> Self {
        Self {
            label_keys,
            ..Self::default()
        }
    }

    pub fn label_keys(&self) -> &[String] {
        &self.label_keys
    }

    /// The view last published, for the lookups of one event.
    pub fn view(&self) -> arc_swap::Guard<Arc<PodIndex>> {
        self.index.load()
    }

    /// Sets the pod fields of `ev` (see [`PodIndex::fill`]); returns the client's pod.
    pub fn fill(&self, ev: &mut crate::event::Event) -> Option<Arc<PodMeta>> {
        self.view().fill(ev).cloned()
    }

    /// The pod a cgroup path (relative to the cgroup2 mount) belongs to, when it is one of this node's known pods.
    pub fn by_cgroup(&self, path: &str) -> Option<Arc<PodMeta>> {
        self.view().by_cgroup(path).cloned()
    }

    /// Whether every watched kind has been listed completely at least once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// How many pods are known.
    pub fn pods(&self) -> usize {
        self.index.load().by_uid.len()
    }

    /// Number of publications so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Waits for the next publication after `seen` (a value of [`Self::generation`]).
    pub async fn changed_since(&self, seen: u64) {
        loop {
            let notified = self.changed.notified();
            if self.generation() > seen {
                return;
            }
            notified.await;
        }
    }

    /// Returns once [`Self::is_synced`] holds.
    pub async fn synced(&self) {
        loop {
            let seen = self.generation();
            if self.is_synced() {
                return;
            }
            self.changed_since(seen).await;
        }
    }

    pub(crate) fn publish(&self, index: PodIndex, synced: bool) {
        self.index.store(Arc::new(index));
        self.synced.store(synced, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }
}

impl PodIndex {
    /// The pod a cgroup path (relative to the cgroup2 mount) belongs to, when it is one of this node's known pods.
    pub fn by_cgroup(&self, path: &str) -> Option<&Arc<PodMeta>> {
        let pod = cgroup::parse(path)?;
        self.by_uid.get(&pod.pod_uid)
    }

    /// The pod at one end of a connection: by its cgroup when it is a local pod, else by its IP.
    pub fn end(&self, cgroup: &str, ip: IpAddr) -> Option<&Arc<PodMeta>> {
        self.by_cgroup(cgroup).or_else(|| self.by_ip(ip))
    }

    /// Sets the pod fields of `ev` for each end that is a known pod (see [`Self::end`]); returns the client's.
    pub fn fill(&self, ev: &mut crate::event::Event) -> Option<&Arc<PodMeta>> {
        let client = self.end(&ev.client_cgroup, ev.src_ip);
        if let Some(p) = client {
            ev.client_pod = p.name.share();
            ev.client_namespace = p.namespace.share();
            ev.client_workload = p.workload.share();
            ev.client_labels.clone_from(&p.event_labels);
        }
        if let Some(p) = self.end(&ev.server_cgroup, ev.dst_ip) {
            ev.server_pod = p.name.share();
            ev.server_namespace = p.namespace.share();
            ev.server_workload = p.workload.share();
            ev.server_labels.clone_from(&p.event_labels);
        }
        client
    }
}

/// Marks the agent ready (its programs are attached) now, or with `--kubernetes` once this node's pods are synced.
pub fn ready_when_synced(pods: Option<&Arc<PodIdentity>>, metrics: &Arc<crate::metrics::Metrics>) {
    match pods {
        None => metrics.set_ready(true),
        Some(pods) => {
            let (pods, metrics) = (pods.clone(), metrics.clone());
            tokio::spawn(async move {
                pods.synced().await;
                metrics.set_ready(true);
            });
        }
    }
}

/// With `--kubernetes`: connects with the standard client configuration and spawns the watchers on the current
/// tokio runtime. `None` without `--kubernetes`.
pub async fn start(
    args: &KubeArgs,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Option<Arc<PodIdentity>>, KubeError> {
    if !args.kubernetes {
        return Ok(None);
    }
    let node = args.node()?;
    let client = watch::default_client().await?;
    let identity = Arc::new(PodIdentity::new(args.pod_labels.clone()));
    let scope = watch::Scope {
        node,
        remote_pods: args.kubernetes_remote_pods,
        max_objects: args.kubernetes_max_objects,
    };
    tokio::spawn(watch::run(client, scope, identity.clone(), metrics));
    Ok(Some(identity))
}
