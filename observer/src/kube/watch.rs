//! Watches the API server for this node's pods (field selector `spec.nodeName`), metadata only for the ReplicaSets
//! and Jobs that own pods, for the Services and EndpointSlices (which addresses back which Service) and, with
//! `--kubernetes-remote-pods`, for every node's running pods; publishes the resolved [`super::PodIndex`] after each batch
//! of events, at most every [`PUBLISH_EVERY`].
//!
//! kube's watcher lists, then watches from the list's resourceVersion; when the watch breaks or the server answers
//! 410 Gone (the version is too old) it lists again, which [`Store`]'s listings turn into a clean replacement. Errors
//! are retried with kube's default backoff and counted; the agent keeps serving the last good view meanwhile.
use std::{net::IpAddr, sync::Arc, time::Duration};

use ::kube::{
    api::{ObjectMeta, PartialObjectMeta},
    runtime::{
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Client, Resource,
};
use futures_util::{stream, Stream, StreamExt};
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    batch::v1::Job,
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::{
    store::{Listing, NamespacedName, Owner, PodRecord, ServiceAddrs, SliceRecord, Store},
    KubeError, PodIdentity,
};
use crate::metrics::{Counter, Gauge, Metrics};

/// Most events applied before the index is republished (bounds a re-list's publication delay).
const BATCH: usize = 1024;
/// Least time between two publications: a busy cluster's stream of changes rebuilds the index at most this often.
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

/// Most objects kept per cluster-wide kind unless told otherwise (`--kubernetes-max-objects`).
pub const DEFAULT_MAX_OBJECTS: usize = 100_000;

/// What is watched.
#[derive(Debug, Clone)]
pub struct Scope {
    /// This node: its pods are named by cgroup.
    pub node: String,
    /// Also every node's pods, to name remote ends by IP.
    pub remote_pods: bool,
    /// Most objects kept per cluster-wide kind.
    pub max_objects: usize,
}

impl Scope {
    /// This node's pods and the cluster's Services, nothing else cluster-wide, with the default cap.
    pub fn node(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            remote_pods: false,
            max_objects: DEFAULT_MAX_OBJECTS,
        }
    }
}

/// The watched kinds, in the order of their metrics.
const KINDS: [&str; 6] = [
    "pods",
    "replicasets",
    "jobs",
    "services",
    "endpointslices",
    "remote_pods",
];

enum Update {
    Pod(Event<PodRecord>),
    ReplicaSet(Event<(NamespacedName, Option<Owner>)>),
    Job(Event<(NamespacedName, Option<Owner>)>),
    Service(Event<(NamespacedName, ServiceAddrs)>),
    Slice(Event<(NamespacedName, SliceRecord)>),
    RemotePod(Event<PodRecord>),
    /// A failed list or watch of `KINDS[i]`.
    Error(usize, watcher::Error),
}

/// A client from the standard configuration: in-cluster service account, else KUBECONFIG / ~/.kube/config.
pub async fn default_client() -> Result<Client, KubeError> {
    Client::try_default().await.map_err(KubeError::Config)
}

/// The events of one kind's watcher (retried with kube's default backoff), each mapped by `wrap`.
fn watch<K, T>(
    api: Api<K>,
    config: watcher::Config,
    kind: usize,
    f: impl Fn(K) -> T + Send + 'static,
    wrap: fn(Event<T>) -> Update,
) -> stream::BoxStream<'static, Update>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    T: Send + 'static,
{
    watcher::watcher(api, config)
        .default_backoff()
        .map(move |r| match r {
            Ok(e) => wrap(map_event(e, &f)),
            Err(e) => Update::Error(kind, e),
        })
        .boxed()
}

/// Runs the watchers until the returned future is dropped, publishing into `identity`.
pub async fn run(client: Client, scope: Scope, identity: Arc<PodIdentity>, metrics: Arc<Metrics>) {
    info!(node = %scope.node, remote_pods = scope.remote_pods, "watching this node's pods, their owners and the Services");
    let all = watcher::Config::default;
    let mut streams = vec![
        watch(
            Api::<Pod>::all(client.clone()),
            all().fields(&format!("spec.nodeName={}", scope.node)),
            0,
            pod_record,
            Update::Pod,
        ),
        watch(
            Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()),
            all(),
            1,
            |m| owned(&m.metadata),
            Update::ReplicaSet,
        ),
        watch(
            Api::<PartialObjectMeta<Job>>::all(client.clone()),
            all(),
            2,
            |m| owned(&m.metadata),
            Update::Job,
        ),
        watch(
            Api::<Service>::all(client.clone()),
            all(),
            3,
            service_addrs,
            Update::Service,
        ),
        watch(
            Api::<EndpointSlice>::all(client.clone()),
            all(),
            4,
            slice_record,
            Update::Slice,
        ),
    ];
    if scope.remote_pods {
        // Running pods with their own IPs: a pod on the host's network shares the node's IP and names nothing.
        streams.push(watch(
            Api::<Pod>::all(client),
            all().fields("status.phase=Running,spec.hostNetwork=false"),
            5,
            pod_record,
            Update::RemotePod,
        ));
    }
    let updates = stream::select_all(streams);
    let store = Store::new(scope.max_objects, scope.remote_pods);
    publish_loop(updates, store, &identity, &metrics).await;
}

/// Applies updates and publishes the index after each batch, at most every [`PUBLISH_EVERY`].
async fn publish_loop(
    mut updates: impl Stream<Item = Update> + Unpin,
    mut store: Store,
    identity: &PodIdentity,
    metrics: &Metrics,
) {
    let m = KubeMetrics::register(metrics);
    let errors = &m.errors;
    let mut last = tokio::time::Instant::now() - PUBLISH_EVERY;
    while let Some(first) = updates.next().await {
        apply(&mut store, first, errors);
        // Take what arrives until the next publication is due (and at most BATCH), then publish once.
        let due = last + PUBLISH_EVERY;
        for _ in 1..BATCH {
            match tokio::time::timeout_at(due, updates.next()).await {
                Ok(Some(u)) => apply(&mut store, u, errors),
                Ok(None) | Err(_) => break,
            }
        }
        let was_synced = identity.is_synced();
        identity.publish(store.index(identity.label_keys()), store.synced());
        last = tokio::time::Instant::now();
        if !was_synced && store.synced() {
            info!(pods = store.pods.len(), "pod metadata synced");
        }
        m.update(&store);
    }
}

/// `observer_kube_*`: pods and objects known, evictions and watch errors per kind.
struct KubeMetrics {
    pods: Gauge,
    synced: Gauge,
    /// Per kind of [`KINDS`] (index 0, pods, unused: `pods` counts them).
    objects: Vec<Gauge>,
    evictions: Vec<Counter>,
    errors: Vec<Counter>,
}

impl KubeMetrics {
    fn register(metrics: &Metrics) -> Self {
        let (pods, synced) = (Gauge::default(), Gauge::default());
        metrics.register(
            "kube_pods",
            "Pods of this node known from the API",
            pods.clone(),
        );
        metrics.register(
            "kube_synced",
            "1 once every watched kind has been listed",
            synced.clone(),
        );
        KubeMetrics {
            pods,
            synced,
            objects: metrics.labelled(
                "kube_objects",
                "Cluster-wide objects kept, per kind (capped by --kubernetes-max-objects)",
                "kind",
                &KINDS,
            ),
            evictions: metrics.labelled(
                "kube_evictions",
                "Objects dropped to stay within --kubernetes-max-objects, per kind",
                "kind",
                &KINDS,
            ),
            errors: metrics.labelled(
                "kube_watch_errors",
                "Failed list or watch calls, retried with backoff",
                "kind",
                &KINDS,
            ),
        }
    }

    /// Sets the gauges from the store and brings the eviction counters up to its totals.
    fn update(&self, store: &Store) {
        self.pods.set(store.pods.len() as i64);
        self.synced.set(i64::from(store.synced()));
        let sizes = [
            (1, store.replicasets.len(), store.replicasets.evicted()),
            (2, store.jobs.len(), store.jobs.evicted()),
            (3, store.services.len(), store.services.evicted()),
            (
                4,
                store.endpointslices.len(),
                store.endpointslices.evicted(),
            ),
        ]
        .into_iter()
        .chain(
            store
                .remote_pods
                .as_ref()
                .map(|l| (5, l.len(), l.evicted())),
        );
        for (i, len, evicted) in sizes {
            self.objects[i].set(len as i64);
            let seen = self.evictions[i].get();
            self.evictions[i].inc_by(evicted.saturating_sub(seen));
        }
    }
}

fn apply(store: &mut Store, update: Update, errors: &[Counter]) {
    match update {
        Update::Pod(e) => drive(&mut store.pods, e, |p| (p.uid.clone(), p)),
        Update::ReplicaSet(e) => drive(&mut store.replicasets, e, |kv| kv),
        Update::Job(e) => drive(&mut store.jobs, e, |kv| kv),
        Update::Service(e) => drive(&mut store.services, e, |kv| kv),
        Update::Slice(e) => drive(&mut store.endpointslices, e, |kv| kv),
        Update::RemotePod(e) => {
            if let Some(l) = store.remote_pods.as_mut() {
                drive(l, e, |p| (p.uid.clone(), p))
            }
        }
        Update::Error(kind, e) => {
            errors[kind].inc();
            warn!(kind = KINDS[kind], error = %e, "Kubernetes watch failed; retrying");
        }
    }
}

/// Feeds one watcher event into a listing; `split` makes an object its key and value.
fn drive<K, V, T>(listing: &mut Listing<K, V>, event: Event<T>, split: impl Fn(T) -> (K, V))
where
    K: std::hash::Hash + Eq + Clone,
{
    match event {
        Event::Init => listing.init(),
        Event::InitApply(t) => {
            let (k, v) = split(t);
            listing.init_apply(k, v)
        }
        Event::InitDone => listing.init_done(),
        Event::Apply(t) => {
            let (k, v) = split(t);
            listing.apply(k, v)
        }
        Event::Delete(t) => listing.delete(&split(t).0),
    }
}

fn map_event<A, B>(e: Event<A>, f: impl Fn(A) -> B) -> Event<B> {
    match e {
        Event::Init => Event::Init,
        Event::InitApply(a) => Event::InitApply(f(a)),
        Event::InitDone => Event::InitDone,
        Event::Apply(a) => Event::Apply(f(a)),
        Event::Delete(a) => Event::Delete(f(a)),
    }
}

/// The controller among an object's owner references.
fn controller(meta: &ObjectMeta) -> Option<Owner> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| Owner {
            kind: o.kind.clone(),
            name: o.name.clone(),
        })
}

fn owned(meta: &ObjectMeta) -> (NamespacedName, Option<Owner>) {
    (key(meta), controller(meta))
}

fn pod_record(pod: Pod) -> PodRecord {
    let m = pod.metadata;
    let ips = pod
        .status
        .and_then(|st| st.pod_ips)
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    PodRecord {
        owner: controller(&m),
        uid: m.uid.unwrap_or_default(),
        name: m.name.unwrap_or_default(),
        namespace: m.namespace.unwrap_or_default(),
        labels: m.labels.unwrap_or_default(),
        ips,
        host_network: pod.spec.and_then(|s| s.host_network).unwrap_or(false),
    }
}

fn key(meta: &ObjectMeta) -> NamespacedName {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Whether a port's protocol (TCP when unset) is one HTTP runs on.
fn tcp(protocol: Option<&String>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

/// A Service's ClusterIPs with its TCP ports (none for a headless Service).
fn service_addrs(svc: Service) -> (NamespacedName, ServiceAddrs) {
    let spec = svc.spec.unwrap_or_default();
    let ips: Vec<IpAddr> = spec
        .cluster_ips
        .or_else(|| spec.cluster_ip.map(|ip| vec![ip]))
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let ports: Vec<u16> = spec
        .ports
        .into_iter()
        .flatten()
        .filter(|p| tcp(p.protocol.as_ref()))
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect();
    let addrs = ips
        .iter()
        .flat_map(|ip| ports.iter().map(move |port| (*ip, *port)))
        .collect();
    (key(&svc.metadata), addrs)
}

/// An EndpointSlice's Service (label `kubernetes.io/service-name`), endpoint IPs and TCP ports. A slice whose
/// ports are all of another protocol keeps no addresses.
fn slice_record(slice: EndpointSlice) -> (NamespacedName, SliceRecord) {
    let k = key(&slice.metadata);
    let service = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
        .map(|name| (k.0.clone(), name.clone()));
    let listed = slice.ports.unwrap_or_default();
    let ports: Vec<u16> = listed
        .iter()
        .filter(|p| tcp(p.protocol.as_ref()))
        .filter_map(|p| u16::try_from(p.port?).ok())
        .collect();
    let addresses = match service {
        Some(_) if listed.is_empty() || !ports.is_empty() => slice
            .endpoints
            .iter()
            .flat_map(|e| &e.addresses)
            .filter_map(|a| a.parse().ok())
            .collect(),
        _ => Vec::new(),
    };
    let record = SliceRecord {
        service: service.unwrap_or_default(),
        addresses,
        ports,
    };
    (k, record)
}
