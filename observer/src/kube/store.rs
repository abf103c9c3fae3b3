//! The pods of this node and the owners needed to name their workloads, kept from watch events, and the resolved
//! view the capture thread reads ([`PodIndex`], published whole, lock-free to read).
//!
//! Each watched kind goes through the same cycle kube's watcher drives: `Init` starts a fresh listing, `InitApply`
//! fills it, `InitDone` replaces what was known (so objects deleted while the watch was down, e.g. across a 410 Gone
//! re-list, disappear), `Apply`/`Delete` change one object. Workloads are resolved when the index is built, so a
//! ReplicaSet that arrives after its pods still names them: Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob,
//! else the pod's controller (StatefulSet, DaemonSet, ...).
use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

/// The identity of one pod, as events carry it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// `Kind/name` of the owning workload (`Deployment/checkout`), or empty for a pod nothing owns.
    pub workload: String,
    pub labels: BTreeMap<String, String>,
}

/// The resolved pods by UID: what a lookup by cgroup path reads.
#[derive(Debug, Default)]
pub struct PodIndex {
    pub by_uid: HashMap<String, Arc<PodMeta>>,
}

/// A controller reference: kind and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// A pod as watched: what the index needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub owner: Option<Owner>,
}

/// Objects of one kind under the watcher's list/watch cycle, keyed by `K`.
#[derive(Debug)]
pub struct Listing<K, V> {
    current: HashMap<K, V>,
    /// Objects of a listing in progress; replaces `current` at `InitDone`.
    pending: Option<HashMap<K, V>>,
    synced: bool,
}

impl<K: std::hash::Hash + Eq, V> Default for Listing<K, V> {
    fn default() -> Self {
        Self {
            current: HashMap::new(),
            pending: None,
            synced: false,
        }
    }
}

impl<K: std::hash::Hash + Eq, V> Listing<K, V> {
    pub fn init(&mut self) {
        self.pending = Some(HashMap::new());
    }
    pub fn init_apply(&mut self, key: K, value: V) {
        self.pending
            .get_or_insert_with(HashMap::new)
            .insert(key, value);
    }
    pub fn init_done(&mut self) {
        if let Some(listed) = self.pending.take() {
            self.current = listed;
        }
        self.synced = true;
    }
    pub fn apply(&mut self, key: K, value: V) {
        self.current.insert(key, value);
    }
    pub fn delete(&mut self, key: &K) {
        self.current.remove(key);
    }
    /// Whether a complete listing has been seen once (later re-lists keep serving the previous one meanwhile).
    pub fn synced(&self) -> bool {
        self.synced
    }
    pub fn get(&self, key: &K) -> Option<&V> {
        self.current.get(key)
    }
    pub fn len(&self) -> usize {
        self.current.len()
    }
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.current.values()
    }
}

/// Namespace and name: how owners are looked up.
pub type NamespacedName = (String, String);

/// Everything watched: this node's pods, and the owners of ReplicaSets and Jobs (cluster-wide, metadata only).
#[derive(Debug, Default)]
pub struct Store {
    pub pods: Listing<String, PodRecord>,
    pub replicasets: Listing<NamespacedName, Option<Owner>>,
    pub jobs: Listing<NamespacedName, Option<Owner>>,
}

impl Store {
    /// Every kind has been listed completely once.
    pub fn synced(&self) -> bool {
        self.pods.synced() && self.replicasets.synced() && self.jobs.synced()
    }

    /// The workload a pod belongs to, as `Kind/name` (empty when nothing owns it).
    pub fn workload(&self, pod: &PodRecord) -> String {
        let Some(owner) = &pod.owner else {
            return String::new();
        };
        let key = (pod.namespace.clone(), owner.name.clone());
        let (parent, fallback) = match owner.kind.as_str() {
            "ReplicaSet" => (self.replicasets.get(&key), deployment_by_hash(pod, owner)),
            "Job" => (self.jobs.get(&key), None),
            _ => (None, None),
        };
        match parent {
            Some(Some(up)) => format!("{}/{}", up.kind, up.name),
            Some(None) => format!("{}/{}", owner.kind, owner.name),
            // Not (yet) seen: a Deployment's ReplicaSet is named `<deployment>-<pod-template-hash>`.
            None => fallback.unwrap_or_else(|| format!("{}/{}", owner.kind, owner.name)),
        }
    }

    /// The resolved view of every pod, for publication.
    pub fn index(&self) -> PodIndex {
        let by_uid = self
            .pods
            .values()
            .map(|p| {
                let meta = PodMeta {
                    uid: p.uid.clone(),
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    workload: self.workload(p),
                    labels: p.labels.clone(),
                };
                (p.uid.clone(), Arc::new(meta))
            })
            .collect();
        PodIndex { by_uid }
    }
}

fn deployment_by_hash(pod: &PodRecord, owner: &Owner) -> Option<String> {
    let hash = pod.labels.get("pod-template-hash")?;
    let name = owner.name.strip_suffix(hash.as_str())?.strip_suffix('-')?;
    (!name.is_empty()).then(|| format!("Deployment/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, name: &str, owner: Option<(&str, &str)>, hash: Option<&str>) -> PodRecord {
        let mut labels = BTreeMap::from([("app".to_string(), name.to_string())]);
        if let Some(h) = hash {
            labels.insert("pod-template-hash".into(), h.into());
        }
        PodRecord {
            uid: uid.into(),
            name: name.into(),
            namespace: "shop".into(),
            labels,
            owner: owner.map(|(k, n)| Owner {
                kind: k.into(),
                name: n.into(),
            }),
        }
    }

    fn owner(kind: &str, name: &str) -> Option<Owner> {
        Some(Owner {
            kind: kind.into(),
            name: name.into(),
        })
    }

    #[test]
    fn workloads_resolve_through_replicasets_and_jobs() {
        let mut s = Store::default();
        let key = |n: &str| ("shop".to_string(), n.to_string());
        s.replicasets
            .apply(key("checkout-7d9f8b6c5d"), owner("Deployment", "checkout"));
        s.replicasets.apply(key("orphan-rs"), None);
        s.jobs
            .apply(key("report-29080000"), owner("CronJob", "report"));
        let cases = [
            (
                pod(
                    "1",
                    "checkout-7d9f8b6c5d-x2x9z",
                    Some(("ReplicaSet", "checkout-7d9f8b6c5d")),
                    Some("7d9f8b6c5d"),
                ),
                "Deployment/checkout",
            ),
            (
                pod(
                    "2",
                    "orphan-rs-abcde",
                    Some(("ReplicaSet", "orphan-rs")),
                    None,
                ),
                "ReplicaSet/orphan-rs",
            ),
            // A ReplicaSet not seen yet: its name less the pod-template-hash is the Deployment.
            (
                pod(
                    "3",
                    "cart-5f6d7c8b9a-q1w2e",
                    Some(("ReplicaSet", "cart-5f6d7c8b9a")),
                    Some("5f6d7c8b9a"),
                ),
                "Deployment/cart",
            ),
            (
                pod(
                    "4",
                    "cart-x",
                    Some(("ReplicaSet", "cart-x")),
                    Some("5f6d7c8b9a"),
                ),
                "ReplicaSet/cart-x",
            ),
            (
                pod(
                    "5",
                    "report-29080000-abcde",
                    Some(("Job", "report-29080000")),
                    None,
                ),
                "CronJob/report",
            ),
            (
                pod("6", "migrate-abcde", Some(("Job", "migrate")), None),
                "Job/migrate",
            ),
            (
                pod("7", "db-0", Some(("StatefulSet", "db")), None),
                "StatefulSet/db",
            ),
            (
                pod(
                    "8",
                    "node-agent-abcde",
                    Some(("DaemonSet", "node-agent")),
                    None,
                ),
                "DaemonSet/node-agent",
            ),
            (pod("9", "debug", None, None), ""),
        ];
        for (p, want) in cases {
            assert_eq!(s.workload(&p), want, "{}", p.name);
        }
    }

    #[test]
    fn a_relist_replaces_the_listing_and_forgets_what_it_lacks() {
        let mut s = Store::default();
        assert!(!s.synced());
        s.pods.init();
        s.pods.init_apply("a".into(), pod("a", "a", None, None));
        s.pods.init_apply("b".into(), pod("b", "b", None, None));
        assert!(
            s.pods.is_empty(),
            "nothing is served before the listing completes"
        );
        s.pods.init_done();
        for l in [&mut s.replicasets, &mut s.jobs] {
            l.init();
            l.init_done();
        }
        assert!(s.synced());
        assert_eq!(s.index().by_uid.len(), 2);
        s.pods.apply("c".into(), pod("c", "c", None, None));
        s.pods.delete(&"a".to_string());
        // After a 410 Gone the watcher lists again: `b` was deleted while the watch was down.
        s.pods.init();
        s.pods.init_apply("c".into(), pod("c", "c", None, None));
        assert_eq!(
            s.pods.len(),
            2,
            "the previous listing serves until the new one is complete"
        );
        s.pods.init_done();
        let index = s.index();
        assert_eq!(index.by_uid.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(index.by_uid["c"].labels["app"], "c");
        assert!(s.synced());
    }
}
