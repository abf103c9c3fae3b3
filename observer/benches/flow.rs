//! Criterion benchmark of the per-exchange userspace path: a keep-alive HTTP/1.1 request and its response, as the
//! kernel hands them over (two ring-buffer data records), through reassembly and pairing, then enrichment and NDJSON
//! encoding (or RowBinary, as the ClickHouse sink encodes). Its time per exchange is what the agent's CPU costs per event (see BENCHMARKS.md).
#![forbid(unsafe_code)]
mod common;
#[path = "common/loopback.rs"]
mod loopback;
use loopback::Loopback;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use observer::enrich;
use observer::event::{Exchanges, Timestamp};
use observer::origin::{OriginConfig, Tracker};
use observer::registry::Snapshot;

/// One exchange as the agent runs it with `--origin`: flow (head notes), enrichment, the origin tracker; what it
/// decided is left in `events`.
fn through_origin(
    conn: &mut Loopback,
    out: &mut Exchanges,
    snap: &Snapshot,
    tracker: &mut Tracker,
    now: &mut Timestamp,
    events: &mut Vec<observer::event::Event>,
) {
    conn.exchange(out);
    now.0 += 1;
    for s in conn.started.drain(..) {
        tracker.started(&s, *now);
    }
    let mut ex = out.drain().next().expect("exchange");
    enrich::enrich(snap, &mut ex);
    tracker.complete(ex, *now);
    tracker.tick(*now);
    tracker.drain(events);
}

fn bench(c: &mut Criterion) {
    let snap = loopback::registry();

    let mut conn = Loopback::new(1, false);
    let mut out = Exchanges::default();
    conn.exchange(&mut out);
    assert_eq!(
        out.len(),
        1,
        "one request and one response make one exchange"
    );
    out.clear();

    let mut g = c.benchmark_group("per_exchange");
    g.throughput(Throughput::Elements(1));
    g.bench_function("flow_reassemble_parse_pair", |b| {
        b.iter(|| {
            conn.exchange(&mut out);
            black_box(out.drain().next());
        })
    });
    let mut line = Vec::with_capacity(2048);
    g.bench_function("flow_enrich_ndjson", |b| {
        b.iter(|| {
            conn.exchange(&mut out);
            let mut ex = out.drain().next().expect("exchange");
            enrich::enrich(&snap, &mut ex);
            line.clear();
            observer::sink::ndjson::write_event(&ex.event, &mut line);
            line.push(b'\n');
            black_box(&line);
        })
    });
    // The agent's default path with the ClickHouse sink: the row encoded into the insert buffer.
    let mut rows = Vec::with_capacity(1 << 20);
    g.bench_function("flow_enrich_rowbinary", |b| {
        b.iter(|| {
            conn.exchange(&mut out);
            let mut ex = out.drain().next().expect("exchange");
            enrich::enrich(&snap, &mut ex);
            if rows.len() > (1 << 20) - 4096 {
                rows.clear();
            }
            observer::sink::clickhouse::rowbinary::encode_event(&mut rows, &ex.event);
            black_box(&rows);
        })
    });
    // As the agent runs: heads noted, then every exchange through the origin tracker after enrichment.
    let mut conn = Loopback::new(1, true);
    let mut tracker = Tracker::new(OriginConfig::default());
    let mut events = Vec::new();
    let mut now = Timestamp(1_764_000_000_000_000);
    g.bench_function("flow_notes_enrich_origin", |b| {
        b.iter(|| {
            through_origin(
                &mut conn,
                &mut out,
                &snap,
                &mut tracker,
                &mut now,
                &mut events,
            );
            black_box(events.pop());
        })
    });
    let mut conn = Loopback::new(1, true);
    // The agent's whole path with --origin: flow_enrich_ndjson plus head notes and the tracker, so the two differ
    // only by what origin costs.
    g.bench_function("flow_notes_enrich_origin_ndjson", |b| {
        b.iter(|| {
            through_origin(
                &mut conn,
                &mut out,
                &snap,
                &mut tracker,
                &mut now,
                &mut events,
            );
            let ev = events.pop().expect("decided at once");
            line.clear();
            observer::sink::ndjson::write_event(&ev, &mut line);
            line.push(b'\n');
            black_box(&line);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
