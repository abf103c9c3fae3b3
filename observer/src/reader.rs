//! Drains the kernel ring buffer and decodes its records; owns nothing else.
//!
//! The kernel submits without wakeups (a wakeup per record costs a third of a loopback server's throughput) except
//! one per sleep of the reader once 512 KiB waits, so the reader drains everything, then says it sleeps (the
//! `READER` map, written through its own mapping) and waits in poll(2) for that wake-up or for the timeout [`Pace`]
//! gives (`--poll-interval` while records flow, longer idle). The ring is read in place through
//! its own mapping ([`Ring`]), which tells the kernel what was consumed once per [`PUBLISH_BYTES`], not per record.
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use aya::maps::MapData;
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
    /// Ring bytes the drain gave back: records with their 8-byte headers and padding, discarded ones included.
    pub bytes: u64,
    /// Kernel timestamp (CLOCK_MONOTONIC ns) of the oldest record of this drain; 0 when none.
    pub oldest_ts_ns: u64,
}

/// The reader tells the kernel how far it has read once this many bytes were consumed, and at the end of each
/// drain. The kernel reads that position on every reservation; written after every record, as libbpf and aya do,
/// its cache line moves between the reader's CPU and the producing CPUs once per record: an atomic store that
/// missed the cache each time, 4% of the agent's CPU under load.
pub const PUBLISH_BYTES: usize = 64 << 10;

/// The kernel's ring-buffer record header: a length word with these two flag bits, then a page offset.
const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HDR_BYTES: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("reading the ring buffer's size failed: {0}")]
    Info(String),
    #[error("mapping the ring buffer failed: {0}")]
    Map(std::io::Error),
    #[error("mapping the reader's sleep flag (READER) failed: {0}")]
    MapFlag(std::io::Error),
}

/// A BPF ring buffer mapped into this process and read in place, as libbpf does it: a writable page holding the
/// consumer position, then a read-only producer page followed by the data pages, which the kernel maps twice in a
/// row so that a record wrapping past the end reads as one slice.
pub struct Ring {
    /// Keeps the map, whose fd the mappings belong to, alive.
    map: MapData,
    consumer: NonNull<AtomicUsize>,
    /// The producer page; the data pages start one page after it.
    producer: NonNull<u8>,
    page: usize,
    /// Data size (a power of two) minus one.
    mask: usize,
    /// Where the next record starts.
    pos: usize,
    /// The consumer position the kernel was last given.
    published: usize,
    /// Keeps the `READER` map alive for `asleep`.
    _flag_map: MapData,
    /// Its slot 0, mapped: nonzero while the reader waits in poll(2), so the kernel knows to wake it.
    asleep: NonNull<AtomicU32>,
}

// SAFETY: the mappings belong to the Ring alone and are only used through it; the kernel side is synchronised by
// the atomics, as in libbpf.
unsafe impl Send for Ring {}

impl Ring {
    /// Maps the ring buffer `map` (a `BPF_MAP_TYPE_RINGBUF`) and the reader's sleep flag `flag` (a one-slot
    /// `BPF_F_MMAPABLE` array of u32).
    pub fn new(map: MapData, flag: MapData) -> Result<Ring, RingError> {
        let size = map
            .info()
            .map_err(|e| RingError::Info(e.to_string()))?
            .max_entries() as usize;
        if !size.is_power_of_two() {
            return Err(RingError::Info(format!(
                "data size {size} is not a power of two"
            )));
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.fd().as_fd().as_raw_fd();
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let asleep = mmap(flag.fd().as_fd().as_raw_fd(), page, rw, 0).map_err(|e| match e {
            RingError::Map(e) => RingError::MapFlag(e),
            other => other,
        })?;
        let consumer = match mmap(fd, page, rw, 0) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped just above with this length, not used after.
                unsafe { libc::munmap(asleep.as_ptr().cast(), page) };
                return Err(e);
            }
        };
        let producer = match mmap(fd, page + 2 * size, libc::PROT_READ, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: both mapped just above with these lengths, not used after.
                unsafe {
                    libc::munmap(consumer.as_ptr().cast(), page);
                    libc::munmap(asleep.as_ptr().cast(), page);
                }
                return Err(e);
            }
        };
        // SAFETY: the consumer page is mapped, page-aligned and starts with the kernel's consumer position.
        let pos = unsafe { consumer.cast::<AtomicUsize>().as_ref() }.load(Ordering::Acquire);
        Ok(Ring {
            map,
            consumer: consumer.cast(),
            producer,
            page,
            mask: size - 1,
            pos,
            published: pos,
            _flag_map: flag,
            asleep: asleep.cast(),
        })
    }

    fn producer_pos(&self) -> usize {
        // SAFETY: the producer page is mapped for the Ring's life; the kernel writes the position with release.
        unsafe { self.producer.cast::<AtomicUsize>().as_ref() }.load(Ordering::Acquire)
    }

    /// Tells the kernel every record before `pos` is consumed, giving their room back.
    fn publish(&mut self) {
        if self.published != self.pos {
            // SeqCst, as aya does: ordered against the producer's commit (an xchg) and its read of this position.
            // SAFETY: the consumer page is mapped writable for the Ring's life.
            unsafe { self.consumer.as_ref() }.store(self.pos, Ordering::SeqCst);
            self.published = self.pos;
        }
    }

    /// Takes every record currently in the ring buffer, at most `limit`, handing each to `f`. Records are read in
    /// place; their room goes back to the kernel every [`PUBLISH_BYTES`] and when this returns.
    pub fn drain(&mut self, limit: usize, mut f: impl FnMut(Record<'_>)) -> Drained {
        let size = self.mask + 1;
        // SAFETY: the data pages follow the producer page and are mapped twice over (2 * size bytes) for the
        // Ring's life. The kernel does not write in [published, producer position), which holds every record read
        // here, and no record handed to `f` outlives its call (the room is published after it returns).
        let data: &[u8] =
            unsafe { std::slice::from_raw_parts(self.producer.as_ptr().add(self.page), 2 * size) };
        let mut d = Drained::default();
        let start = self.pos;
        let mut prod = self.producer_pos();
        while (d.records as usize) < limit {
            if self.pos >= prod {
                prod = self.producer_pos();
                if self.pos >= prod {
                    break;
                }
            }
            match slot(data, self.mask, self.pos) {
                Slot::Busy => break,
                Slot::Discarded { next } => self.pos = next,
                Slot::Item { next, bytes } => {
                    d.records += 1;
                    prefetch(data, next & self.mask);
                    d.take(bytes, &mut f);
                    self.pos = next;
                }
            }
            if self.pos - self.published >= PUBLISH_BYTES {
                self.publish();
            }
        }
        self.publish();
        d.bytes = (self.pos - start) as u64;
        d
    }

    /// Waits in poll(2) until records are waiting or `d` has passed. poll(2) returns at once when records already
    /// wait (the reader is behind: it drains again without sleeping), and otherwise blocks until the kernel's
    /// wake-up at [`observer_common::RING_WAKE_BYTES`] or the timeout. Returns true when records ended the wait.
    pub fn wait(&self, d: Duration) -> bool {
        // Every drain publishes before it returns: the kernel counts unpublished records as waiting.
        let mut fds = [libc::pollfd {
            fd: self.map.fd().as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = d.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: the flag's page is mapped writable for the Ring's life.
        let asleep = unsafe { self.asleep.as_ref() };
        // Said before poll(2) looks for records (SeqCst, and poll takes the wait queue's lock before it looks): a
        // record reserved after that look finds the flag and wakes the reader once the mark is reached. One
        // reserved just before may miss it; the next one will not.
        asleep.store(1, Ordering::SeqCst);
        // SAFETY: fds is a valid array of one pollfd for the duration of the call.
        let woken = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) > 0 };
        asleep.store(0, Ordering::Relaxed);
        woken
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the three regions were mapped in `new` with these lengths and are not used after this.
        unsafe {
            libc::munmap(self.consumer.as_ptr().cast(), self.page);
            libc::munmap(self.asleep.as_ptr().cast(), self.page);
            libc::munmap(
                self.producer.as_ptr().cast(),
                self.page + 2 * (self.mask + 1),
            );
        }
    }
}

fn mmap(fd: RawFd, len: usize, prot: libc::c_int, offset: usize) -> Result<NonNull<u8>, RingError> {
    // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the length, offset and protection.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(RingError::Map(std::io::Error::last_os_error()));
    }
    NonNull::new(p.cast()).ok_or(RingError::Map(std::io::Error::other("mmap returned null")))
}

/// What the reader finds at one position of the ring.
#[derive(Debug, PartialEq, Eq)]
enum Slot<'a> {
    /// Reserved and not yet submitted: nothing after it may be read yet.
    Busy,
    /// Discarded by the producer: skipped.
    Discarded {
        next: usize,
    },
    Item {
        next: usize,
        bytes: &'a [u8],
    },
}

/// Lines of a record asked for ahead of reading it: its headers (8 + 112 bytes) and the first 330 bytes or so of its
/// payload, where a short request's or response's head ends. The parser reads the rest of a longer head in order,
/// which the CPU's own prefetcher follows.
const PREFETCH_LINES: usize = 7;

/// Asks the CPU for the first lines of the record at `off` while the one before it is handled.
///
/// The records were written by the CPUs that sent the packets, so each line the reader touches first is a miss to
/// another core's cache, and a record's first lines start no stream the CPU's prefetcher would follow. Live
/// (loopback nginx under `wrk -t1 -c50`, ClickHouse sink, 8 alternating rounds) the agent's CPU per event fell from
/// 1.68 to 1.45 µs; asking for 16 lines, or for the record after next as well, gained less.
#[inline(always)]
fn prefetch(data: &[u8], off: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let base = off & !63;
        for i in 0..PREFETCH_LINES {
            let at = base + i * 64;
            if at < data.len() {
                // SAFETY: `at` is inside `data`; a prefetch reads nothing architecturally and cannot fault.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        data.as_ptr().add(at).cast(),
                    )
                };
            }
        }
    }
    // Elsewhere a hint only: the stable intrinsics are x86's.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (data, off);
}

/// Reads the record header at `pos` of the twice-mapped `data` (`2 * (mask + 1)` bytes).
fn slot(data: &[u8], mask: usize, pos: usize) -> Slot<'_> {
    let off = pos & mask;
    let hdr = &data[off..off + HDR_BYTES];
    // SAFETY: headers are 8-aligned in a page-aligned mapping (the tests' buffers are u64-backed); the kernel
    // commits a record by clearing the busy bit with an xchg, so an acquire load makes its bytes visible.
    let len = unsafe { &*(hdr.as_ptr() as *const AtomicU32) }.load(Ordering::Acquire);
    if len & BUSY_BIT != 0 {
        return Slot::Busy;
    }
    let n = (len & !(BUSY_BIT | DISCARD_BIT)) as usize;
    let next = pos + (HDR_BYTES + n).next_multiple_of(8);
    if len & DISCARD_BIT != 0 {
        Slot::Discarded { next }
    } else {
        Slot::Item {
            next,
            bytes: &data[off + HDR_BYTES..off + HDR_BYTES + n],
        }
    }
}

impl Drained {
    /// Counts and decodes one record, handing it to `f`.
    fn take(&mut self, bytes: &[u8], f: &mut impl FnMut(Record<'_>)) {
        match decode(bytes) {
            Ok(rec) => {
                let ts = match &rec {
                    Record::Data(h, _) => h.ts_ns,
                    Record::Conn(c) => c.ts_ns,
                };
                if self.oldest_ts_ns == 0 {
                    self.oldest_ts_ns = ts;
                }
                f(rec)
            }
            Err(e) => {
                self.bad += 1;
                tracing::debug!(error = %e, "bad ring-buffer record");
            }
        }
    }
}

/// How long the capture loop waits, at most, between drains.
///
/// Records are submitted without wake-ups except one per [`observer_common::RING_WAKE_BYTES`] waiting: under load
/// that wake-up, not this timeout, ends each wait (see [`Ring::wait`]). The timeout is the cadence for light traffic,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        let p = v as *const T as *const u8;
        // SAFETY: `v` is a live, initialised `T` (the records are `#[repr(C)]` plain data without padding), so
        // its size_of::<T>() bytes are readable for the borrow's duration.
        unsafe { std::slice::from_raw_parts(p, size_of::<T>()) }.to_vec()
    }

    #[test]
    fn pace_backs_off_when_quiet_and_snaps_back_under_load() {
        let ms = Duration::from_millis;
        let mut p = Pace::new(ms(2), ms(100));
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
        // A few records are still quiet; a real batch returns to the busy interval at once.
        assert_eq!(p.after(Pace::QUIET - 1), ms(100));
        assert_eq!(p.after(Pace::QUIET), ms(2));
        // An idle bound below the busy interval is raised to it.
        let mut q = Pace::new(ms(10), ms(1));
        assert_eq!(q.after(0), ms(10));
    }

    /// A ring of 64 data bytes as the kernel maps it: twice over, 8-aligned.
    struct FakeRing(Vec<u64>);

    impl FakeRing {
        fn new() -> Self {
            FakeRing(vec![0; 16])
        }
        fn bytes(&mut self) -> &mut [u8] {
            let n = self.0.len() * 8;
            // SAFETY: the Vec<u64> owns exactly n initialised bytes, any byte pattern is a valid u64, and the
            // returned slice borrows `self` mutably, so nothing else aliases it.
            unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), n) }
        }
        /// Writes a header at `pos` and its payload, into both copies of the data.
        fn put(&mut self, pos: usize, len_word: u32, payload: &[u8]) {
            let b = self.bytes();
            for base in [0, 64] {
                let at = |i: usize| base + (pos + i) % 64;
                for (i, x) in len_word.to_ne_bytes().into_iter().enumerate() {
                    b[at(i)] = x;
                }
                for (i, &x) in payload.iter().enumerate() {
                    b[at(HDR_BYTES + i)] = x;
                }
            }
        }
    }

    #[test]
    fn ring_slots_follow_the_kernel_header_format() {
        let mut r = FakeRing::new();
        r.put(0, 5, b"hello");
        assert_eq!(
            slot(r.bytes(), 63, 0),
            Slot::Item {
                next: 16,
                bytes: b"hello"
            },
            "a record takes its 8-byte header plus its length rounded up to 8"
        );
        r.put(16, 3 | BUSY_BIT, b"abc");
        assert_eq!(
            slot(r.bytes(), 63, 16),
            Slot::Busy,
            "reserved, not submitted"
        );
        r.put(16, 3 | DISCARD_BIT, b"abc");
        assert_eq!(slot(r.bytes(), 63, 16), Slot::Discarded { next: 32 });
        // Positions only grow; the offset wraps, and a record crossing the end reads on in the second copy.
        r.put(64 + 56, 12, b"wrapped-rec!");
        assert_eq!(
            slot(r.bytes(), 63, 64 + 56),
            Slot::Item {
                next: 64 + 80,
                bytes: b"wrapped-rec!"
            }
        );
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
