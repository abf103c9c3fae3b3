//! The pods of this node and the owners needed to name their workloads, kept from watch events, and the resolved
//! view the capture thread reads ([`PodIndex`], published whole, lock-free to read).
//!
//! Each watched kind goes through the same cycle kube's watcher drives: `Init` starts a fresh listing, `InitApply`
//! fills it, `InitDone` replaces what was known (so objects deleted while the watch was down, e.g. across a 410 Gone
//! re-list, disappear), `Apply`/`Delete` change one object. Workloads are resolved when the index is built, so a
//! ReplicaSet that arrives after its pods still names them: Pod -> ReplicaSet -> Deployment, Pod -> Job -> CronJob,
//! else the pod's controller (StatefulSet, DaemonSet, ...).
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::IpAddr,
    sync::Arc,
};

use crate::event::SharedStr;

/// The identity of one pod, as events carry it (shared strings: an event takes a reference, not a copy).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodMeta {
    pub uid: String,
    pub name: SharedStr,
    pub namespace: SharedStr,
    /// `Kind/name` of the owning workload (`Deployment/checkout`), or empty for a pod nothing owns.
    pub workload: SharedStr,
    pub labels: BTreeMap<String, String>,
    /// The labels events carry (`--pod-labels`), as `key=value`.
    pub event_labels: Vec<String>,
}

/// The resolved view the capture thread reads: this node's pods by UID, pods by IP (this node's, and with
/// `--kubernetes-remote-pods` every node's) and the Services each address backs.
#[derive(Debug, Default)]
pub struct PodIndex {
    pub by_uid: HashMap<String, Arc<PodMeta>>,
    /// Pods by their IPs; pods on the host's network are left out (their IP is the node's, shared).
    pub by_ip: HashMap<IpAddr, Arc<PodMeta>>,
    /// Services (`namespace/name`, sorted) by the address a client reaches them at: each endpoint's IP with each
    /// of its slice's ports, and each ClusterIP with each Service port. Port 0: every port (a slice without ports).
    pub services: HashMap<(IpAddr, u16), Vec<SharedStr>>,
}

impl PodIndex {
    /// The pod with this IP, if known.
    pub fn by_ip(&self, ip: IpAddr) -> Option<&Arc<PodMeta>> {
        self.by_ip.get(&ip.to_canonical())
    }

    /// The Services whose endpoints (or ClusterIP) include this address and port.
    pub fn services(&self, ip: IpAddr, port: u16) -> &[SharedStr] {
        let ip = ip.to_canonical();
        self.services
            .get(&(ip, port))
            .or_else(|| self.services.get(&(ip, 0)))
            .map_or(&[], Vec::as_slice)
    }
}

/// A controller reference: kind and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

/// A pod as watched: what the index needs of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodRecord {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub owner: Option<Owner>,
    /// `status.podIPs`.
    pub ips: Vec<IpAddr>,
    /// `spec.hostNetwork`: the pod's IPs are the node's.
    pub host_network: bool,
}

/// A Service's virtual addresses: each ClusterIP with each port (none for a headless Service).
pub type ServiceAddrs = Vec<(IpAddr, u16)>;

/// An EndpointSlice: the Service it belongs to and its endpoints' addresses and ports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SliceRecord {
    pub service: NamespacedName,
    pub addresses: Vec<IpAddr>,
    /// The ports the endpoints serve on; empty for every port.
    pub ports: Vec<u16>,
}

/// Objects keyed by `K`, at most `cap` of them: past the cap the one unchanged for longest is evicted.
#[derive(Debug)]
struct Bounded<K, V> {
    map: HashMap<K, (V, u64)>,
    /// Keys in the order of their last change, with the change's sequence number (stale entries skipped).
    order: VecDeque<(K, u64)>,
    seq: u64,
    cap: usize,
    evicted: u64,
}

impl<K: std::hash::Hash + Eq + Clone, V> Bounded<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            seq: 0,
            cap,
            evicted: 0,
        }
    }

    fn insert(&mut self, key: K, value: V) {
        self.seq += 1;
        if self.cap == usize::MAX {
            self.map.insert(key, (value, self.seq));
            return;
        }
        self.map.insert(key.clone(), (value, self.seq));
        self.order.push_back((key, self.seq));
        while self.map.len() > self.cap {
            let Some((k, seq)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|(_, s)| *s == seq) {
                self.map.remove(&k);
                self.evicted += 1;
            }
        }
        // Stale order entries (changed or deleted keys) are dropped once they outnumber the live ones.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(k, seq)| map.get(k).is_some_and(|(_, s)| s == seq));
        }
    }

    fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }
}

/// Objects of one kind under the watcher's list/watch cycle, keyed by `K`, optionally capped in number (the
/// cluster-wide kinds: memory stays bounded whatever the cluster's size; evictions are counted).
#[derive(Debug)]
pub struct Listing<K, V> {
    current: Bounded<K, V>,
    /// Objects of a listing in progress; replaces `current` at `InitDone`.
    pending: Option<Bounded<K, V>>,
    synced: bool,
    /// Evictions of listings already replaced.
    evicted_before: u64,
}

impl<K: std::hash::Hash + Eq + Clone, V> Default for Listing<K, V> {
    fn default() -> Self {
        Self::bounded(usize::MAX)
    }
}

impl<K: std::hash::Hash + Eq + Clone, V> Listing<K, V> {
    /// A listing keeping at most `cap` objects.
    pub fn bounded(cap: usize) -> Self {
        Self {
            current: Bounded::new(cap.max(1)),
            pending: None,
            synced: false,
            evicted_before: 0,
        }
    }
    pub fn init(&mut self) {
        self.pending = Some(Bounded::new(self.current.cap));
    }
    pub fn init_apply(&mut self, key: K, value: V) {
        let cap = self.current.cap;
        self.pending
            .get_or_insert_with(|| Bounded::new(cap))
            .insert(key, value);
    }
    pub fn init_done(&mut self) {
        if let Some(listed) = self.pending.take() {
            self.evicted_before += self.current.evicted;
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
        self.current.map.get(key).map(|(v, _)| v)
    }
    pub fn len(&self) -> usize {
        self.current.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.current.map.is_empty()
    }
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.current.map.values().map(|(v, _)| v)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.current.map.iter().map(|(k, (v, _))| (k, v))
    }
    /// Objects evicted to keep within the cap, over every listing so far.
    pub fn evicted(&self) -> u64 {
        self.evicted_before + self.current.evicted + self.pending.as_ref().map_or(0, |p| p.evicted)
    }
}

/// Namespace and name: how owners are looked up.
pub type NamespacedName = (String, String);

/// Everything watched: this node's pods; cluster-wide, the owners of ReplicaSets and Jobs (metadata only), the
/// Services and EndpointSlices, and with `--kubernetes-remote-pods` every pod (those kinds capped in number).
#[derive(Debug, Default)]
pub struct Store {
    pub pods: Listing<String, PodRecord>,
    pub replicasets: Listing<NamespacedName, Option<Owner>>,
    pub jobs: Listing<NamespacedName, Option<Owner>>,
    pub services: Listing<NamespacedName, ServiceAddrs>,
    pub endpointslices: Listing<NamespacedName, SliceRecord>,
    /// Every node's pods, by UID (`--kubernetes-remote-pods`).
    pub remote_pods: Option<Listing<String, PodRecord>>,
}

impl Store {
    /// A store whose cluster-wide listings keep at most `cap` objects each; `remote_pods` adds every node's pods.
    pub fn new(cap: usize, remote_pods: bool) -> Self {
        Self {
            pods: Listing::default(),
            replicasets: Listing::bounded(cap),
            jobs: Listing::bounded(cap),
            services: Listing::bounded(cap),
            endpointslices: Listing::bounded(cap),
            remote_pods: remote_pods.then(|| Listing::bounded(cap)),
        }
    }

    /// Every kind has been listed completely once.
    pub fn synced(&self) -> bool {
        self.pods.synced()
            && self.replicasets.synced()
            && self.jobs.synced()
            && self.services.synced()
            && self.endpointslices.synced()
            && self.remote_pods.as_ref().is_none_or(Listing::synced)
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

    fn meta(&self, p: &PodRecord, label_keys: &[String]) -> Arc<PodMeta> {
        Arc::new(PodMeta {
            uid: p.uid.clone(),
            name: SharedStr::from(&p.name),
            namespace: SharedStr::from(&p.namespace),
            workload: SharedStr::from(self.workload(p)),
            labels: p.labels.clone(),
            event_labels: label_keys
                .iter()
                .filter_map(|k| Some(format!("{k}={}", p.labels.get(k)?)))
                .collect(),
        })
    }

    /// The resolved view of every pod, for publication; events carry the labels whose keys are in `label_keys`.
    pub fn index(&self, label_keys: &[String]) -> PodIndex {
        let by_uid: HashMap<String, Arc<PodMeta>> = self
            .pods
            .values()
            .map(|p| (p.uid.clone(), self.meta(p, label_keys)))
            .collect();
        let mut by_ip = HashMap::new();
        // This node's pods first: a remote listing that has not caught up does not hide them.
        let local = self.pods.values().map(|p| (p, by_uid.get(&p.uid).cloned()));
        let remote = self.remote_pods.iter().flat_map(Listing::values);
        for (p, meta) in local.chain(remote.map(|p| (p, None))) {
            if p.host_network || p.ips.is_empty() || by_ip.contains_key(&p.ips[0].to_canonical()) {
                continue;
            }
            let meta = meta.unwrap_or_else(|| self.meta(p, label_keys));
            for ip in &p.ips {
                by_ip.insert(ip.to_canonical(), meta.clone());
            }
        }
        let mut services: HashMap<(IpAddr, u16), Vec<SharedStr>> = HashMap::new();
        let name = |(ns, n): &NamespacedName| SharedStr::from(format!("{ns}/{n}"));
        for slice in self.endpointslices.values() {
            let service = name(&slice.service);
            let ports: &[u16] = if slice.ports.is_empty() {
                &[0]
            } else {
                &slice.ports
            };
            for ip in &slice.addresses {
                for port in ports {
                    services
                        .entry((ip.to_canonical(), *port))
                        .or_default()
                        .push(service.clone());
                }
            }
        }
        for (key, addrs) in self.services.iter() {
            let service = name(key);
            for (ip, port) in addrs {
                services
                    .entry((ip.to_canonical(), *port))
                    .or_default()
                    .push(service.clone());
            }
        }
        // A lookup reads one entry: each port's also names the Services serving every port of that address.
        let any_port: HashMap<IpAddr, Vec<SharedStr>> = services
            .iter()
            .filter(|((_, port), _)| *port == 0)
            .map(|((ip, _), names)| (*ip, names.clone()))
            .collect();
        if !any_port.is_empty() {
            for ((ip, port), v) in services.iter_mut() {
                if let Some(names) = any_port.get(ip).filter(|_| *port != 0) {
                    v.extend(names.iter().cloned());
                }
            }
        }
        for names in services.values_mut() {
            names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
            names.dedup();
        }
        PodIndex {
            by_uid,
            by_ip,
            services,
        }
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
            ..PodRecord::default()
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
        s.services.init();
        s.services.init_done();
        s.endpointslices.init();
        s.endpointslices.init_done();
        assert!(s.synced());
        assert_eq!(s.index(&[]).by_uid.len(), 2);
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
        let index = s.index(&["app".to_string(), "absent".to_string()]);
        assert_eq!(index.by_uid.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(index.by_uid["c"].labels["app"], "c");
        assert_eq!(
            index.by_uid["c"].event_labels,
            ["app=c"],
            "selected keys only"
        );
        assert!(s.synced());
    }

    #[test]
    fn pods_by_ip_and_services_by_address() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let mut s = Store::new(100, true);
        let mut local = pod("l", "checkout-0", None, None);
        local.ips = vec![ip("10.244.1.5")];
        s.pods.apply("l".into(), local.clone());
        let remote = s.remote_pods.as_mut().expect("remote listing");
        remote.apply("l".into(), local);
        let mut far = pod("r", "cart-0", Some(("StatefulSet", "cart")), None);
        far.ips = vec![ip("10.244.2.7"), ip("fd00::7")];
        remote.apply("r".into(), far);
        let mut host = pod("h", "node-exporter-x", None, None);
        host.ips = vec![ip("10.0.0.12")];
        host.host_network = true;
        remote.apply("h".into(), host);
        s.services
            .apply(("shop".into(), "cart".into()), vec![(ip("10.96.0.20"), 80)]);
        s.services
            .apply(("shop".into(), "cart-headless".into()), vec![]);
        let slice = |svc: &str, addrs: &[&str], ports: &[u16]| SliceRecord {
            service: ("shop".into(), svc.into()),
            addresses: addrs.iter().map(|a| ip(a)).collect(),
            ports: ports.to_vec(),
        };
        s.endpointslices.apply(
            ("shop".into(), "cart-abc".into()),
            slice("cart", &["10.244.2.7"], &[8080]),
        );
        s.endpointslices.apply(
            ("shop".into(), "cart-headless-xyz".into()),
            slice("cart-headless", &["10.244.2.7", "fd00::7"], &[]),
        );
        let index = s.index(&["app".to_string()]);
        let name = |p: Option<&Arc<PodMeta>>| {
            p.map(|p| format!("{}/{} {}", p.namespace, p.name, p.workload))
        };
        assert_eq!(
            name(index.by_ip(ip("10.244.2.7"))).as_deref(),
            Some("shop/cart-0 StatefulSet/cart")
        );
        assert_eq!(
            name(index.by_ip(ip("::ffff:10.244.2.7"))).as_deref(),
            Some("shop/cart-0 StatefulSet/cart"),
            "an IPv4-mapped address is the IPv4 one"
        );
        assert_eq!(
            name(index.by_ip(ip("fd00::7"))).as_deref(),
            Some("shop/cart-0 StatefulSet/cart")
        );
        assert_eq!(
            name(index.by_ip(ip("10.244.1.5"))).as_deref(),
            Some("shop/checkout-0 ")
        );
        assert!(
            index.by_ip(ip("10.0.0.12")).is_none(),
            "a pod on the host's network is not its node's IP"
        );
        let services = |a: &str, port: u16| -> Vec<String> {
            index
                .services(ip(a), port)
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        assert_eq!(
            services("10.244.2.7", 8080),
            ["shop/cart", "shop/cart-headless"]
        );
        assert_eq!(
            services("10.244.2.7", 9000),
            ["shop/cart-headless"],
            "a slice without ports: every port"
        );
        assert_eq!(services("10.96.0.20", 80), ["shop/cart"], "the ClusterIP");
        assert!(services("10.96.0.20", 81).is_empty());
        assert!(services("10.244.1.5", 8080).is_empty());
    }

    #[test]
    fn a_capped_listing_evicts_the_longest_unchanged_and_counts() {
        let mut l: Listing<u32, u32> = Listing::bounded(3);
        for k in 0..3 {
            l.apply(k, k);
        }
        l.apply(0, 10); // 0 changed: 1 is now the longest unchanged
        l.apply(3, 3);
        let mut keys: Vec<u32> = l.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        assert_eq!(keys, [0, 2, 3]);
        assert_eq!(l.evicted(), 1);
        l.delete(&2);
        l.apply(4, 4);
        assert_eq!(l.len(), 3, "a deleted key frees its place");
        assert_eq!(l.evicted(), 1);
        // A re-list beyond the cap keeps the last listed and counts the rest.
        l.init();
        for k in 100..110 {
            l.init_apply(k, k);
        }
        l.init_done();
        let mut keys: Vec<u32> = l.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        assert_eq!(keys, [107, 108, 109]);
        assert_eq!(l.evicted(), 8);
        // Many changes to few keys keep the order queue bounded.
        for round in 0..10_000u32 {
            l.apply(round % 3 + 107, round);
        }
        assert!(l.current.order.len() <= 2 * 3 + 64 + 1);
        assert_eq!(l.evicted(), 8);
    }
}
