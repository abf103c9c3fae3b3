//! A sink's input queue: batches of events, bounded by the number of events queued.
//!
//! The capture loop hands over what a few drains of the ring buffer produced as one batch (up to
//! `HANDOVER_EVENTS` events or a poll interval), so a sink task is woken a few dozen times a second under load rather
//! than once per event or per drain (each wake-up is a futex call and two context switches on a node whose cores the
//! observed servers keep busy). The bound is counted in events, as `--sink-queue` says:
//! what does not fit is refused at once and counted as a drop by the caller, never waited for.
//!
//! Batch vectors go round: a sink done with a batch hands the vector back ([`QueueRx::recycle`]) and the
//! capture loop takes its next batch from there ([`Spares::take`]). A batch of a drain's events is a few hundred
//! KB; allocated afresh each drain, the allocator returned it to the kernel between drains and every drain paid
//! for page faults and for zeroing new pages. A vector goes back with its events, which the capture loop drops when
//! it takes the vector again: the events' strings were allocated on its thread and their shared strings' counts
//! raised there, so freeing them there is the allocator's fast path and keeps each count's cache line on one core
//! (dropped by the sink's thread, the drop was 3% of the agent's CPU samples and the capture thread paid again for
//! the remote frees).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::event::Event;

/// Batch vectors given back, kept for reuse (at most [`Spares::KEEP`]).
#[derive(Debug, Default)]
pub struct Spares(Mutex<Vec<Vec<Event>>>);

impl Spares {
    /// Vectors kept; more are freed. A few cover the batches in flight between the capture loop and the sinks.
    pub const KEEP: usize = 8;
    /// Of those, how many may still hold their events (at most a drain's worth each); the others are emptied by the
    /// sink that gives them back.
    pub const KEEP_FULL: usize = 2;

    /// An empty vector, with the capacity of an earlier batch when one was given back. The events it still held are
    /// dropped here, by the caller (the capture loop).
    pub fn take(&self) -> Vec<Event> {
        let mut v = self
            .0
            .lock()
            .map(|mut v| v.pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        v.clear();
        v
    }

    /// Keeps `batch`'s allocation for [`Spares::take`], with its events while fewer than [`Spares::KEEP_FULL`] kept
    /// vectors hold theirs (two sinks giving back at once may keep one more).
    pub fn give(&self, mut batch: Vec<Event>) {
        if batch.capacity() == 0 {
            return;
        }
        let full = self
            .0
            .lock()
            .map(|v| v.iter().filter(|b| !b.is_empty()).count())
            .unwrap_or(usize::MAX);
        if full >= Self::KEEP_FULL {
            // Outside the lock: the capture loop takes from it on every drain.
            batch.clear();
        }
        if let Ok(mut v) = self.0.lock() {
            if v.len() < Self::KEEP {
                v.push(batch);
            }
        }
    }

    /// Vectors kept now.
    pub fn len(&self) -> usize {
        self.0.lock().map(|v| v.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Creates a queue holding at most `cap` events (at least 1); emptied batches go back to `spares`.
pub fn queue(cap: usize, spares: Arc<Spares>) -> (QueueTx, QueueRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        QueueTx {
            tx,
            queued: queued.clone(),
            cap: cap.max(1),
        },
        QueueRx { rx, queued, spares },
    )
}

/// Why events were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds `cap` events already.
    Full,
    /// The sink has stopped.
    Closed,
}

/// The sending end, owned by the capture loop's [`super::SinkHandle`].
#[derive(Debug)]
pub struct QueueTx {
    tx: mpsc::UnboundedSender<Vec<Event>>,
    queued: Arc<AtomicUsize>,
    cap: usize,
}

impl QueueTx {
    /// Queues as many of `batch`'s events as fit, in order. Returns how many were queued and, when some were
    /// refused, why.
    pub fn send(&self, mut batch: Vec<Event>) -> (usize, Option<Refused>) {
        let want = batch.len();
        if want == 0 {
            return (0, None);
        }
        let mut room = 0;
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                room = self.cap.saturating_sub(q).min(want);
                (room > 0).then_some(q + room)
            });
        if reserved.is_err() {
            return (0, Some(Refused::Full));
        }
        batch.truncate(room);
        if self.tx.send(batch).is_err() {
            self.queued.fetch_sub(room, Ordering::AcqRel);
            return (0, Some(Refused::Closed));
        }
        (room, (room < want).then_some(Refused::Full))
    }
}

/// The receiving end, owned by a sink task.
#[derive(Debug)]
pub struct QueueRx {
    rx: mpsc::UnboundedReceiver<Vec<Event>>,
    queued: Arc<AtomicUsize>,
    spares: Arc<Spares>,
}

impl QueueRx {
    /// The next batch; `None` once the sender is gone and everything was received.
    pub async fn recv(&mut self) -> Option<Vec<Event>> {
        self.rx.recv().await.map(|b| self.took(b))
    }

    /// The next batch, waiting on this (non-async) thread; `None` once the sender is gone and everything was
    /// received. For sinks that run on a thread of their own.
    pub fn blocking_recv(&mut self) -> Option<Vec<Event>> {
        self.rx.blocking_recv().map(|b| self.took(b))
    }

    /// The next batch if one is queued now.
    pub fn try_recv(&mut self) -> Option<Vec<Event>> {
        self.rx.try_recv().ok().map(|b| self.took(b))
    }

    /// A received batch, its events no longer counted against the bound.
    fn took(&self, b: Vec<Event>) -> Vec<Event> {
        self.queued.fetch_sub(b.len(), Ordering::AcqRel);
        b
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Gives a received batch back once the sink is done with it (see [`Spares`]).
    pub fn recycle(&self, batch: Vec<Event>) {
        self.spares.give(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| Event {
                path: format!("/{i}"),
                ..Event::default()
            })
            .collect()
    }

    #[tokio::test]
    async fn bounded_in_events_keeps_order_and_frees_room_on_receive() {
        let (tx, mut rx) = queue(5, Arc::default());
        assert_eq!(tx.send(events(3)), (3, None));
        // Only two more fit: the first two of the batch are queued, the third refused.
        assert_eq!(tx.send(events(3)), (2, Some(Refused::Full)));
        assert_eq!(tx.send(events(1)), (0, Some(Refused::Full)));
        let first = rx.recv().await.expect("first batch");
        assert_eq!(first.len(), 3);
        let second = rx.try_recv().expect("second batch");
        assert_eq!(
            second.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["/0", "/1"]
        );
        assert!(rx.is_empty());
        // Receiving gave the room back.
        assert_eq!(tx.send(events(5)), (5, None));
        assert_eq!(tx.send(events(1)), (0, Some(Refused::Full)));
    }

    #[test]
    fn a_stopped_sink_refuses_and_keeps_no_room_reserved() {
        let (tx, rx) = queue(2, Arc::default());
        drop(rx);
        assert_eq!(tx.send(events(2)), (0, Some(Refused::Closed)));
        assert_eq!(tx.queued.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn batches_come_back_with_their_capacity_and_are_taken_empty() {
        let spares = Arc::new(Spares::default());
        let (tx, mut rx) = queue(100, spares.clone());
        assert_eq!(spares.take().capacity(), 0, "nothing given back yet");
        let mut batch = spares.take();
        batch.extend(events(20));
        tx.send(batch);
        let got = rx.recv().await.expect("batch");
        assert_eq!(got[19].path, "/19");
        rx.recycle(got);
        assert_eq!(spares.len(), 1);
        let again = spares.take();
        assert!(again.is_empty() && again.capacity() >= 20);
        assert!(spares.is_empty());
        // Only KEEP are kept.
        for _ in 0..Spares::KEEP + 3 {
            rx.recycle(events(1));
        }
        assert_eq!(spares.len(), Spares::KEEP);
        let held = spares.0.lock().unwrap();
        let full = held.iter().filter(|b| !b.is_empty()).count();
        assert_eq!(
            full,
            Spares::KEEP_FULL,
            "the others were emptied by the giver"
        );
        drop(held);
        for _ in 0..Spares::KEEP {
            assert!(
                spares.take().is_empty(),
                "taken empty: the taker drops what it held"
            );
        }
        assert!(spares.is_empty());
    }

    #[test]
    fn a_thread_of_its_own_receives_in_order_then_the_end() {
        let (tx, mut rx) = queue(10, Arc::default());
        let t = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Some(b) = rx.blocking_recv() {
                got.extend(b.into_iter().map(|e| e.path));
            }
            got
        });
        tx.send(events(2));
        tx.send(events(1));
        drop(tx);
        assert_eq!(t.join().expect("receiver"), ["/0", "/1", "/0"]);
    }

    #[tokio::test]
    async fn receiver_sees_the_end_after_the_last_batch() {
        let (tx, mut rx) = queue(10, Arc::default());
        tx.send(events(2));
        drop(tx);
        assert_eq!(rx.recv().await.map(|b| b.len()), Some(2));
        assert!(rx.recv().await.is_none());
    }
}
