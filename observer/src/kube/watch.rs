//! Watches the API server for this node's pods (field selector `spec.nodeName`) and, metadata only, for the
//! ReplicaSets and Jobs that own pods, and publishes the resolved [`PodIndex`] after each batch of events.
//!
//! kube's watcher lists, then watches from the list's resourceVersion; when the watch breaks or the server answers
//! 410 Gone (the version is too old) it lists again, which [`Store`]'s listings turn into a clean replacement. Errors
//! are retried with kube's default backoff and counted; the agent keeps serving the last good view meanwhile.
use std::sync::Arc;

use ::kube::{
    api::{ObjectMeta, PartialObjectMeta},
    runtime::{
        watcher::{self, Event},
        WatchStreamExt,
    },
    Api, Client,
};
use futures_util::{stream, FutureExt, StreamExt};
use k8s_openapi::api::{apps::v1::ReplicaSet, batch::v1::Job, core::v1::Pod};
use tracing::{info, warn};

use super::{
    store::{Listing, NamespacedName, Owner, PodRecord, Store},
    KubeError, PodIdentity,
};
use crate::metrics::{Counter, Gauge, Metrics};

/// Most events applied before the index is republished (bounds a re-list's publication delay).
const BATCH: usize = 1024;

enum Update {
    Pod(Event<PodRecord>),
    ReplicaSet(Event<(NamespacedName, Option<Owner>)>),
    Job(Event<(NamespacedName, Option<Owner>)>),
    Error(&'static str, watcher::Error),
}

/// A client from the standard configuration: in-cluster service account, else KUBECONFIG / ~/.kube/config.
pub async fn default_client() -> Result<Client, KubeError> {
    Client::try_default().await.map_err(KubeError::Config)
}

/// Runs the watchers until the returned future is dropped, publishing into `identity`.
pub async fn run(client: Client, node: String, identity: Arc<PodIdentity>, metrics: Arc<Metrics>) {
    info!(node = %node, "watching this node's pods and their owners");
    let pods_cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let pods = watcher::watcher(Api::<Pod>::all(client.clone()), pods_cfg)
        .default_backoff()
        .map(|r| match r {
            Ok(e) => Update::Pod(map_event(e, pod_record)),
            Err(e) => Update::Error("pods", e),
        });
    let replicasets = watcher::watcher(
        Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|r| match r {
        Ok(e) => Update::ReplicaSet(map_event(e, |m| owned(&m.metadata))),
        Err(e) => Update::Error("replicasets", e),
    });
    let jobs = watcher::watcher(
        Api::<PartialObjectMeta<Job>>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|r| match r {
        Ok(e) => Update::Job(map_event(e, |m| owned(&m.metadata))),
        Err(e) => Update::Error("jobs", e),
    });
    let mut updates = stream::select(
        stream::select(pods.boxed(), replicasets.boxed()),
        jobs.boxed(),
    );
    let mut store = Store::default();
    let (pods_known, synced) = (Gauge::<i64>::default(), Gauge::<i64>::default());
    metrics.register(
        "kube_pods",
        "Pods of this node known from the API",
        pods_known.clone(),
    );
    metrics.register(
        "kube_synced",
        "1 once pods, ReplicaSets and Jobs have been listed",
        synced.clone(),
    );
    let errors: Vec<Counter> = metrics.labelled(
        "kube_watch_errors",
        "Failed list or watch calls, retried with backoff",
        "kind",
        &WATCHED,
    );
    while let Some(first) = updates.next().await {
        apply(&mut store, first, &errors);
        // Take what is already there without waiting, then publish once.
        for _ in 1..BATCH {
            match updates.next().now_or_never() {
                Some(Some(u)) => apply(&mut store, u, &errors),
                _ => break,
            }
        }
        let was_synced = identity.is_synced();
        identity.publish(store.index(identity.label_keys()), store.synced());
        if !was_synced && store.synced() {
            info!(pods = store.pods.len(), "pod metadata synced");
        }
        pods_known.set(store.pods.len() as i64);
        synced.set(i64::from(store.synced()));
    }
}

/// The kinds watched, as `observer_kube_watch_errors_total` labels them.
const WATCHED: [&str; 3] = ["pods", "replicasets", "jobs"];

fn apply(store: &mut Store, update: Update, errors: &[Counter]) {
    match update {
        Update::Pod(e) => drive(&mut store.pods, e, |p| (p.uid.clone(), p)),
        Update::ReplicaSet(e) => drive(&mut store.replicasets, e, |kv| kv),
        Update::Job(e) => drive(&mut store.jobs, e, |kv| kv),
        Update::Error(kind, e) => {
            let i = WATCHED.iter().position(|k| *k == kind).unwrap_or(0);
            errors[i].inc();
            warn!(kind, error = %e, "Kubernetes watch failed; retrying");
        }
    }
}

/// Feeds one watcher event into a listing; `split` makes an object its key and value.
fn drive<K, V, T>(listing: &mut Listing<K, V>, event: Event<T>, split: impl Fn(T) -> (K, V))
where
    K: std::hash::Hash + Eq,
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
    let key = (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    );
    (key, controller(meta))
}

fn pod_record(pod: Pod) -> PodRecord {
    let m = pod.metadata;
    PodRecord {
        owner: controller(&m),
        uid: m.uid.unwrap_or_default(),
        name: m.name.unwrap_or_default(),
        namespace: m.namespace.unwrap_or_default(),
        labels: m.labels.unwrap_or_default(),
    }
}
