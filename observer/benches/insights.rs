//! Criterion benchmark of the insights engine: events per second through the detectors from agent events, and
//! the replay path (parse an NDJSON line of the sink's format, then the detectors). Traffic is the scenario
//! generator's (seed 1), starting with its first baseline day.
#![forbid(unsafe_code)]
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use observer::event::Event;
use observer::insights::scenarios::Generated;
use observer::insights::{Config, Engine, Input};

const EVENTS: usize = 300_000;

fn bench(c: &mut Criterion) {
    let mut g = Generated::new(1);
    let registry = g.registry.clone();
    let mut events: Vec<Event> = Vec::with_capacity(EVENTS);
    while events.len() < EVENTS {
        let Some(batch) = g.traffic.next_minute() else {
            break;
        };
        events.extend(batch.iter().cloned());
    }
    let mut lines = Vec::new();
    for e in &events {
        let mut b = Vec::new();
        observer::sink::ndjson::write_event(e, &mut b);
        lines.push(String::from_utf8(b).expect("utf-8"));
    }
    let mut group = c.benchmark_group("insights");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("engine_from_events", |b| {
        b.iter_batched(
            || Engine::new(Config::default(), registry.clone()),
            |mut engine| {
                for e in &events {
                    engine.ingest(&Input::from_event(e));
                }
                black_box(engine.open_findings().count())
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("replay_ndjson", |b| {
        b.iter_batched(
            || Engine::new(Config::default(), registry.clone()),
            |mut engine| {
                for l in &lines {
                    engine.ingest(&Input::from_json(l).expect("valid line"));
                }
                black_box(engine.open_findings().count())
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
