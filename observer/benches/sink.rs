//! Criterion benchmark of the sinks' per-event encoders: one enriched event as a ClickHouse RowBinary row and as
//! an NDJSON line, the work each sink thread does per exchange.
#![forbid(unsafe_code)]
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use observer::event::{AttributedBy, Event, KeyState, Side, Timestamp};
use observer::sink::clickhouse::rowbinary::encode_event;
use observer::sink::ndjson::write_event;

fn event() -> Event {
    Event {
        ts: Timestamp::parse_rfc3339("2026-06-01T12:00:01.123456Z").expect("time"),
        duration_us: 1_234,
        side: Side::Both,
        method: "GET".into(),
        host: "api.example.com".into(),
        path: "/v1/orders/12345".into(),
        query_keys: vec!["page".into(), "size".into()],
        status: 200,
        req_bytes: 412,
        resp_bytes: 2_048,
        src_ip: "10.1.2.3".parse().expect("ip"),
        src_port: 40_000,
        dst_ip: "10.1.2.4".parse().expect("ip"),
        dst_port: 8080,
        client_pid: 1234,
        client_comm: "curl".into(),
        client_cgroup: "/kubepods.slice/burstable/pod-x/app-199-abc".into(),
        server_pid: 99,
        server_comm: "nginx".into(),
        server_cgroup: "/system.slice/nginx.service".into(),
        user_agent: "bench/1.0".into(),
        request_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        truncated: false,
        conn_id: 1 << 40,
        incomplete: false,
        framing_anomaly: Vec::new(),
        api_id: "orders-api".into(),
        api_name: "Orders API".into(),
        api_owner: "shop".into(),
        route: "/v1/orders/{id}".into(),
        app_id: "app-199".into(),
        app_name: "App 199".into(),
        app_team: "shop".into(),
        line_of_business: "Retail".into(),
        key_fingerprint: "ab".repeat(32).into(),
        key_suffix: "3f9a".into(),
        key_state: KeyState::Valid,
        attributed_by: AttributedBy::Key,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let e = event();
    let mut buf = Vec::with_capacity(4096);
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("rowbinary", |b| {
        b.iter(|| {
            buf.clear();
            encode_event(&mut buf, black_box(&e));
            black_box(&buf);
        })
    });
    g.bench_function("ndjson", |b| {
        b.iter(|| {
            buf.clear();
            write_event(black_box(&e), &mut buf);
            buf.push(b'\n');
            black_box(&buf);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
