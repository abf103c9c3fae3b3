//! Agent throughput without the kernel: ring-buffer records of keep-alive loopback exchanges replayed through the
//! agent's capture path (flow reassembly and pairing, enrichment, events moved into a batch) and the ClickHouse
//! sink's RowBinary encoding, a fixed number of exchanges on one core. Prints events per second of this thread's
//! CPU time and the heap allocations per event (a counting wrapper around mimalloc, the agent's allocator).
//!
//! `cargo bench -p observer --bench replay -- [EVENTS] [--sink rowbinary|ndjson|none] [--conns N]`
//! (defaults: 2,000,000 events, rowbinary, 50 connections as `wrk -c50`). The event count is fixed so that
//! `perf stat -e instructions:u` over two runs of different counts gives instructions per event without the
//! set-up; see BENCHMARKS.md.
mod common;
#[path = "common/loopback.rs"]
mod loopback;

use std::alloc::{GlobalAlloc, Layout};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use observer::enrich;
use observer::event::{Event, Exchanges};
use observer::sink::clickhouse::rowbinary::encode_event;
use observer::sink::ndjson::write_event;

/// mimalloc, counting allocations (reallocations included) and the bytes they asked for.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to mimalloc with the caller's layout and pointer unchanged; the counting has no
// effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours, passed through.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by mimalloc with `layout` (every allocation goes through `alloc` above).
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Clone, Copy, PartialEq)]
enum Sink {
    RowBinary,
    Ndjson,
    None,
}

/// Exchanges enriched and handed to the sink together, as the capture loop does per drain.
const BATCH: usize = 256;

/// This thread's CPU time. Through libc rather than rustix: rustix's own vDSO lookup crashes under valgrind, and
/// `valgrind --tool=callgrind` over two event counts gives instructions per event on a machine without hardware
/// counters (see BENCHMARKS.md).
fn thread_cpu_s() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn main() {
    let mut events = 2_000_000u64;
    let mut sink = Sink::RowBinary;
    let mut conns = 50usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--sink" => {
                sink = match args.next().as_deref() {
                    Some("rowbinary") => Sink::RowBinary,
                    Some("ndjson") => Sink::Ndjson,
                    Some("none") => Sink::None,
                    other => panic!("--sink rowbinary|ndjson|none, not {other:?}"),
                }
            }
            "--conns" => conns = args.next().and_then(|n| n.parse().ok()).expect("--conns N"),
            // `cargo bench` passes `--bench` (and `cargo xtask bench` criterion's `--noplot`): other flags are not ours.
            f if f.starts_with("--") => {}
            n => {
                events = n
                    .parse()
                    .unwrap_or_else(|_| panic!("event count, not {n:?}"))
            }
        }
    }
    let snap = loopback::registry();
    let mut lo = loopback::Loopback::new(conns, false);
    let mut out = Exchanges::default();
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut run = |n: u64| {
        let mut done = 0;
        while done < n {
            let k = BATCH.min((n - done) as usize);
            for _ in 0..k {
                lo.exchange(&mut out);
            }
            // As the agent does: enriched where they lie, the events taken as the batch, encoded by reference
            // and dropped with the batch (on a sink's thread in the agent).
            for (ev, req) in out.iter_mut() {
                enrich::enrich_with(&snap, ev, req, enrich::KubeEnds::default());
            }
            out.move_events_into(&mut batch);
            done += batch.len() as u64;
            for ev in &batch {
                if buf.len() > (1 << 20) - 4096 {
                    buf.clear();
                }
                match sink {
                    Sink::RowBinary => encode_event(&mut buf, ev),
                    Sink::Ndjson => {
                        write_event(ev, &mut buf);
                        buf.push(b'\n');
                    }
                    Sink::None => {}
                }
                black_box(&buf);
            }
            batch.clear();
        }
    };
    // Warm-up: tables, buffers and the allocator's pages reach their steady state.
    run(20_000);
    let (allocs, bytes) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let cpu = thread_cpu_s();
    run(events);
    let cpu = thread_cpu_s() - cpu;
    let per = |x: u64| x as f64 / events as f64;
    println!(
        "replay: {events} events over {conns} connections, sink {}: {:.0} events/s/core ({:.3} µs/event), \
         {:.2} allocations/event ({:.0} bytes/event); Event is {} bytes",
        match sink {
            Sink::RowBinary => "rowbinary",
            Sink::Ndjson => "ndjson",
            Sink::None => "none",
        },
        events as f64 / cpu,
        cpu * 1e6 / events as f64,
        per(ALLOCS.load(Ordering::Relaxed) - allocs),
        per(BYTES.load(Ordering::Relaxed) - bytes),
        std::mem::size_of::<Event>(),
    );
}
