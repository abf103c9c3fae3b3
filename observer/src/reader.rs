//! Drains the kernel ring buffer and decodes its records; owns nothing else.
//!
//! The kernel submits without wakeups (a wakeup per record costs a third of a loopback server's throughput) except
//! one per 256 KiB waiting, so the reader drains everything, then waits in poll(2) for that wake-up or for the
//! timeout [`Pace`] gives (`--poll-interval` while records flow, longer idle).
use std::os::fd::AsRawFd;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use observer_common::{read_record, ConnEvent, DataHeader, EVENT_CONN, EVENT_DATA};

/// One decoded ring-buffer record. Data payload borrows the ring buffer until the callback returns.
#[derive(Debug)]
pub enum Record<'a> {
    Data(DataHeader, &'a [u8]),
    Conn(ConnEvent),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring-buffer record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("ring-buffer record has unknown kind {0}")]
    UnknownKind(u32),
    #[error("data record claims {claimed} payload bytes but carries {present}")]
    BadLength { claimed: u32, present: usize },
}

/// Decodes one record (a ring-buffer item's bytes).
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let kind: u32 = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
    match kind {
        EVENT_DATA => {
            let hdr: DataHeader = read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?;
            let payload = &bytes[size_of::<DataHeader>()..];
            if (hdr.cap_len as usize) > payload.len() {
                return Err(DecodeError::BadLength {
                    claimed: hdr.cap_len,
                    present: payload.len(),
                });
            }
            Ok(Record::Data(hdr, &payload[..hdr.cap_len as usize]))
        }
        EVENT_CONN => Ok(Record::Conn(
            read_record(bytes).ok_or(DecodeError::Short(bytes.len()))?,
        )),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Drain statistics of one poll.
#[derive(Debug, Default, Clone, Copy)]
pub struct Drained {
    pub records: u64,
    pub bad: u64,
    /// Kernel timestamp (CLOCK_MONOTONIC ns) of the oldest record of this drain; 0 when none.
    pub oldest_ts_ns: u64,
}

/// Takes every record currently in the ring buffer, at most `limit`, handing each to `f`.
pub fn drain(ring: &mut RingBuf<MapData>, limit: usize, mut f: impl FnMut(Record<'_>)) -> Drained {
    let mut d = Drained::default();
    while (d.records as usize) < limit {
        let Some(item) = ring.next() else { break };
        d.records += 1;
        match decode(&item) {
            Ok(rec) => {
                let ts = match &rec {
                    Record::Data(h, _) => h.ts_ns,
                    Record::Conn(c) => c.ts_ns,
                };
                if d.oldest_ts_ns == 0 {
                    d.oldest_ts_ns = ts;
                }
                f(rec)
            }
            Err(e) => {
                d.bad += 1;
                tracing::debug!(error = %e, "bad ring-buffer record");
            }
        }
    }
    d
}

/// How long the capture loop waits, at most, between drains.
///
/// Records are submitted without wake-ups except one per [`observer_common::RING_WAKE_BYTES`] waiting: under load
/// that wake-up, not this timeout, ends each wait (see [`wait`]). The timeout is the cadence for light traffic,
/// which may take long to fill the mark: `busy` while drains find records, doubling up to `idle` when a drain
/// finds fewer than [`Pace::QUIET`], so an idle node is not woken needlessly. Both are meant to be longer than the
/// scheduler tick (4 ms at 250 Hz): a shorter timer makes the kernel reprogram the timer hardware for each wake-up,
/// and on a 2-vCPU VM 500 such wake-ups a second (even a bare process sleeping 2 ms in a loop) cost a saturated
/// loopback nginx 6 to 8% of its throughput.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    busy: Duration,
    idle: Duration,
    cur: Duration,
}

impl Pace {
    /// A drain with fewer records than this lets the wait grow.
    pub const QUIET: u64 = 32;

    pub fn new(busy: Duration, idle: Duration) -> Self {
        Pace {
            busy,
            idle: idle.max(busy),
            cur: busy,
        }
    }

    /// The wait after a drain that took `records`.
    pub fn after(&mut self, records: u64) -> Duration {
        self.cur = if records >= Self::QUIET {
            self.busy
        } else {
            (self.cur * 2).min(self.idle)
        };
        self.cur
    }

    /// True when the wait is at its shortest (records flow).
    pub fn is_busy(&self) -> bool {
        self.cur == self.busy
    }
}

/// Waits in poll(2) on the ring buffer until records are waiting or `d` has passed. poll(2) returns at once when
/// records already wait (the reader is behind: it drains again without sleeping), and otherwise blocks until the
/// kernel's wake-up at [`observer_common::RING_WAKE_BYTES`] or the timeout. Returns true when records ended the
/// wait.
pub fn wait(ring: &RingBuf<MapData>, d: Duration) -> bool {
    let mut fds = [libc::pollfd {
        fd: ring.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let ms = d.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: fds is a valid array of one pollfd for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) > 0 }
}

/// CLOCK_MONOTONIC now, the clock `bpf_ktime_get_ns` uses.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Offset that turns a CLOCK_MONOTONIC timestamp into Unix time (ns).
#[allow(clippy::unnecessary_cast)] // time_t and c_long are not i64 on every target
pub fn mono_to_unix_offset_ns() -> i64 {
    let mut rt = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mono = monotonic_ns();
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut rt) };
    (rt.tv_sec as i64 * 1_000_000_000 + rt.tv_nsec as i64) - mono as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        let p = v as *const T as *const u8;
        unsafe { std::slice::from_raw_parts(p, size_of::<T>()) }.to_vec()
    }

    #[test]
    fn pace_backs_off_when_quiet_and_snaps_back_under_load() {
        let ms = Duration::from_millis;
        let mut p = Pace::new(ms(2), ms(100));
        assert!(p.is_busy());
        // Quiet drains double the wait up to the idle bound.
        let waits: Vec<_> = (0..8).map(|_| p.after(0)).collect();
        assert_eq!(
            waits,
            [
                ms(4),
                ms(8),
                ms(16),
                ms(32),
                ms(64),
                ms(100),
                ms(100),
                ms(100)
            ]
        );
        assert!(!p.is_busy());
        // A few records are still quiet; a real batch returns to the busy interval at once.
        assert_eq!(p.after(Pace::QUIET - 1), ms(100));
        assert_eq!(p.after(Pace::QUIET), ms(2));
        assert!(p.is_busy());
        // An idle bound below the busy interval is raised to it.
        let mut q = Pace::new(ms(10), ms(1));
        assert_eq!(q.after(0), ms(10));
        assert!(q.is_busy());
    }

    #[test]
    fn decodes_data_with_payload() {
        let hdr = DataHeader {
            kind: EVENT_DATA,
            cap_len: 5,
            ..Default::default()
        };
        let mut b = bytes_of(&hdr);
        b.extend_from_slice(b"GET /");
        match decode(&b).expect("decodes") {
            Record::Data(h, p) => {
                assert_eq!(h.cap_len, 5);
                assert_eq!(p, b"GET /");
            }
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn rejects_short_unknown_and_lying_records() {
        assert_eq!(decode(&[1, 0]).unwrap_err(), DecodeError::Short(2));
        assert_eq!(
            decode(&9u32.to_ne_bytes()).unwrap_err(),
            DecodeError::UnknownKind(9)
        );
        let hdr = DataHeader {
            kind: EVENT_DATA,
            cap_len: 50,
            ..Default::default()
        };
        let mut b = bytes_of(&hdr);
        b.extend_from_slice(b"abc");
        assert_eq!(
            decode(&b).unwrap_err(),
            DecodeError::BadLength {
                claimed: 50,
                present: 3
            }
        );
        let conn = ConnEvent {
            kind: EVENT_CONN,
            op: 4,
            ..Default::default()
        };
        assert!(matches!(decode(&bytes_of(&conn)), Ok(Record::Conn(c)) if c.op == 4));
    }
}
