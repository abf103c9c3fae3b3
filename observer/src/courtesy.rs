//! Keeps each of the agent's bursts of work short, so that the servers it observes get their core back soon.
//!
//! The agent works in bursts: a drain of the ring, a hand-over of a few thousand events to a sink, a ClickHouse
//! insert. On a node whose cores the observed servers keep busy, a burst runs in their place: the scheduler lets a
//! running thread keep its core for its time slice (milliseconds; the tick here is 4 ms at HZ 250), and the
//! requests that arrive meanwhile wait. That wait is the agent's share of the servers' tail latency. A [`Courtesy`]
//! gives the core back ([`std::thread::yield_now`], `sched_yield(2)`) once a burst has lasted [`Courtesy::BUDGET`],
//! between two pieces of work that can be split there; on an idle core the call returns at once.
//!
//! Measured on the 2-vCPU VM (loopback nginx saturated by `wrk -t1 -c50`, NDJSON sink, 9 alternating rounds;
//! BENCHMARKS.md, stop 22): the NDJSON sink's thread ran 1.1 ms at a time on average, up to 5.9 ms, and the p99
//! latency was 2.6-3.6 ms against 0.7-1.3 ms without the agent. Written in pieces of 256 lines with the core offered
//! back between them, the p99 was 0.9-1.4 ms, with 8% more requests served. The smaller writes also cut the agent's
//! CPU per event from 1.92 to 1.57 µs: a 2 MB buffer, encoded then copied into the page cache, outgrew the caches.
use std::time::{Duration, Instant};

/// Counts how long the current burst of work has lasted, and ends it at [`Courtesy::BUDGET`].
#[derive(Debug)]
pub struct Courtesy {
    since: Instant,
}

impl Default for Courtesy {
    fn default() -> Self {
        Courtesy::new()
    }
}

impl Courtesy {
    /// Longest burst before the core is offered back: about a fifth of the saturated server's own p99 on the VM
    /// above, and long enough that a thread busy all the time yields at most 5,000 times a second.
    pub const BUDGET: Duration = Duration::from_micros(200);

    pub fn new() -> Self {
        Courtesy {
            since: Instant::now(),
        }
    }

    /// Work starts (after a wait that gave the core away anyway): the burst is counted from now.
    pub fn begin(&mut self) {
        self.since = Instant::now();
    }

    /// Between two pieces of work: yields the core when the burst has lasted [`Courtesy::BUDGET`], and then counts
    /// a new burst.
    pub fn pause(&mut self) {
        self.pause_at(Instant::now());
    }

    /// `items` in pieces of `n`, with a [`Courtesy::pause`] before each: the shape of every batch consumer that
    /// uses this.
    pub fn pieces<'a, T>(
        &'a mut self,
        items: &'a [T],
        n: usize,
    ) -> impl Iterator<Item = &'a [T]> + 'a {
        items.chunks(n).inspect(move |_| self.pause())
    }

    /// [`Courtesy::pause`] at `now`; says whether it yielded (for the tests).
    fn pause_at(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.since) < Self::BUDGET {
            return false;
        }
        std::thread::yield_now();
        self.since = Instant::now();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_only_once_a_burst_has_lasted_the_budget() {
        let t0 = Instant::now();
        let mut c = Courtesy { since: t0 };
        assert!(!c.pause_at(t0));
        assert!(!c.pause_at(t0 + Courtesy::BUDGET / 2));
        assert!(c.pause_at(t0 + Courtesy::BUDGET));
        // A new burst is counted from the yield.
        assert!(c.since >= t0);
        let after = c.since;
        assert!(!c.pause_at(after + Courtesy::BUDGET / 4));
        // An instant before the burst began counts as no time, not as a long burst.
        assert!(!c.pause_at(t0));
        c.begin();
        assert!(c.since >= after);
    }

    #[test]
    fn pieces_cover_the_items_in_order() {
        let items: Vec<u32> = (0..10).collect();
        let mut c = Courtesy::new();
        let pieces: Vec<&[u32]> = c.pieces(&items, 4).collect();
        assert_eq!(pieces, [&items[0..4], &items[4..8], &items[8..10]]);
        assert_eq!(c.pieces(&items[..0], 4).count(), 0);
    }
}
