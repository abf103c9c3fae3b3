//! End to end on Kubernetes terms without a cluster: processes in cgroups named as kubelet names them (systemd driver
//! with containerd for the client, cgroupfs for the server), a stand-in API server answering with the recorded
//! responses of observer/tests/fixtures/kube, and `observer run --kubernetes`. Events must carry each end's pod,
//! namespace, workload and labels, a registry selector by namespace and labels must attribute the application, and an
//! API matcher by `service` must match the server whose address an EndpointSlice of that Service lists.
#![forbid(unsafe_code)]
use std::{path::Path, process::Command, time::Duration};

use observer_tests::*;

const CHECKOUT_UID: &str = "6f2b8c3e_1a2b_4c5d_8e9f_0123456789ab";
const DB_UID: &str = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";
const ID: &str = "4f3c2b1a4f3c2b1a4f3c2b1a4f3c2b1a4f3c2b1a4f3c2b1a4f3c2b1a4f3c2b1a";
const WEB_PORT: u16 = 18961;
const API_PORT: u16 = 18962;

/// Runs `argv` with its process moved into the cgroup directory `cg` first.
fn in_cgroup(cg: &Path, argv: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "echo $$ > {}/cgroup.procs && exec {argv}",
        cg.display()
    ));
    c
}

#[test]
fn events_name_pods_and_selectors_match_kubernetes_terms() {
    require_root();
    let dir = scratch("kube");
    let root = cgroup2_root();
    let client_cg = root.join(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{CHECKOUT_UID}.slice/cri-containerd-{ID}.scope"
    ));
    let server_cg = root.join(format!("kubepods/besteffort/pod{DB_UID}/{ID}"));
    for cg in [&client_cg, &server_cg] {
        std::fs::create_dir_all(cg).expect("create kubelet-style cgroup");
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../observer/tests/fixtures/kube/");
    let api_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kube_api.py");
    let mut api = Proc::spawn(
        Command::new("python3")
            .arg(&api_script)
            .arg(API_PORT.to_string())
            .arg(format!("{}/", fixtures.display()))
            .arg(format!("shop/db=127.0.0.1:{WEB_PORT}")),
        "stand-in API server",
    );
    wait_tcp(&format!("127.0.0.1:{API_PORT}"), None);
    let mut web = Proc::spawn(
        &mut in_cgroup(
            &server_cg,
            &format!("python3 -m http.server {WEB_PORT} --bind 127.0.0.1"),
        ),
        "python server in db-0's cgroup",
    );
    wait_tcp(&format!("127.0.0.1:{WEB_PORT}"), None);
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: t, cluster: {{server: \"http://127.0.0.1:{API_PORT}\"}}}}]\n\
             users: [{{name: t, user: {{}}}}]\ncontexts: [{{name: t, context: {{cluster: t, user: t}}}}]\ncurrent-context: t\n"
        ),
    )
    .expect("kubeconfig");
    let registry = dir.join("registry.yaml");
    std::fs::write(
        &registry,
        "teams:\n  - {id: payments, name: Payments}\napis:\n  - id: db-api\n    owner: payments\n    match: {service: shop/db}\napplications:\n  - id: checkout\n    team: payments\n    workload:\n      - namespace: shop\n        labels: {team: payments}\n",
    )
    .expect("registry");
    std::env::set_var("KUBECONFIG", &kubeconfig);
    // Ready only once the node's pods are listed.
    let obs = Observer::start(
        &dir,
        &[
            "--kubernetes",
            "--node-name",
            "node-a",
            "--ports",
            &WEB_PORT.to_string(),
            "--registry",
            &registry.display().to_string(),
            "--spool-dir",
            &dir.join("spool").display().to_string(),
        ],
    );
    assert_eq!(obs.metric("observer_kube_synced"), 1.0, "{}", obs.log());
    let status = in_cgroup(
        &client_cg,
        &format!("curl -s -o /dev/null http://127.0.0.1:{WEB_PORT}/"),
    )
    .status()
    .expect("curl in checkout's cgroup");
    assert!(status.success());
    let ndjson = obs.ndjson.clone();
    assert!(
        eventually(Duration::from_secs(10), || !on_port(
            &read_ndjson(&ndjson),
            WEB_PORT
        )
        .is_empty()),
        "no event"
    );
    let events = obs.stop();
    web.stop(Duration::from_secs(5));
    api.stop(Duration::from_secs(5));
    for cg in [&client_cg, &server_cg] {
        let _ = std::fs::remove_dir(cg);
    }
    let e = on_port(&events, WEB_PORT)
        .into_iter()
        .next()
        .expect("event");
    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
    assert_eq!(s("client_pod"), "checkout-7d9f8b6c5d-x2x9z", "{e}");
    assert_eq!(s("client_namespace"), "shop");
    assert_eq!(s("client_workload"), "Deployment/checkout");
    assert_eq!(
        e["client_labels"],
        serde_json::json!(["app=checkout", "team=payments"])
    );
    assert_eq!(s("server_pod"), "db-0");
    assert_eq!(s("server_workload"), "StatefulSet/db");
    assert_eq!(
        s("app_id"),
        "checkout",
        "selected by namespace and labels: {e}"
    );
    assert_eq!(s("attributed_by"), "workload");
    assert_eq!(
        s("api_id"),
        "db-api",
        "the server's address backs Service shop/db: {e}"
    );
}

/// The host's cgroup2 mount (hybrid hosts mount it at /sys/fs/cgroup/unified).
fn cgroup2_root() -> std::path::PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(Into::into))?
        })
        .expect("a cgroup2 mount")
}
