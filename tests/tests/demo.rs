//! End to end: `cargo xtask demo --scenario new-app,key-misuse,retry-storm` shows consumption by application in the
//! UI, the new application appears, the UI lists the scenarios' findings from the insights table (new_consumer for
//! the new application, key_outside_grant for the revoked key, retry_storm on the API whose calls fail and are
//! retried, diagnosed as neither a flood nor a client bug), and SIGINT (Ctrl-C) leaves no namespace, cgroup, process
//! or attached program behind.
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use observer_tests::*;
use serde_json::Value;

const UI: &str = "127.0.0.1:9465";
/// The demo's insights learn for 50 s (xtask/demo/insights.toml): a new application is new after that.
const SCENARIO_AFTER: &str = "60s";

/// Findings (kind, application, API) the UI lists for the last 15 minutes, read from the `insights` table.
fn ui_findings() -> Vec<(String, String, String)> {
    let body = http_get(UI, "/api/insights?range=15m")
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let s = |f: &str| i[f].as_str().unwrap_or_default().to_string();
            (s("kind"), s("app_id"), s("api_id"))
        })
        .collect()
}

/// Programs attached to the cgroup hierarchy's root, as bpftool lists them.
fn attached() -> String {
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .find(|p| std::path::Path::new(p).join("cgroup.procs").exists())
        .unwrap();
    let out = Command::new("bpftool")
        .args(["cgroup", "show", root])
        .output()
        .expect("bpftool");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn world_processes() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains("demo/world.py") || (cmd.contains("observer") && cmd.contains(UI)) {
                out.push(cmd);
            }
        }
    }
    out
}

#[test]
fn demo_shows_consumption_and_ctrl_c_removes_everything() {
    require_root();
    let xtask = std::env::var_os("OBSERVER_XTASK")
        .map(PathBuf::from)
        .expect("OBSERVER_XTASK: run with `cargo xtask test`");
    let before = attached();
    let dir = scratch("demo");
    let log = std::fs::File::create(dir.join("xtask.log")).unwrap();
    let mut demo = Command::new(&xtask)
        .args([
            "demo",
            "--scenario",
            "new-app,key-misuse,retry-storm",
            "--scenario-after",
            SCENARIO_AFTER,
            "--bin",
        ])
        .arg(observer_bin())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start cargo xtask demo");

    // Within two minutes the overview shows consumption by application, and the scenario's new application.
    let mut overview = Value::Null;
    let shown = eventually(Duration::from_secs(120), || {
        overview = http_get(UI, "/api/overview?range=15m")
            .and_then(|(s, body)| {
                (s == 200)
                    .then(|| serde_json::from_str(&body).ok())
                    .flatten()
            })
            .unwrap_or(Value::Null);
        let lines = overview["consumption"]["lines"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let apps: Vec<String> = lines
            .iter()
            .filter_map(|l| l["label"].as_str().map(str::to_string))
            .collect();
        let new = overview["new_apps"].as_array().cloned().unwrap_or_default();
        ["Web Shop", "Checkout v2", "Billing Batch", "Inventory Sync"]
            .iter()
            .all(|a| apps.iter().any(|l| l.ends_with(a)))
            && new.iter().any(|n| n["app_id"] == "partner-portal")
    });
    // The scenarios' findings, written by the agent to the insights table and listed by the UI: per-event kinds,
    // raised as soon as their traffic is seen; the retry storm after two minutes of retries (the demo's short
    // error history and sustain time, xtask/demo/insights.toml).
    let mut findings = Vec::new();
    let has = |findings: &[(String, String, String)], kind: &str, app: &str, api: &str| {
        findings.iter().any(|(k, a, p)| {
            k == kind && (app.is_empty() || a == app) && (api.is_empty() || p == api)
        })
    };
    let found = shown
        && eventually(Duration::from_secs(240), || {
            findings = ui_findings();
            has(&findings, "new_consumer", "partner-portal", "")
                && has(&findings, "key_outside_grant", "ci-pipeline", "")
                && has(&findings, "retry_storm", "", "orders-api")
        });
    let log_text = std::fs::read_to_string(dir.join("xtask.log")).unwrap_or_default();
    if !found {
        // SAFETY: kill(2) on the child we spawned.
        unsafe { libc_kill(demo.id() as i32, 2) };
        let _ = demo.wait();
        assert!(
            shown,
            "the UI did not show the demo's consumption: {overview:#}\n{log_text}"
        );
        panic!("the scenarios' findings were not raised: {findings:#?}\n{log_text}");
    }
    for wrong in ["flood", "client_bug"] {
        assert!(
            !has(&findings, wrong, "", "orders-api"),
            "the retry storm diagnosed as {wrong}: {findings:#?}"
        );
    }
    assert!(
        log_text.contains("http://127.0.0.1:9465/"),
        "the demo prints the UI's address:\n{log_text}"
    );

    // Ctrl-C.
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc_kill(demo.id() as i32, 2) };
    let mut status = None;
    let stopped = eventually(Duration::from_secs(90), || {
        status = demo.try_wait().unwrap();
        status.is_some()
    });
    assert!(stopped, "the demo did not stop after SIGINT");
    assert!(status.unwrap().success(), "demo exit: {status:?}");
    for ns in ["uidemo-s", "uidemo-c"] {
        assert!(
            !std::path::Path::new("/run/netns").join(ns).exists(),
            "namespace {ns} left behind"
        );
    }
    for root in ["/sys/fs/cgroup/unified/uidemo", "/sys/fs/cgroup/uidemo"] {
        assert!(
            !std::path::Path::new(root).exists(),
            "cgroup {root} left behind"
        );
    }
    assert_eq!(
        world_processes(),
        Vec::<String>::new(),
        "processes left behind"
    );
    assert_eq!(attached(), before, "programs left attached");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
