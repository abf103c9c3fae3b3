//! The security posture of the Kubernetes manifests, read as `k8s-openapi` types: the committed plain manifests
//! (deploy/kubernetes) always, and every values file's render of the Helm chart when `cargo xtask test` (or
//! `cargo xtask k8s check`) has left them in `$OBSERVER_K8S_RENDERED`.
//!
//! What is asserted is what the README's Kubernetes section promises: the agent drops ALL capabilities and adds only
//! the documented ones (or is privileged by explicit opt-in), never escalates, has a read-only root filesystem and a
//! read-only host cgroup2, uses the host network only with TC, has liveness and readiness probes on its metrics
//! port and resource limits; everything else runs as non-root with nothing added; RBAC only reads.
#![forbid(unsafe_code)]
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    batch::v1::Job,
    core::v1::{ConfigMap, Container, PodSpec, Probe},
    rbac::v1::ClusterRole,
};
use serde_json::Value;

/// The capabilities the agent adds, each measured on a 6.18 kernel (README, Privileges; observer/src/privileges.rs).
const AGENT_CAPABILITIES: &[&str] = &["BPF", "PERFMON", "NET_ADMIN"];
/// What the agent's watchers call: list, then watch (kube's watcher never gets one object).
const READ_VERBS: &[&str] = &["list", "watch"];
/// Exactly what pod identity reads, as (API group, resource): pods (this node's by field selector, every node's
/// with --kubernetes-remote-pods: RBAC cannot narrow by field), the owners of ReplicaSets and Jobs, and the Services
/// and EndpointSlices API matchers by `service` need.
const READ_RESOURCES: &[(&str, &str)] = &[
    ("", "pods"),
    ("", "services"),
    ("apps", "replicasets"),
    ("batch", "jobs"),
    ("discovery.k8s.io", "endpointslices"),
];

/// One rendered set of manifests: every object by kind.
#[derive(Default)]
struct Manifests {
    name: String,
    objects: Vec<Value>,
}

impl Manifests {
    fn read(name: &str, dir: &Path) -> Self {
        let mut objects = Vec::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read manifest");
            for doc in serde_norway::Deserializer::from_str(&text) {
                let value: Value = serde::Deserialize::deserialize(doc)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                // deploy/kubernetes also holds the values the manifests were rendered with and the kustomization.
                if value.get("apiVersion").is_some() && value.get("kind").is_some() {
                    objects.push(value);
                }
            }
        }
        Manifests {
            name: name.to_string(),
            objects,
        }
    }

    fn of_kind<T: serde::de::DeserializeOwned>(&self, kind: &str) -> Vec<T> {
        self.objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .map(|o| {
                serde_json::from_value(o.clone())
                    .unwrap_or_else(|e| panic!("{}: {kind} does not parse: {e}", self.name))
            })
            .collect()
    }
}

fn all_sets() -> Vec<Manifests> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut sets = vec![Manifests::read(
        "deploy/kubernetes",
        &root.join("deploy/kubernetes"),
    )];
    if let Some(dir) = std::env::var_os("OBSERVER_K8S_RENDERED") {
        let dir = PathBuf::from(dir);
        let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("OBSERVER_K8S_RENDERED={}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        cases.sort();
        assert!(
            cases.len() >= 3,
            "expected a render per values file in {}",
            dir.display()
        );
        for case in cases {
            let name = format!("chart render {}", case.display());
            sets.push(Manifests::read(&name, &case));
        }
    }
    sets
}

fn http_probe(p: Option<&Probe>) -> Option<(String, String)> {
    let get = p?.http_get.as_ref()?;
    let port = match &get.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i) => i.to_string(),
    };
    Some((get.path.clone().unwrap_or_default(), port))
}

fn assert_limits(set: &str, c: &Container) {
    let r = c
        .resources
        .as_ref()
        .unwrap_or_else(|| panic!("{set}: {} has no resources", c.name));
    for (what, map) in [("limits", &r.limits), ("requests", &r.requests)] {
        let map = map
            .as_ref()
            .unwrap_or_else(|| panic!("{set}: {} has no {what}", c.name));
        for res in ["cpu", "memory"] {
            assert!(map.contains_key(res), "{set}: {} {what} lack {res}", c.name);
        }
    }
}

/// Every `$(VAR)` in a container's arguments is defined by its env or by a key of a ConfigMap it loads.
fn assert_args_resolve(set: &Manifests, c: &Container) {
    let mut defined: BTreeSet<String> = c.env.iter().flatten().map(|e| e.name.clone()).collect();
    let maps: BTreeMap<String, ConfigMap> = set
        .of_kind::<ConfigMap>("ConfigMap")
        .into_iter()
        .map(|m| (m.metadata.name.clone().unwrap_or_default(), m))
        .collect();
    for from in c.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            let map = maps.get(&r.name).unwrap_or_else(|| {
                panic!(
                    "{}: {} loads missing ConfigMap {}",
                    set.name, c.name, r.name
                )
            });
            defined.extend(map.data.iter().flatten().map(|(k, _)| k.clone()));
        }
    }
    for arg in c.args.iter().flatten() {
        let mut rest = arg.as_str();
        while let Some(start) = rest.find("$(") {
            let end = rest[start..].find(')').expect("closed $(") + start;
            let var = &rest[start + 2..end];
            assert!(
                defined.contains(var),
                "{}: {} argument {arg:?} uses ${var}, which nothing defines",
                set.name,
                c.name
            );
            rest = &rest[end + 1..];
        }
    }
}

fn check_agent(set: &Manifests) {
    let daemonsets: Vec<DaemonSet> = set.of_kind("DaemonSet");
    assert_eq!(daemonsets.len(), 1, "{}: one DaemonSet", set.name);
    let ds = &daemonsets[0];
    let template = &ds.spec.as_ref().expect("spec").template;
    let annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    let checksum = annotations
        .get("checksum/config")
        .unwrap_or_else(|| panic!("{}: the pods carry no config checksum", set.name));
    assert!(
        checksum.len() == 64 && checksum.chars().all(|c| c.is_ascii_hexdigit()),
        "{}: checksum/config {checksum:?} is not a sha256",
        set.name
    );
    let pod: &PodSpec = template.spec.as_ref().expect("pod spec");
    let [agent] = pod.containers.as_slice() else {
        panic!("{}: the agent pod has one container", set.name)
    };
    let args = agent.args.clone().unwrap_or_default();
    let with_tc = args.iter().any(|a| a.starts_with("--iface"));
    assert_eq!(
        pod.host_network.unwrap_or(false),
        with_tc,
        "{}: hostNetwork exactly when TC is attached to host interfaces",
        set.name
    );
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()),
        "{}: the agent tolerates every taint",
        set.name
    );
    let roles = set.of_kind::<ClusterRole>("ClusterRole").len();
    if args.iter().any(|a| a == "--kubernetes") {
        assert!(args.iter().any(|a| a == "--node-name=$(NODE_NAME)"));
        assert_eq!(
            roles, 1,
            "{}: --kubernetes reads through a ClusterRole",
            set.name
        );
        assert_ne!(pod.automount_service_account_token, Some(false));
    } else {
        assert_eq!(
            pod.automount_service_account_token,
            Some(false),
            "{}: no API token without --kubernetes",
            set.name
        );
        assert_eq!(roles, 0, "{}: no RBAC without --kubernetes", set.name);
        assert!(
            !args.iter().any(|a| a.starts_with("--kubernetes-")),
            "{}: Kubernetes options without --kubernetes",
            set.name
        );
    }

    let sc = agent
        .security_context
        .as_ref()
        .expect("agent securityContext");
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{}: read-only root",
        set.name
    );
    if sc.privileged == Some(true) {
        eprintln!("{}: privileged agent (opt-in fallback)", set.name);
    } else {
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", set.name);
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{}",
            set.name
        );
        let added: Vec<&str> = caps.add.iter().flatten().map(String::as_str).collect();
        assert_eq!(
            added, AGENT_CAPABILITIES,
            "{}: added capabilities",
            set.name
        );
    }

    let ports: BTreeSet<String> = agent
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.name.clone())
        .collect();
    assert!(
        ports.contains("metrics"),
        "{}: a named metrics port",
        set.name
    );
    assert_eq!(
        http_probe(agent.liveness_probe.as_ref()),
        Some(("/healthz".into(), "metrics".into())),
        "{}: liveness",
        set.name
    );
    assert_eq!(
        http_probe(agent.readiness_probe.as_ref()),
        Some(("/readyz".into(), "metrics".into())),
        "{}: readiness",
        set.name
    );
    assert_limits(&set.name, agent);
    assert_args_resolve(set, agent);

    // Host paths: the cgroup2 hierarchy read-only; the spool is the only host directory written.
    let volumes = pod.volumes.clone().unwrap_or_default();
    for mount in agent.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("{}: mount {} has no volume", set.name, mount.name));
        if let Some(host) = &volume.host_path {
            let writable = mount.read_only != Some(true);
            if host.path.contains("cgroup") {
                assert!(!writable, "{}: host cgroup2 must be read-only", set.name);
                assert!(args.contains(&format!("--cgroup={}", host.path)));
            } else {
                assert_eq!(mount.mount_path, "/var/lib/observer/spool", "{}", set.name);
            }
        }
        if let Some(secret) = &volume.secret {
            assert_eq!(
                secret.default_mode,
                Some(0o400),
                "{}: secret {}",
                set.name,
                mount.name
            );
            assert_eq!(mount.read_only, Some(true));
        }
    }
    assert!(
        volumes.iter().any(|v| v
            .host_path
            .as_ref()
            .is_some_and(|h| h.path.contains("cgroup"))),
        "{}: the host cgroup2 hierarchy is mounted",
        set.name
    );
}

/// Workloads that need no privilege: non-root, nothing added, no token, no host namespaces or paths.
fn check_unprivileged(set: &Manifests, what: &str, pod: &PodSpec) {
    let psc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(
        psc.run_as_non_root,
        Some(true),
        "{}: {what} runs as non-root",
        set.name
    );
    assert_eq!(
        pod.automount_service_account_token,
        Some(false),
        "{}: {what}",
        set.name
    );
    assert!(
        !pod.host_pid.unwrap_or(false) && !pod.host_network.unwrap_or(false),
        "{}: {what} uses no host namespace",
        set.name
    );
    assert!(
        pod.volumes.iter().flatten().all(|v| v.host_path.is_none()),
        "{}: {what} mounts no host path",
        set.name
    );
    for c in &pod.containers {
        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{}: {what}",
            set.name
        );
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{}: {what}",
            set.name
        );
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert!(
            caps.add.is_none(),
            "{}: {what} adds no capability",
            set.name
        );
        assert_limits(&set.name, c);
        assert_args_resolve(set, c);
    }
}

#[test]
fn manifests_keep_the_documented_security_posture() {
    let sets = all_sets();
    let mut seen = BTreeSet::new();
    for set in &sets {
        check_agent(set);
        for d in set.of_kind::<Deployment>("Deployment") {
            let pod = d.spec.expect("spec").template.spec.expect("pod spec");
            let args = pod.containers[0].args.clone().unwrap_or_default();
            assert_eq!(args[..2], ["insights", "run"], "{}", set.name);
            check_unprivileged(set, "insights runner", &pod);
            seen.insert("insights");
        }
        let agent_args = set
            .of_kind::<DaemonSet>("DaemonSet")
            .iter()
            .flat_map(|d| d.spec.as_ref().expect("spec").template.spec.clone())
            .flat_map(|p| p.containers[0].args.clone().unwrap_or_default())
            .collect::<Vec<_>>();
        if agent_args.iter().any(|a| a == "--kubernetes-remote-pods") {
            assert!(
                agent_args
                    .iter()
                    .any(|a| a.starts_with("--kubernetes-max-objects=")),
                "{}: a cluster-wide pod watch is capped",
                set.name
            );
            seen.insert("remote-pods");
        }
        for j in set.of_kind::<Job>("Job") {
            let annotations = j.metadata.annotations.clone().unwrap_or_default();
            assert!(
                annotations
                    .get("helm.sh/hook")
                    .is_some_and(|h| h.contains("pre-upgrade")),
                "{}: the schema Job is a pre-upgrade hook",
                set.name
            );
            let pod = j.spec.expect("spec").template.spec.expect("pod spec");
            assert_eq!(
                pod.containers[0].args.as_ref().expect("args")[..2],
                ["schema", "apply"]
            );
            check_unprivileged(set, "schema job", &pod);
            seen.insert("schema");
        }
        for role in set.of_kind::<ClusterRole>("ClusterRole") {
            let mut granted = BTreeSet::new();
            for rule in role.rules.iter().flatten() {
                let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
                assert_eq!(
                    verbs,
                    READ_VERBS.iter().copied().collect(),
                    "{}: RBAC verbs of {:?}",
                    set.name,
                    rule.resources
                );
                for group in rule.api_groups.iter().flatten() {
                    for res in rule.resources.iter().flatten() {
                        granted.insert((group.clone(), res.clone()));
                    }
                }
            }
            let want: BTreeSet<(String, String)> = READ_RESOURCES
                .iter()
                .map(|(g, r)| (g.to_string(), r.to_string()))
                .collect();
            assert_eq!(granted, want, "{}: RBAC grants what is read", set.name);
            seen.insert("rbac");
        }
        if set.objects.iter().any(|o| o["kind"] == "ServiceMonitor") {
            let sm = set
                .objects
                .iter()
                .find(|o| o["kind"] == "ServiceMonitor")
                .expect("found");
            assert_eq!(
                sm["spec"]["endpoints"][0]["port"], "metrics",
                "{}",
                set.name
            );
            seen.insert("servicemonitor");
        }
    }
    // The plain manifests alone hold the runner, the job and RBAC; the chart's cases add a ServiceMonitor.
    let want: &[&str] = if sets.len() > 1 {
        &[
            "insights",
            "schema",
            "rbac",
            "servicemonitor",
            "remote-pods",
        ]
    } else {
        &["insights", "schema", "rbac"]
    };
    for w in want {
        assert!(seen.contains(w), "no manifest set exercised {w}");
    }
}
