//! Kernel side of observer: classify TCP payload as HTTP/1.x message starts and copy bounded bytes to user space.
//!
//! Programs: cgroup_skb ingress/egress (every local socket, every netns, with the socket cookie and cgroup),
//! TC clsact ingress/egress (traffic no local socket owns, `--iface`), and sock_ops (in `sockops.rs`: connection
//! lifecycle, the connecting pid, stream end sequence numbers at close). Nothing is parsed here beyond the first
//! bytes: user space owns HTTP. Every failure increments a per-CPU counter; records are submitted without wakeups,
//! except one per sleep of the reader, once the bytes waiting in the ring reach a mark (see [`submit_flags`]).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
        BPF_SK_STORAGE_GET_F_CREATE, TC_ACT_PIPE,
    },
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{
            bpf_get_current_comm as raw_get_current_comm, bpf_get_socket_cookie,
            bpf_sk_storage_get, bpf_skb_cgroup_id, bpf_skb_load_bytes,
        },
    },
    macros::{btf_map, cgroup_skb, classifier, map},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{sk_buff::SkBuff, SkBuffContext, TcContext},
};
use observer_common::*;

mod head;
mod sockops;

use head::{head_copy, HEAD_SCAN_ENABLED};

// SAFETY: the kernel reads the licence from this section by name; no other symbol is called LICENSE here.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
pub static LICENSE: [u8; 4] = *b"GPL\0";

/// All records, data and connection, in production order.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Slot 0 is nonzero while the reader sleeps (or is about to) in poll(2) waiting for records: user space writes it
/// through its own mapping before and after each wait, and [`submit_flags`] clears it when it wakes the reader.
#[map]
static READER: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CNT_MAX, 0);

#[map]
static CONFIG: Array<KernelConfig> = Array::with_max_entries(1, 0);

/// Ports to capture when `KernelConfig::filter_ports` is set: a bitmap, port `p` is bit `p % 64` of word `p / 64`.
/// An array lookup is inlined by the verifier, so the filter every packet goes through costs no hashing.
#[map]
static PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

/// Per stream (and hook) state of the TC hooks, which see no socket; and the mark the cgroup ingress hook looks for
/// a local sender by (see [`capture`]): a local socket's egress key, written at its stream's first message unless
/// that left through the loopback device while loopback ingress is skipped (no ingress hook will look for it).
#[map]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(65536, 0);

/// Slots of [`FIRST`]: a power of two.
const FIRST_SLOTS: u32 = 1 << 17;

/// A local socket's stream state until its second message (when it moves into [`SOCK_FLOWS`]), direct-mapped by
/// socket cookie and direction (see [`first_slot`]): an array lookup the verifier inlines, with no hashing, bucket
/// walk, LRU list or lock, and consecutive sockets (cookies are handed out in sequence) in neighbouring slots. Under
/// connection churn the [`FLOWS`] lookup that used to hold this state missed in a cold bucket at every stream's first
/// message, a quarter of the egress program. A slot holds one socket at a time: a later socket whose cookie maps to
/// it takes it over (the `cookie` field tells), and the earlier socket's next message is then classified as a
/// stream's first, which loses nothing unless it is the continuation of a message split across segments.
#[map]
static FIRST: Array<FlowState> = Array::with_max_entries(FIRST_SLOTS, 0);

/// [`FIRST`]'s slot for socket `cookie`'s direction `dir` (0 ingress, 1 egress).
#[inline(always)]
fn first_slot(cookie: u64, dir: usize) -> u32 {
    (((cookie as u32) << 1) | (dir as u32 & 1)) & (FIRST_SLOTS - 1)
}

/// Per socket state of the cgroup_skb hooks from a socket's second message on, one [`FlowState`] per direction, in
/// the socket itself: exact whatever the number of sockets (a [`FIRST`] slot can be taken over), and freed with the
/// socket. Created only at a second message: allocating and linking storage for a connection with one exchange
/// (connection churn, `Connection: close`) cost more than the [`FIRST`] slot its first message uses.
#[btf_map]
static SOCK_FLOWS: SkStorage<SockFlows> = SkStorage::new();

/// A socket's [`SOCK_FLOWS`] value: index 0 ingress, 1 egress. Created zeroed: a zero `cookie` is a direction that
/// has no stream yet (a socket's cookie is never 0).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockFlows {
    dir: [FlowState; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct FlowKey {
    /// Addresses as the packet holds them (IPv4 mapped into IPv6), in 4-byte words: a key built from aligned words
    /// is written with word stores, where byte arrays made the compiler zero them through a byte-at-a-time
    /// `memset` subprogram on every packet.
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
    hook: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct FlowState {
    /// Bytes of the current message that may still be copied; [`NOT_HTTP`] for a stream that is not HTTP/1.x.
    remaining: u32,
    /// Sequence number the next contiguous segment must start at to count as a continuation.
    next_seq: u32,
    /// The socket the state belongs to: a 4-tuple is reused by later connections, a cookie never is.
    cookie: u64,
    /// When the socket's identity (cgroup; on egress also the sending task's pid and comm) was last put in a record
    /// of this stream.
    task_ns: u64,
}

/// `FlowState::remaining` of a stream whose first payload was a TLS record or the HTTP/2 preface: no HTTP/1.x
/// message can follow, so its later segments leave [`capture`] right after the state lookup, unclassified.
const NOT_HTTP: u32 = u32::MAX;

/// A stream's records carry the socket's identity (cgroup, sending task) again after this long, so user space that
/// dropped the socket from its tables (a low `--max-connections`) learns it again.
const TASK_REFRESH_NS: u64 = 1_000_000_000;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: a per-CPU array slot, valid for the program's run and written only by this CPU meanwhile.
        unsafe { *c += 1 };
    }
}

/// Submit flags for a record: no wake-up, except for the first record that finds the reader asleep
/// ([`READER`]) with [`RING_WAKE_BYTES`] or more waiting. Under load that is what wakes the reader, once per
/// sleep; while it drains, nothing wakes it, and records cost no ring query.
///
/// Not a test for the record that takes the bytes waiting past the mark, as before: with two CPUs reserving at
/// once, both can find the mark already passed (each counts the other's record as waiting before its own), so
/// neither wakes the reader and it sleeps its whole timeout while the ring fills. With 4 KiB records (8 KiB
/// cookies) at 55k requests/s that lost wake-up overflowed the 16 MiB ring within seconds (`perf sched`: the reader
/// slept 100 ms under load). Two records that find the reader asleep at once may both wake it: harmless.
#[inline(always)]
fn submit_flags() -> u64 {
    let Some(asleep) = READER.get_ptr_mut(0) else {
        return BPF_RB_NO_WAKEUP as u64;
    };
    // SAFETY: an array slot, valid for the program's run; user space writes it concurrently, so it is read and
    // written as a volatile word (a torn value is impossible for an aligned u32).
    if unsafe { core::ptr::read_volatile(asleep) } == 0
        || EVENTS.query(BPF_RB_AVAIL_DATA as u64) < RING_WAKE_BYTES as u64
    {
        return BPF_RB_NO_WAKEUP as u64;
    }
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(asleep, 0) };
    BPF_RB_FORCE_WAKEUP as u64
}

#[inline(always)]
fn config() -> KernelConfig {
    match CONFIG.get(0) {
        Some(c) => *c,
        None => KernelConfig::default(),
    }
}

/// True when `port` is in the capture set.
#[inline(always)]
fn port_wanted(port: u16) -> bool {
    match PORTS.get(port_word(port)) {
        Some(w) => *w & port_bit(port) != 0,
        None => false,
    }
}

/// Reads a `T` at `off`: straight from the skb's linear data when it is there (the usual case for headers), else
/// through `bpf_skb_load_bytes`. Direct reads cost no helper call on a path every packet takes.
#[inline(always)]
fn read<T: Copy>(skb: &SkBuff, off: usize) -> Result<T, ()> {
    // SAFETY: the context pointer is valid for the program's run; data and data_end are readable context fields in
    // cgroup_skb and TC programs.
    let data = unsafe { (*skb.skb).data } as usize;
    // SAFETY: as above.
    let end = unsafe { (*skb.skb).data_end } as usize;
    let p = data + off;
    if p + core::mem::size_of::<T>() <= end {
        // SAFETY: bounds checked against data_end just above (the verifier checks it again).
        Ok(unsafe { (p as *const T).read_unaligned() })
    } else {
        skb.load(off).map_err(|_| ())
    }
}

/// Word 2 of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), as it lies in memory.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The 4 bytes of `b` at `off`, as they lie in memory.
#[inline(always)]
fn word<const N: usize>(b: &[u8; N], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// An address in [`FlowKey`]'s words as the 16 bytes records carry.
#[inline(always)]
fn addr_bytes(a: [u32; 4]) -> [u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size and every bit pattern is valid for both.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(a) }
}

/// 16 bytes kept in two words (see [`current_comm`]) as records carry them.
#[inline(always)]
fn words_bytes(a: [u64; 2]) -> [u8; 16] {
    // SAFETY: [u64; 2] and [u8; 16] have the same size and every bit pattern is valid for both.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(a) }
}

/// The current task's name, in words: aya's `bpf_get_current_comm` returns a `Result` of a byte array, which the
/// compiler zeroes and moves a byte at a time on every record that carries it. The buffer is not zeroed first
/// either (a zeroed array became a call to a byte-loop `memset` subprogram): the helper takes uninitialised memory.
#[inline(always)]
fn current_comm() -> [u64; 2] {
    let mut comm = core::mem::MaybeUninit::<[u64; 2]>::uninit();
    // SAFETY: the helper writes all 16 bytes of the buffer it is given (the name NUL-padded, or zeroes on failure),
    // so the result needs no check and is initialised after the call.
    unsafe {
        raw_get_current_comm(comm.as_mut_ptr() as *mut _, 16);
        comm.assume_init()
    }
}

/// Two zero words, for a record's name when it carries none. A constant zero array made the compiler zero the
/// record's 16 bytes through a call to a byte-loop `memset` subprogram, on every record; a zero it cannot see as
/// constant is stored as two words.
#[inline(always)]
fn zero_words() -> [u64; 2] {
    let mut z = 0u64;
    // SAFETY: volatile access to a local: only hides the value from constant folding.
    let z = unsafe {
        core::ptr::write_volatile(&mut z, 0);
        core::ptr::read_volatile(&z)
    };
    [z, z]
}

/// `LOOPBACK_IFINDEX`: the loopback device is interface 1 in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

#[cgroup_skb]
pub fn observer_cg_ingress(ctx: SkBuffContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run; ifindex is readable in cgroup_skb.
    let ifindex = unsafe { core::ptr::read_volatile(&(*ctx.skb.skb).ifindex) };
    if ifindex == LOOPBACK_IFINDEX && config().skip_lo_ingress != 0 {
        // Sent by a local socket, whose egress this program set already saw (see KernelConfig).
        return 1;
    }
    let _ = capture(&ctx.skb, 0, HOOK_CGROUP_INGRESS, true);
    1
}

#[cgroup_skb]
pub fn observer_cg_egress(ctx: SkBuffContext) -> i32 {
    let _ = capture(&ctx.skb, 0, HOOK_CGROUP_EGRESS, true);
    1
}

#[classifier]
pub fn observer_tc_ingress(ctx: TcContext) -> i32 {
    let _ = capture(&ctx.skb, ETH_HLEN, HOOK_TC_INGRESS, false);
    TC_ACT_PIPE
}

#[classifier]
pub fn observer_tc_egress(ctx: TcContext) -> i32 {
    let _ = capture(&ctx.skb, ETH_HLEN, HOOK_TC_EGRESS, false);
    TC_ACT_PIPE
}

/// Whether the `len` payload bytes at `off` start an HTTP/1.x message: [`is_start_after_empty_lines`] on the first
/// 12 bytes ([`is_common_start`] on 8 when the segment is shorter), and for the rest [`extension_start`].
#[inline(always)]
fn message_start(skb: &SkBuff, off: usize, len: usize) -> Start {
    let common = if len >= START_PEEK {
        match read::<[u8; START_PEEK]>(skb, off) {
            Ok(head) => is_start_after_empty_lines(&head),
            Err(_) => false,
        }
    } else {
        len >= 8
            && match read::<[u8; 8]>(skb, off) {
                Ok(head) => is_common_start(&head),
                Err(_) => false,
            }
    };
    if common {
        return Start::Common;
    }
    let head: [u8; EXTENSION_PEEK] = if len >= EXTENSION_PEEK {
        read(skb, off).unwrap_or([0; EXTENSION_PEEK])
    } else if len >= 16 {
        let mut h = [0; EXTENSION_PEEK];
        if let Ok(p) = read::<[u8; 16]>(skb, off) {
            h[..16].copy_from_slice(&p);
        }
        h
    } else {
        return Start::Not(NotStart::Short);
    };
    match extension_start(&head, len) {
        Ok(()) => Start::Extension,
        Err(why) => Start::Not(why),
    }
}

/// What [`message_start`] decided about a segment.
#[derive(Clone, Copy)]
enum Start {
    /// A common method or a response ([`is_common_start`]).
    Common,
    /// Any other method, by the shape of the request line ([`extension_start`]).
    Extension,
    Not(NotStart),
}

/// Parses IP/TCP at `l3` and, for message starts and their continuations, copies the payload to the ring buffer.
/// `cgroup` says whether the packet is known to belong to a local socket (cgroup_skb); TC asks the skb.
///
/// Packets that can neither start nor continue a message leave early, cheapest test first: not TCP, then no payload
/// (bare ACKs, about half the packets of a keep-alive exchange) before any map is read, then ports not captured,
/// then streams already known not to be HTTP/1.x ([`NOT_HTTP`]) before the payload is read or classified. A message
/// start longer than [`HEAD_SCAN_MIN`] bytes is copied head only when its body is one the agent does not read
/// ([`observer_head_copy`]), and then none of the message's later segments are.
#[inline(always)]
fn capture(skb: &SkBuff, l3: usize, hook: u32, cgroup: bool) -> Result<(), ()> {
    let l4: usize;
    // cgroup_skb has no link-layer header: its protocol comes from skb->protocol. TC reads the Ethernet type.
    let proto = if l3 == 0 {
        u16::from_be(skb.protocol() as u16)
    } else {
        u16::from_be(read::<u16>(skb, 12)?)
    };
    // One read per header, straight from the packet when it is linear: the IP header's fixed part, then TCP's.
    let ip_total;
    let saddr: [u32; 4];
    let daddr: [u32; 4];
    if proto == ETH_P_IP {
        let ip: [u8; 20] = read(skb, l3)?;
        if ip[0] >> 4 != 4 {
            return Err(());
        }
        if ip[9] != IPPROTO_TCP {
            return Ok(());
        }
        l4 = l3 + ((ip[0] & 0x0f) as usize) * 4;
        ip_total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        saddr = [0, 0, V4_MAPPED, word(&ip, 12)];
        daddr = [0, 0, V4_MAPPED, word(&ip, 16)];
    } else if proto == ETH_P_IPV6 {
        let ip: [u8; 40] = read(skb, l3)?;
        if ip[6] != IPPROTO_TCP {
            // Extension headers are not followed: rare for TCP and not worth the verifier budget.
            return Ok(());
        }
        l4 = l3 + 40;
        ip_total = 40 + u16::from_be_bytes([ip[4], ip[5]]) as usize;
        saddr = [word(&ip, 8), word(&ip, 12), word(&ip, 16), word(&ip, 20)];
        daddr = [word(&ip, 24), word(&ip, 28), word(&ip, 32), word(&ip, 36)];
    } else {
        return Ok(());
    }
    let tcp: [u8; 20] = read(skb, l4)?;
    // GSO super-segments carry a 0 IP length on some paths: trust skb->len then.
    let end = if ip_total == 0 || l3 + ip_total > skb.len() as usize {
        skb.len() as usize
    } else {
        l3 + ip_total
    };
    let payload_off = l4 + ((tcp[12] >> 4) as usize) * 4;
    if end <= payload_off {
        // A bare ACK (or FIN): nothing to copy.
        return Ok(());
    }
    let payload_len = end - payload_off;
    let key = FlowKey {
        saddr,
        daddr,
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        hook,
    };
    let cfg = config();
    if cfg.filter_ports != 0 && !port_wanted(key.sport) && !port_wanted(key.dport) {
        return Ok(());
    }
    let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);

    if hook == HOOK_CGROUP_INGRESS {
        // The sender is a local socket whose egress we already copy (both ends on this node): the same bytes
        // again would double the ring-buffer traffic for nothing. User space pairs the two egress streams.
        let sender = FlowKey {
            hook: HOOK_CGROUP_EGRESS,
            ..key
        };
        // SAFETY: the value is only tested for presence, never read, so a concurrent update cannot be observed.
        if unsafe { FLOWS.get(&sender) }.is_some() {
            return Ok(());
        }
    }

    let ctx_ptr = skb.skb as *mut _;
    // The stream's state when it is known: every message after a connection's first, and every continuation. State
    // left by an earlier socket (same 4-tuple, same slot) does not count. A stream's state is in its socket's storage
    // from its second message on, and then holds the cookie, which spares the helper call; before that it is in the
    // socket's [`FIRST`] slot (TC, which sees no socket: in [`FLOWS`]).
    let sk = if cgroup {
        skb_sock(skb)
    } else {
        core::ptr::null_mut()
    };
    let sock = sock_flows(sk, false);
    let dir = if hook == HOOK_CGROUP_EGRESS { 1 } else { 0 };
    let in_sock = match sock {
        // SAFETY: a socket storage pointer, valid for the program's run; `dir` < 2.
        Some(s) => (unsafe { (*s).dir[dir].cookie }) != 0,
        None => false,
    };
    let (entry, cookie) = match sock {
        // SAFETY: as above.
        Some(s) if in_sock => unsafe {
            (
                Some(core::ptr::addr_of_mut!((*s).dir[dir])),
                (*s).dir[dir].cookie,
            )
        },
        _ => {
            // SAFETY: the helper takes the program's own context, valid for its run.
            let cookie = unsafe { bpf_get_socket_cookie(ctx_ptr as *mut _) };
            if cgroup {
                // Every skb these hooks see has a socket (a zero cookie, which would match an empty slot, is
                // excluded below).
                (FIRST.get_ptr_mut(first_slot(cookie, dir)), cookie)
            } else {
                (FLOWS.get_ptr_mut(&key), cookie)
            }
        }
    };
    let known = match entry {
        // SAFETY: a map value pointer from a successful lookup, valid for the program's run; another CPU updating
        // the same stream at once can at worst give a stale cookie, which makes this record a stream start.
        Some(p) if unsafe { (*p).cookie } == cookie && (cookie != 0 || !cgroup) => Some(p),
        _ => None,
    };
    if let Some(p) = known {
        // SAFETY: as for the cookie above.
        if unsafe { (*p).remaining } == NOT_HTTP {
            return Ok(());
        }
    }
    let start = message_start(skb, payload_off, payload_len);
    let mut cap = cfg.capture_bytes as usize;
    if cap > MAX_CAPTURE {
        cap = MAX_CAPTURE;
    }
    let flags;
    let budget;
    if let Start::Common | Start::Extension = start {
        if let Start::Extension = start {
            count(CNT_START_EXTENSION);
        }
        flags = DATA_FLAG_START;
        budget = cap;
    } else {
        let Some(st) = known else {
            if let Start::Not(why) = start {
                count(why.counter());
                if why.never_http1() {
                    // Remembered so that the stream's later segments are not classified again.
                    let st = FlowState {
                        remaining: NOT_HTTP,
                        next_seq: 0,
                        cookie,
                        task_ns: 0,
                    };
                    store(entry, sock, dir, &key, &st);
                    mark_local_sender(skb, &cfg, &key, &st);
                }
            }
            return Ok(());
        };
        // SAFETY: as for the cookie above: a valid map value, read while this packet's stream is processed.
        let st = unsafe { &*st };
        if st.remaining == 0 || st.next_seq != seq {
            return Ok(());
        }
        flags = DATA_FLAG_CONTINUATION;
        budget = st.remaining as usize;
    }
    let mut copy = if payload_len < budget {
        payload_len
    } else {
        budget
    };
    // A message start whose body the agent does not read: its head only, and none of its later segments.
    let mut body_skipped = false;
    // SAFETY: a read-only global the loader sets; volatile so that the compiler does not fold its initial value.
    let scan = unsafe { core::ptr::read_volatile(&HEAD_SCAN_ENABLED) } != 0;
    if scan && flags == DATA_FLAG_START && copy > HEAD_SCAN_MIN {
        let h = head_copy(skb, payload_off, copy, payload_len);
        if h != 0 && h < copy {
            copy = h;
            body_skipped = true;
        }
    }
    let trunc = if payload_len > copy {
        DATA_FLAG_TRUNCATED
    } else {
        0
    };
    if body_skipped {
        count(CNT_BODY_NOT_COPIED);
    } else if trunc != 0 {
        count(CNT_TRUNCATED);
    }
    // On a local socket's egress TCP has stamped the segment with its departure time (CLOCK_MONOTONIC, as
    // bpf_ktime_get_ns; see `DataHeader::ts_ns`): a field read instead of a helper call and a clock read, about 35 ns
    // per run. Loopback nginx under wrk, drain-only, 11 alternating rounds: lower in 10, median 80 ns per request
    // of 1,050-1,410.
    // SAFETY: the program's own context, valid for its run; a helper without arguments or side effects.
    let ts_ns = match unsafe { (*skb.skb).tstamp } {
        t if t != 0 && hook == HOOK_CGROUP_EGRESS => t,
        _ => unsafe { bpf_ktime_get_ns() },
    };
    // The socket's identity (its cgroup, and on egress the sending task) in a stream's first record and then once a
    // second: user space keeps it per socket, and the helpers that read it are a good part of this program's cost
    // per record.
    let egress = hook == HOOK_CGROUP_EGRESS || hook == HOOK_TC_EGRESS;
    let task_ns = match known {
        // SAFETY: a valid map value (see `known`).
        Some(p) => unsafe { (*p).task_ns },
        None => 0,
    };
    let refresh = task_ns == 0 || ts_ns.wrapping_sub(task_ns) >= TASK_REFRESH_NS;
    let send_task = egress && refresh;
    let st = FlowState {
        remaining: if body_skipped {
            0
        } else {
            (budget - copy) as u32
        },
        next_seq: seq.wrapping_add(payload_len as u32),
        cookie,
        task_ns: if refresh { ts_ns } else { task_ns },
    };
    if known.is_none() {
        store(entry, sock, dir, &key, &st);
        mark_local_sender(skb, &cfg, &key, &st);
    } else if !in_sock && flags == DATA_FLAG_START && !sk.is_null() {
        // A local socket's second message (or later, when its storage could not be had): from here on its stream
        // lives in the socket. A connection with one exchange never pays for storage.
        store(entry, sock.or_else(|| sock_flows(sk, true)), dir, &key, &st);
    } else if let Some(p) = entry {
        // SAFETY: a valid state pointer (see `known`); FlowState is plain data, so a racing writer leaves one of the
        // two states, either of which is a consistent stream state.
        unsafe { *p = st };
    }
    if copy == 0 {
        return Ok(());
    }

    let (pid_tgid, comm) = if send_task {
        (bpf_get_current_pid_tgid(), current_comm())
    } else {
        (0, zero_words())
    };
    let hdr = DataHeader {
        kind: EVENT_DATA,
        hook,
        ts_ns,
        cookie,
        cgroup_id: if refresh && (cgroup || cookie != 0) {
            // SAFETY: the helper takes the program's own context, valid for its run.
            unsafe { bpf_skb_cgroup_id(ctx_ptr) }
        } else {
            0
        },
        pid_tgid,
        comm: words_bytes(comm),
        saddr: addr_bytes(key.saddr),
        daddr: addr_bytes(key.daddr),
        sport: key.sport,
        dport: key.dport,
        seq,
        payload_len: payload_len as u32,
        cap_len: 0,
        flags: flags | trunc,
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
    };
    // Reservations must have a constant size: the smallest record class that holds the copy. The payload is
    // loaded straight into the reserved record, so nothing is copied twice.
    let sent = if copy <= 256 {
        emit::<256>(skb, &hdr, payload_off, copy)
    } else if copy <= 1024 {
        emit::<1024>(skb, &hdr, payload_off, copy)
    } else if copy <= 4096 {
        emit::<4096>(skb, &hdr, payload_off, copy)
    } else {
        emit::<MAX_CAPTURE>(skb, &hdr, payload_off, copy)
    };
    match sent {
        Ok(()) => Ok(()),
        Err(why) => {
            count_lost(skb, payload_off, payload_len, flags, why);
            Err(())
        }
    }
}

/// The skb's full socket, or null (cgroup_skb only).
#[inline(always)]
fn skb_sock(skb: &SkBuff) -> *mut core::ffi::c_void {
    // SAFETY: the context pointer is valid for the program's run; `sk` is a readable cgroup_skb context field.
    unsafe { (*skb.skb).__bindgen_anon_2.sk as *mut _ }
}

/// The [`SOCK_FLOWS`] storage of socket `sk` (null: none), created when `create` says so. `None` when the socket has
/// none; a failed creation (request and time-wait sockets hold none; or no memory) is counted.
#[inline(always)]
fn sock_flows(sk: *mut core::ffi::c_void, create: bool) -> Option<*mut SockFlows> {
    if sk.is_null() {
        return None;
    }
    // SAFETY: the map is this program's socket storage map and `sk` the skb's socket, checked non-null; the helper
    // returns null for sockets that hold no storage (or, creating, cannot hold it).
    let p = unsafe {
        bpf_sk_storage_get(
            core::ptr::addr_of!(SOCK_FLOWS) as *mut _,
            sk,
            core::ptr::null_mut(),
            if create {
                BPF_SK_STORAGE_GET_F_CREATE as u64
            } else {
                0
            },
        )
    } as *mut SockFlows;
    if p.is_null() {
        if create {
            count(CNT_SOCK_STORAGE_UNAVAILABLE);
        }
        return None;
    }
    Some(p)
}

/// Writes the state of a stream that had none (or a stale one, or that moves to its socket): into `sock`'s direction
/// `dir` when the socket has storage, else into `entry` (a [`FIRST`] slot or [`FLOWS`] value) in place, else (TC) as
/// a new [`FLOWS`] entry.
#[inline(always)]
fn store(
    entry: Option<*mut FlowState>,
    sock: Option<*mut SockFlows>,
    dir: usize,
    key: &FlowKey,
    st: &FlowState,
) {
    if let Some(s) = sock {
        // SAFETY: a valid storage value for the program's run; `dir` < 2; FlowState is plain data.
        unsafe { (*s).dir[dir & 1] = *st };
    } else if let Some(p) = entry {
        // SAFETY: a valid state pointer from a lookup in this run; FlowState is plain data.
        unsafe { *p = *st };
    } else if FLOWS.insert(key, st, 0).is_err() {
        count(CNT_FLOW_MAP_FULL);
    }
}

/// At a stream's first message (a stream with no state), leaves a local socket's egress key in [`FLOWS`] for the
/// receiving end's ingress hook, which tests it to skip what a local sender's egress already copied (see `sender` in
/// [`capture`]); only the key's presence is read, so a key already there (this 4-tuple's earlier connection) stays.
/// Not for packets that leave through the loopback device while loopback ingress is skipped: no hook looks for their
/// key, and the lookup (a miss in a cold bucket) and insert (evicting the LRU's oldest entry) were, under connection
/// churn, the largest part of this program's cost per connection. Egress skbs carry their output device here.
#[inline(always)]
fn mark_local_sender(skb: &SkBuff, cfg: &KernelConfig, key: &FlowKey, st: &FlowState) {
    if key.hook != HOOK_CGROUP_EGRESS {
        return;
    }
    // SAFETY: the context pointer is valid for the program's run; ifindex is readable in cgroup_skb.
    let ifindex = unsafe { core::ptr::read_volatile(&(*skb.skb).ifindex) };
    if ifindex == LOOPBACK_IFINDEX && cfg.skip_lo_ingress != 0 {
        return;
    }
    // SAFETY: the value is only tested for presence, never read.
    if unsafe { FLOWS.get(key) }.is_none() && FLOWS.insert(key, st, 0).is_err() {
        count(CNT_FLOW_MAP_FULL);
    }
}

/// Why [`emit`] submitted nothing (it counts the reason itself).
#[derive(Clone, Copy)]
enum Lost {
    RingFull,
    LoadFailed,
}

/// Counts what a record that could not be submitted was: a request start (an exchange lost), a response start or
/// a continuation. Only on this cold path are the first bytes read again to tell a request from a response.
#[inline(always)]
fn count_lost(skb: &SkBuff, off: usize, len: usize, flags: u32, why: Lost) {
    if flags & DATA_FLAG_START == 0 {
        if let Lost::RingFull = why {
            count(CNT_RINGBUF_FULL_CONTINUATION);
        }
        return;
    }
    let mut head = [0u8; START_PEEK];
    if len >= START_PEEK {
        if let Ok(h) = read::<[u8; START_PEEK]>(skb, off) {
            head = h;
        }
    } else if let Ok(h) = read::<[u8; 8]>(skb, off) {
        head[..8].copy_from_slice(&h);
    }
    match (why, is_response_start(&head)) {
        (Lost::RingFull, false) => count(CNT_RINGBUF_FULL_REQUEST),
        (Lost::RingFull, true) => count(CNT_RINGBUF_FULL_RESPONSE),
        (Lost::LoadFailed, false) => count(CNT_LOAD_FAILED_REQUEST),
        (Lost::LoadFailed, true) => {}
    }
}

/// A data record as reserved in the ring buffer: the header and room for `N` payload bytes (`cap_len` are used).
#[repr(C)]
struct Record<const N: usize> {
    hdr: DataHeader,
    data: [u8; N],
}

/// Reserves a record with room for `N` (a power of two) bytes, loads `1..=N` payload bytes at `off` into it and
/// submits it (waking the reader only as [`submit_flags`] says). `copy` must be in `1..=N`.
#[inline(always)]
fn emit<const N: usize>(
    skb: &SkBuff,
    hdr: &DataHeader,
    off: usize,
    copy: usize,
) -> Result<(), Lost> {
    let Some(mut entry) = EVENTS.reserve::<Record<N>>(0) else {
        count(CNT_RINGBUF_FULL);
        return Err(Lost::RingFull);
    };
    let rec = entry.as_mut_ptr();
    // 1 <= n <= N in a form the verifier can follow.
    let n = ((copy - 1) & (N - 1)) + 1;
    // Raw helper: aya's load_bytes clamps to skb->len, which lets the verifier see a possible zero length.
    // SAFETY: `rec` is a reserved ring-buffer record with room for N >= n payload bytes, ours until submitted or
    // discarded; the helper checks `off + n` against the packet.
    let ret = unsafe {
        bpf_skb_load_bytes(
            skb.skb as *const _,
            off as u32,
            core::ptr::addr_of_mut!((*rec).data) as *mut _,
            n as u32,
        )
    };
    if ret != 0 {
        entry.discard(0);
        count(CNT_LOAD_FAILED);
        return Err(Lost::LoadFailed);
    }
    // SAFETY: the header field of the reserved record, ours until submitted; the ring buffer places records at 8-byte
    // boundaries, DataHeader's alignment, and addr_of_mut makes no reference to the uninitialised record.
    unsafe {
        core::ptr::addr_of_mut!((*rec).hdr).write(DataHeader {
            cap_len: n as u32,
            ..*hdr
        })
    };
    entry.submit(submit_flags());
    count(CNT_EVENTS);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
