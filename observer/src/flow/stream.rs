//! One direction of a connection as its walker sees it: where it is in the current message, segments stashed
//! ahead of a gap, what each hook saw (to tell retransmissions from the other end's copy), how far the bytes are
//! known to reach; and TCP sequence-number arithmetic.
use observer_common::{HOOK_CGROUP_EGRESS, HOOK_CGROUP_INGRESS, HOOK_TC_EGRESS, HOOK_TC_INGRESS};

use crate::http::ChunkedDecoder;

/// `a < b`: serial-number comparison of TCP sequence numbers.
pub(crate) fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

pub(crate) fn seq_le(a: u32, b: u32) -> bool {
    a == b || seq_lt(a, b)
}

/// Out-of-order continuation segments kept per stream, waiting for the gap before them to fill.
pub(super) const MAX_STASH: usize = 4;
/// Sequence numbers remembered per stream (segments each hook saw, message starts), to tell a second observation of
/// the same bytes (the other local end's, a retransmission) from a reordering.
pub(super) const RECENT: usize = 16;
/// [`Recent`]'s mark of a message start (bits 0-3 are the hooks, by [`hook_slot`]).
pub(super) const START: u8 = 1 << 7;

/// The last [`RECENT`] sequence numbers seen in a stream, each with a mark per hook that saw a segment start there
/// and [`START`] when a message starts there. Fixed size and inline: an idle connection holds no heap for it.
#[derive(Debug, Default, Clone)]
pub(super) struct Recent {
    seqs: [u32; RECENT],
    /// Per entry: its marks; 0 for an unused entry.
    marks: [u8; RECENT],
    /// Entry written next (the oldest once all are used).
    next: u8,
}

impl Recent {
    fn find(&self, seq: u32) -> Option<usize> {
        (0..RECENT).find(|&i| self.marks[i] != 0 && self.seqs[i] == seq)
    }

    /// Whether `seq` carries `mark`.
    pub(super) fn has(&self, seq: u32, mark: u8) -> bool {
        self.find(seq).is_some_and(|i| self.marks[i] & mark != 0)
    }

    /// Marks `seq` with `mark` (a new entry replaces the oldest) and returns whether it was already marked so.
    pub(super) fn mark(&mut self, seq: u32, mark: u8) -> bool {
        if let Some(i) = self.find(seq) {
            let had = self.marks[i] & mark != 0;
            self.marks[i] |= mark;
            return had;
        }
        let i = usize::from(self.next);
        self.seqs[i] = seq;
        self.marks[i] = mark;
        self.next = ((i + 1) % RECENT) as u8;
        false
    }

    /// The most recently added message start.
    pub(super) fn last_start(&self) -> Option<u32> {
        (1..=RECENT)
            .map(|back| (usize::from(self.next) + RECENT - back) % RECENT)
            .find(|&i| self.marks[i] & START != 0)
            .map(|i| self.seqs[i])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Request,
    Response,
}

/// Where the byte walker of a stream is.
#[derive(Debug, Default)]
pub(super) enum MsgState {
    /// The next byte starts a message.
    #[default]
    Idle,
    /// Collecting a head that started at `start` (record time `ts`).
    Head { start: u32, ts: u64, buf: Vec<u8> },
    /// Skipping this many body bytes of a message whose end is known.
    Body(u64),
    /// Walking a chunked body.
    Chunked(ChunkedDecoder),
    /// Bytes cannot be placed (unknown framing, malformed): wait for the next message start.
    Unknown,
}

#[derive(Debug)]
pub(super) struct Stashed {
    pub(super) seq: u32,
    pub(super) ts: u64,
    pub(super) flags: u32,
    pub(super) data: Vec<u8>,
}

/// One direction of the connection.
#[derive(Debug, Default)]
pub(super) struct Stream {
    pub(super) state: MsgState,
    /// Sequence number of the next captured byte expected (contiguous capture of the current message).
    pub(super) next_seq: Option<u32>,
    /// Bytes captured since the last message start segment (saturating), and whether the kernel stopped copying.
    pub(super) captured: u32,
    pub(super) capture_over: bool,
    /// Start of the message whose end is not known yet.
    pub(super) open: Option<u32>,
    /// End of the last message when its framing gave it: where the next message must start.
    pub(super) expect_next: Option<u32>,
    pub(super) last_kind: Option<Kind>,
    /// Segment starts per hook that saw them (a hook seeing one again is a retransmission) and message starts.
    pub(super) recent: Recent,
    /// Highest segment end seen in this direction.
    pub(super) max_end: Option<u32>,
    /// Highest acknowledgement of this direction's bytes seen on the other direction's segments.
    pub(super) acked: Option<u32>,
    pub(super) last_ts: u64,
    pub(super) stash: Vec<Stashed>,
    /// The open message has a framing anomaly and its framing gave its end: where that end falls is noted in
    /// `anomaly_end`, and a message starting there is marked [`Anomalies::FOLLOWS_ANOMALY`].
    pub(super) anomalous_open: bool,
    pub(super) anomaly_end: Option<u32>,
}

impl Stream {
    /// Whether the bytes up to `end` are known to have gone on the wire: seen, or acknowledged by the peer. A body
    /// past the capture leaves no records, so a declared end is only taken once it is reached.
    pub(super) fn reached(&self, end: u32) -> bool {
        self.max_end.is_some_and(|m| seq_le(end, m)) || self.acked.is_some_and(|a| seq_le(end, a))
    }

    /// End estimate for a message whose end was never delimited: the furthest byte seen, at least `min_end`.
    pub(super) fn estimate_end(&self, min_end: u32) -> u32 {
        match self.max_end {
            Some(m) if seq_lt(min_end, m) => m,
            _ => min_end,
        }
    }
}

pub(super) fn hook_slot(hook: u32) -> Option<usize> {
    match hook {
        HOOK_CGROUP_INGRESS => Some(0),
        HOOK_CGROUP_EGRESS => Some(1),
        HOOK_TC_INGRESS => Some(2),
        HOOK_TC_EGRESS => Some(3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_finds_marked_sequence_numbers_and_forgets_the_oldest() {
        let mut r = Recent::default();
        // Unused entries hold 0 with no mark: sequence number 0 is not found until marked.
        assert!(!r.has(0, 1));
        assert!(!r.mark(0, 1));
        assert!(r.has(0, 1) && !r.has(0, 2));
        // Marking again adds to the entry, and says whether the mark was there.
        assert!(!r.mark(0, START));
        assert!(r.mark(0, 1));
        assert!(r.has(0, START));
        for seq in 1..RECENT as u32 {
            assert!(!r.mark(seq * 100, 2));
        }
        assert!(r.has(0, 1) && r.has(1500, 2));
        assert_eq!(r.last_start(), Some(0));
        // One more replaces the oldest entry (0, the only start).
        assert!(!r.mark(u32::MAX, START));
        assert!(!r.has(0, 1) && !r.has(0, START));
        assert!(r.has(u32::MAX, START) && r.has(100, 2));
        assert_eq!(r.last_start(), Some(u32::MAX));
        // The same number twice is one entry: a mark found on it is the first entry's.
        let mut d = Recent::default();
        d.mark(7, 1);
        d.mark(8, 2);
        assert!(d.mark(7, 1) && !d.mark(7, 2) && d.has(7, 3));
    }
}
