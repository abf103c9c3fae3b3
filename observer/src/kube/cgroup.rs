//! Pod and container identity from a cgroup v2 path, as kubelet and the container runtimes name them.
//!
//! kubelet puts every pod in a cgroup under `kubepods` and every container in a child of it. The names depend on the
//! cgroup driver and the runtime:
//!
//! | driver   | pod cgroup                                                              | container cgroup            |
//! |----------|-------------------------------------------------------------------------|-----------------------------|
//! | systemd  | `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice`     | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` |
//! | cgroupfs | `kubepods/<qos>/pod<uid>`                                               | `<id>`                      |
//!
//! Guaranteed pods have no `<qos>` level; systemd names write the uid's dashes as underscores; kubelet may sit under
//! another root (`kubelet.slice/kubelet-kubepods.slice/...`, kind and some distributions). CRI-O adds a
//! `crio-conmon-<id>.scope` for its monitor process (pod, no container) and on some versions a `container` child of
//! the container's scope. Parsing is by component, anchored on the `kubepods` level, so any prefix works.

/// Quality-of-service class of a pod, from the level between `kubepods` and the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// What a kubepods cgroup path says about the pod (and container) it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod's UID in its canonical dashed form, as `metadata.uid` has it.
    pub pod_uid: String,
    /// The runtime's container id (64 hex digits), when the path reaches a container's cgroup.
    pub container_id: Option<String>,
    pub qos: Qos,
}

/// Parses a cgroup path (absolute or relative to the cgroup2 mount). `None` for cgroups that are not a pod's.
pub fn parse(path: &str) -> Option<PodCgroup> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let anchor = parts.iter().position(|p| is_kubepods_root(p))?;
    let mut rest = parts[anchor + 1..].iter().copied();
    let mut level = rest.next()?;
    let qos = match qos_of(level) {
        Some(q) => {
            level = rest.next()?;
            q
        }
        None => Qos::Guaranteed,
    };
    let pod_uid = pod_uid_of(level)?;
    let container_id = rest.next().and_then(container_id_of);
    Some(PodCgroup {
        pod_uid,
        container_id,
        qos,
    })
}

/// `kubepods` (cgroupfs) or `kubepods.slice` / `<root>-kubepods.slice` (systemd).
fn is_kubepods_root(part: &str) -> bool {
    part == "kubepods" || part == "kubepods.slice" || part.ends_with("-kubepods.slice")
}

fn qos_of(part: &str) -> Option<Qos> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let class = name.rsplit('-').next()?;
    // systemd: `kubepods-burstable.slice`; cgroupfs: `burstable`. A pod level (`...-pod<uid>`) never matches.
    match class {
        "burstable" => Some(Qos::Burstable),
        "besteffort" => Some(Qos::BestEffort),
        _ => None,
    }
}

/// `pod<uid>` (cgroupfs) or `<prefix>-pod<uid with _>.slice` (systemd) -> the dashed uid.
fn pod_uid_of(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let uid = match name.rfind("-pod") {
        Some(i) => &name[i + 4..],
        None => name.strip_prefix("pod")?,
    };
    let uid = uid.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The container id of a container cgroup; `None` for CRI-O's conmon scope and anything else.
fn container_id_of(part: &str) -> Option<String> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    let id = ["cri-containerd-", "crio-", "docker-", "cri-dockerd-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .unwrap_or(name);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "6f2b8c3e-1a2b-4c5d-8e9f-0123456789ab";
    const ID: &str = "4f3c2b1a09e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2";

    fn pod(qos: Qos, container: bool) -> Option<PodCgroup> {
        Some(PodCgroup {
            pod_uid: UID.into(),
            container_id: container.then(|| ID.into()),
            qos,
        })
    }

    /// Paths as they appear under /sys/fs/cgroup on nodes of each runtime and driver (the uid and id replaced).
    #[test]
    fn kubelet_paths_of_every_driver_and_runtime() {
        let u = UID.replace('-', "_");
        let cases = [
            // systemd driver, containerd
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"), pod(Qos::Burstable, true)),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"), pod(Qos::BestEffort, true)),
            (format!("/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{ID}.scope"), pod(Qos::Guaranteed, true)),
            // systemd driver, CRI-O (with its nested `container` cgroup and its conmon scope)
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope"), pod(Qos::Burstable, true)),
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-{ID}.scope/container"), pod(Qos::Burstable, true)),
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{ID}.scope"), pod(Qos::Burstable, false)),
            // systemd driver, cri-dockerd
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{ID}.scope"), pod(Qos::BestEffort, true)),
            // cgroupfs driver (containerd, CRI-O and k3s alike)
            (format!("/kubepods/burstable/pod{UID}/{ID}"), pod(Qos::Burstable, true)),
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), pod(Qos::BestEffort, true)),
            (format!("/kubepods/pod{UID}/{ID}"), pod(Qos::Guaranteed, true)),
            // kubelet under another root (kind's nodes), and relative paths
            (format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"), pod(Qos::BestEffort, true)),
            (format!("kubepods/burstable/pod{UID}"), pod(Qos::Burstable, false)),
            (format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"), pod(Qos::Burstable, false)),
        ];
        for (path, want) in cases {
            assert_eq!(parse(&path), want, "{path}");
        }
    }

    #[test]
    fn cgroups_that_are_no_pod() {
        for path in [
            "/",
            "",
            "/system.slice/containerd.service",
            "/system.slice/kubelet.service",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/burstable",
            "/user.slice/user-1000.slice/session-3.scope",
            "/kubepods/burstable/pod6f2b8c3e-1a2b-4c5d-8e9f",
            "/kubepods/burstable/podnot-a-uid-at-all-0000000000",
            "/system.slice/docker-4f3c.scope/kubepods",
        ] {
            assert_eq!(parse(path), None, "{path:?}");
        }
    }

    #[test]
    fn short_or_odd_container_names_give_the_pod_only() {
        let got = parse(&format!("/kubepods/burstable/pod{UID}/not-a-container")).expect("pod");
        assert_eq!(got.pod_uid, UID);
        assert_eq!(got.container_id, None);
    }
}
