//! Least privilege, end to end: the agent run as uid 65534 with exactly CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN as
//! ambient capabilities (README, Privileges) captures and writes what it does as root (NDJSON, findings, insights
//! state, the ClickHouse spool); without any one of them it refuses to start with an error naming it.
#![forbid(unsafe_code)]
use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    process::Command,
    time::Duration,
};

use observer_tests::*;
use serde_json::Value;

/// The capabilities README's Privileges section lists, as setpriv spells them.
const NEEDED: [(&str, &str); 3] = [
    ("bpf", "CAP_BPF"),
    ("perfmon", "CAP_PERFMON"),
    ("net_admin", "CAP_NET_ADMIN"),
];
const NOBODY: u32 = 65534;

/// `setpriv` as uid/gid 65534 with no groups and exactly `caps` inheritable, ambient and in the bounding set.
fn as_nobody(caps: &[&str]) -> Vec<String> {
    let set = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        "setpriv".into(),
        format!("--reuid={NOBODY}"),
        format!("--regid={NOBODY}"),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--".into(),
    ]
}

/// A directory uid 65534 owns (the scratch parent is root's).
fn owned_by_nobody(dir: &Path) {
    sh(Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(dir));
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
}

fn registry_yaml(port: u16, fp: &str) -> String {
    format!(
        r#"version: 1
teams:
  - {{id: shop, name: Shop, line_of_business: Retail, alert_contact: shop@example.com}}
apis:
  - id: items-api
    name: Items API
    owner: shop
    match: {{ports: [{port}]}}
    auth: {{type: api_key, headers: [X-Api-Key], query: api_key}}
    routes: ["GET /items/{{id}}", "POST /items"]
applications:
  - {{id: storefront, name: Storefront, team: shop, created_by: alice, created_at: 2025-01-01}}
keys:
  - id: storefront-key
    application: storefront
    fingerprint: {fp}
    granted_by: alice
    granted_at: 2025-01-01
    apis: [items-api]
"#
    )
}

/// The same mix of exchanges on every call: keyed (header and query), unknown-keyed, keyless, a POST and a 404-ish
/// miss; returns how many were sent.
fn traffic(port: u16, key: &str) -> usize {
    let base = format!("http://127.0.0.1:{port}");
    let mut n = 0;
    for id in [1, 2, 3] {
        curl(
            None,
            &[
                "-o",
                "/dev/null",
                "-H",
                &format!("X-Api-Key: {key}"),
                &format!("{base}/items/{id}"),
            ],
        );
        n += 1;
    }
    for url in [
        format!("{base}/items/4?api_key={key}"),
        format!("{base}/items/5"),
        format!("{base}/nothing"),
    ] {
        curl(None, &["-o", "/dev/null", &url]);
        n += 1;
    }
    curl(
        None,
        &[
            "-o",
            "/dev/null",
            "-H",
            "X-Api-Key: not-a-registered-key-77",
            "--data",
            "{}",
            &format!("{base}/items"),
        ],
    );
    n + 1
}

/// What must be equal between the root and the unprivileged run: everything but times, pids, ports and ids.
fn projection(events: &[Value]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in events {
        let key = [
            "method",
            "path",
            "query_keys",
            "status",
            "side",
            "req_bytes",
            "resp_bytes",
            "client_comm",
            "server_comm",
            "api_id",
            "route",
            "app_id",
            "key_state",
            "key_fingerprint",
            "key_suffix",
            "attributed_by",
        ]
        .map(|f| e[f].to_string())
        .join(" ");
        *out.entry(key).or_default() += 1;
    }
    out
}

/// Runs the agent (as root when `wrapper` is empty) over the same traffic; returns its events on `port` and the
/// directory it wrote to.
fn run_once(
    name: &str,
    wrapper: Vec<String>,
    port: u16,
    key: &str,
    secret: &Path,
) -> (Vec<Value>, std::path::PathBuf) {
    let dir = scratch(name);
    std::fs::copy(secret, dir.join("key-secret")).expect("key secret");
    let reg = dir.join("registry.yaml");
    let fp = fingerprint(&dir, key);
    std::fs::write(&reg, registry_yaml(port, &fp)).expect("registry");
    owned_by_nobody(&dir);
    let spool = dir.join("spool");
    let state = dir.join("insights-state");
    let obs = Observer::launch(
        &Launch {
            wrapper,
            ..Launch::default()
        },
        &dir,
        &[
            "--ports",
            &port.to_string(),
            "--registry",
            &reg.display().to_string(),
            "--insights",
            "--state-dir",
            &state.display().to_string(),
            // Nothing listens there: every batch goes to the spool, which is what is checked.
            "--sink",
            "clickhouse",
            "--clickhouse-url",
            "http://127.0.0.1:9",
            "--spool-dir",
            &spool.display().to_string(),
        ],
    );
    let sent = traffic(port, key);
    let spooled = eventually(Duration::from_secs(20), || {
        std::fs::read_dir(&spool)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|f| f.file_name().to_string_lossy().ends_with(".batch"))
            })
            .unwrap_or(false)
    });
    assert!(
        spooled,
        "{name}: no batch spooled to {}; log:\n{}",
        spool.display(),
        obs.log()
    );
    let log = obs.log();
    let events = on_port(&obs.stop(), port);
    assert_eq!(
        events.len(),
        sent,
        "{name}: every exchange once:\n{}\nlog:\n{log}",
        brief(&events)
    );
    (events, dir)
}

#[test]
fn unprivileged_user_with_the_three_capabilities_captures_as_root_does() {
    require_root();
    let port = 18611;
    let key = "sk_live_privsec_4c1e9b07";
    let base = scratch("privileges-secret");
    // The key secret both runs share, so fingerprints agree; `registry fingerprint` creates it (mode 0600).
    fingerprint(&base, key);
    let secret = base.join("key-secret");
    let _server = python_server(&base, None, "127.0.0.1", port);

    let (as_root, _) = run_once("privileges-root", Vec::new(), port, key, &secret);
    let caps: Vec<&str> = NEEDED.iter().map(|(c, _)| *c).collect();
    let (as_nobody_events, dir) =
        run_once("privileges-nobody", as_nobody(&caps), port, key, &secret);

    assert_eq!(
        projection(&as_nobody_events),
        projection(&as_root),
        "uid 65534 with {caps:?} reports the same exchanges as root:\nroot:\n{}\nnobody:\n{}",
        brief(&as_root),
        brief(&as_nobody_events)
    );
    assert!(
        as_nobody_events
            .iter()
            .any(|e| e["key_state"] == "valid" && e["app_id"] == "storefront"),
        "enriched as root is: {}",
        brief(&as_nobody_events)
    );
    // Everything it wrote is uid 65534's: the NDJSON sink, the findings next to it, the spool, the insights state.
    let findings = dir.join("findings.ndjson");
    assert!(
        !read_ndjson(&findings).is_empty(),
        "the unknown key raised a finding in {}",
        findings.display()
    );
    for path in [
        dir.join("events.ndjson"),
        findings,
        dir.join("spool"),
        dir.join("insights-state"),
    ] {
        let meta = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{} was not written: {e}", path.display()));
        assert_eq!(meta.uid(), NOBODY, "{} owned by uid 65534", path.display());
    }
    CaseReport {
        case: format!("uid 65534 with exactly {}", caps.join(", ")),
        checked: "captures and enriches the same exchanges as root, field for field; writes its NDJSON, findings, \
                  spool and insights state as that user"
            .into(),
        sent: as_root.len() as u64,
        stored: as_nobody_events.len() as u64,
        counted: Default::default(),
    }
    .passed("privileges");
}

#[test]
fn each_missing_capability_is_named() {
    require_root();
    let dir = scratch("privileges-missing");
    fingerprint(&dir, "k");
    owned_by_nobody(&dir);
    for (drop, name) in NEEDED {
        let keep: Vec<&str> = NEEDED
            .iter()
            .map(|(c, _)| *c)
            .filter(|c| *c != drop)
            .collect();
        let wrapper = as_nobody(&keep);
        let out = Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg(observer_bin())
            .args([
                "run",
                "--for",
                "1s",
                "--sink",
                "stdout",
                "--key-secret-file",
            ])
            .arg(dir.join("key-secret"))
            .output()
            .expect("running observer");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "without {name} the agent must refuse to start:\n{stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "observer lacks {name} in its effective capabilities"
            )),
            "the error names {name}:\n{stderr}"
        );
    }
    CaseReport {
        case: "one needed capability missing".into(),
        checked:
            "the agent refuses to start and names the missing capability, for each of the three"
                .into(),
        sent: 0,
        stored: 0,
        counted: Default::default(),
    }
    .passed("privileges");
}
