//! Criterion benchmark of the insights engine: events per second through the detectors from agent events, and
//! the replay path (read and decode NDJSON lines of the sink's format as `insights replay` does, then the
//! detectors; and the same with serde's derived decoder, the replay's fallback). Traffic is the scenario
//! generator's (seed 1), starting with its first baseline day.
#![forbid(unsafe_code)]
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use observer::event::Event;
use observer::insights::scenarios::Generated;
use observer::insights::{decode, Config, Engine, Input};

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
    // What `observer insights replay` does per line: read it from a buffered file, decode, detect.
    let file: Vec<u8> = lines
        .iter()
        .flat_map(|l| [l.as_bytes(), b"\n"])
        .flatten()
        .copied()
        .collect();
    group.bench_function("replay_ndjson", |b| {
        b.iter_batched(
            || Engine::new(Config::default(), registry.clone()),
            |mut engine| {
                let n = decode::replay(
                    &mut engine,
                    &file[..],
                    |_, _| {},
                    |f| {
                        black_box(f);
                        Ok(())
                    },
                )
                .expect("in memory");
                assert_eq!(n.bad, 0);
                black_box(engine.open_findings().count())
            },
            BatchSize::PerIteration,
        )
    });
    // The same lines through serde's derived decoder alone (the replay's fallback, and its decoder before the
    // scanner): the before/after of the same run.
    group.bench_function("replay_ndjson_serde", |b| {
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
