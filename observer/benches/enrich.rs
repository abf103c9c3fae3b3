//! Criterion benchmark of per-event enrichment against a registry of realistic size (50 APIs x 30 routes,
//! 200 applications, 2,000 keys), and of the same exchange against registries of 10 to 1,000 APIs (`registry_size`):
//! its cost should not grow with the registry.
#![forbid(unsafe_code)]
use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};

use observer::enrich;
use observer::event::{self, Event, Exchange};
use observer::registry::{self, load_str, KeySecret, Snapshot};

const APIS: usize = 50;
const ROUTES: usize = 30;
const APPS: usize = 200;
const KEYS: usize = 2_000;

fn raw_key(i: usize) -> String {
    format!("sk_live_bench_{i:06}_q8Zr41xT")
}

fn registry_yaml(secret: &KeySecret, apis: usize) -> String {
    let mut y =
        String::from("version: 1\nteams:\n  - {id: team, line_of_business: Retail}\napis:\n");
    for a in 0..apis {
        let auth = match a % 3 {
            0 => "api_key",
            1 => "bearer",
            _ => "basic",
        };
        writeln!(y, "  - id: api-{a}\n    owner: team\n    match: {{hosts: [api-{a}.example.com], base_path: /v1/r{a}}}\n    auth: {auth}\n    routes:").unwrap();
        for r in 0..ROUTES {
            writeln!(y, "      - GET /v1/r{a}/res{r}/{{id}}\n      - POST /v1/r{a}/res{r}/{{id}}/actions/{{action}}").unwrap();
        }
    }
    y.push_str("applications:\n");
    for p in 0..APPS {
        writeln!(y, "  - id: app-{p}\n    team: team\n    workload: {{comm: worker-{p}, cgroup: \"/kubepods.slice/**/app-{p}-*\"}}").unwrap();
    }
    y.push_str("keys:\n");
    for k in 0..KEYS {
        writeln!(
            y,
            "  - id: key-{k}\n    application: app-{}\n    fingerprint: {}\n    grants:\n      - {{api: api-{}, granted_by: bench, granted_at: 2026-01-01}}",
            k % APPS,
            secret.fingerprint_hex(raw_key(k).as_bytes()),
            k % apis
        )
        .unwrap();
    }
    y
}

fn exchange(host: &str, path: &str, headers: &[(&str, &str)]) -> Exchange {
    Exchange {
        event: Event {
            ts: registry::parse_date("2026-06-01").expect("date"),
            method: "GET".into(),
            host: host.into(),
            path: path.into(),
            dst_port: 443,
            client_comm: "worker-199".into(),
            client_cgroup: "/kubepods.slice/burstable/pod-x/app-199-abc".into(),
            ..Event::default()
        },
        request: event::RequestExtras {
            headers: headers.iter().copied().collect(),
            raw_query: "page=2&size=50".into(),
            ..event::RequestExtras::default()
        },
    }
}

fn snapshot(secret: &KeySecret, apis: usize) -> Snapshot {
    let loaded = load_str(&registry_yaml(secret, apis), Path::new("."), secret)
        .unwrap_or_else(|p| panic!("bench registry invalid: {p:?}"));
    Snapshot::build(loaded.registry, secret.clone(), 0, None, None)
}

fn bench(c: &mut Criterion) {
    let secret = KeySecret::from_bytes(b"bench-secret-0123456789abcdef");
    let snap = snapshot(&secret, APIS);
    let key = raw_key(1_248); // granted api-48 (api_key auth)
    let base = [
        ("Host", "api-48.example.com"),
        ("User-Agent", "bench/1.0"),
        ("Accept", "application/json"),
        ("X-Request-Id", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ];
    let mut with_key: Vec<(&str, &str)> = base.to_vec();
    with_key.push(("X-Api-Key", &key));

    let mut g = c.benchmark_group("enrich");
    let mut ex = exchange(
        "api-48.example.com",
        "/v1/r48/res29/123456/actions/refund",
        &with_key,
    );
    g.bench_function("key_valid_route_matched", |b| {
        b.iter(|| enrich::enrich(black_box(&snap), black_box(&mut ex)))
    });
    assert_eq!(
        ex.event.key_state,
        event::KeyState::Valid,
        "bench precondition"
    );

    let mut ex = exchange(
        "api-48.example.com",
        "/v1/r48/unregistered/3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        &base,
    );
    g.bench_function("no_key_workload_inferred_route", |b| {
        b.iter(|| enrich::enrich(black_box(&snap), black_box(&mut ex)))
    });
    assert_eq!(
        ex.event.attributed_by,
        event::AttributedBy::Workload,
        "bench precondition"
    );

    let mut unknown: Vec<(&str, &str)> = base.to_vec();
    unknown.push(("X-Api-Key", "sk_live_not_in_registry_000000"));
    let mut ex = exchange("unknown.example.net", "/health", &unknown);
    g.bench_function("unknown_key_no_api", |b| {
        b.iter(|| enrich::enrich(black_box(&snap), black_box(&mut ex)))
    });
    assert_eq!(
        ex.event.key_state,
        event::KeyState::Unknown,
        "bench precondition"
    );
    // No key, the client a pod named by namespace and workload (200 applications selected so, as on Kubernetes,
    // where the process name tells little).
    let k8s_yaml = registry_yaml(&secret, APIS).replace(
        "workload: {comm: worker-",
        "workload: {namespace: team-0, workload: Deployment/worker-",
    );
    let k8s_yaml = k8s_yaml.replace(", cgroup: \"/kubepods.slice/**/app-", "} # app-");
    let k8s = Snapshot::build(
        load_str(&k8s_yaml, Path::new("."), &secret)
            .unwrap_or_else(|p| panic!("bench registry invalid: {p:?}"))
            .registry,
        secret.clone(),
        0,
        None,
        None,
    );
    let pod = observer::kube::PodMeta {
        namespace: "team-0".into(),
        workload: "Deployment/worker-199".into(),
        ..Default::default()
    };
    let mut ex = exchange(
        "api-48.example.com",
        "/v1/r48/unregistered/3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        &base,
    );
    let kube = enrich::KubeEnds {
        client: Some(&pod),
        server_services: &[],
    };
    g.bench_function("no_key_kubernetes_workload", |b| {
        b.iter(|| enrich::enrich_with(black_box(&k8s), &mut ex.event, &ex.request, kube))
    });
    assert_eq!(ex.event.app_id, "app-199", "bench precondition");

    // The request_hash part of every enrichment above, alone (a 35-byte target, a 14-byte query, a 64-byte body).
    let secret = snap.secret().clone();
    let body = [b'x'; 64];
    g.bench_function("request_hash", |b| {
        b.iter(|| {
            enrich::request_hash(
                black_box(&secret),
                black_box("POST"),
                black_box("api-48.example.com"),
                black_box("/v1/r48/res29/123456/actions/refund"),
                black_box("page=2&size=50"),
                black_box(&body),
            )
        })
    });
    g.finish();

    // One exchange (a valid key, a registered route of the last API: `GET /v1/r{a}/res29/{id}`) against ever larger
    // registries, all APIs on hosts of their own and 60 routes each, as an API gateway's import makes them.
    let mut g = c.benchmark_group("registry_size");
    for apis in [10, 100, 1_000] {
        let snap = snapshot(&secret, apis);
        let last = apis - 1;
        // Key k is granted API k % apis, so the last key the last API (which takes `api_key`: its index is 0 mod 3).
        let key = raw_key(KEYS - 1);
        let host = format!("api-{last}.example.com");
        let mut headers = base.to_vec();
        headers[0].1 = &host;
        headers.push(("X-Api-Key", &key));
        let path = format!("/v1/r{last}/res29/123456");
        let mut ex = exchange(&host, &path, &headers);
        g.bench_function(format!("apis_{apis}"), |b| {
            b.iter(|| enrich::enrich(black_box(&snap), black_box(&mut ex)))
        });
        assert_eq!(
            ex.event.route,
            format!("/v1/r{last}/res29/{{id}}"),
            "bench precondition"
        );
        assert_eq!(ex.event.api_id, format!("api-{last}"), "bench precondition");
        assert_eq!(
            ex.event.key_state,
            event::KeyState::Valid,
            "bench precondition"
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
