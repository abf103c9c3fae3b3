//! Records shared by the kernel programs and the agent: what crosses the ring buffer and the maps.
//!
//! Every type is `#[repr(C)]`, plain old data with explicit padding, no bool/enum/Option inside, so both sides agree
//! on the layout byte for byte. Event kinds and counter indices are stable numbers: never renumber them.
#![no_std]
#![warn(clippy::undocumented_unsafe_blocks)]

mod head;
pub use head::{
    head_copy_len, kernel_copy_len, HeadScratch, BODY_PREFIX, HEAD_SCAN, HEAD_SCAN_MIN,
};

/// First field of every ring-buffer record: says which struct follows.
pub const EVENT_DATA: u32 = 1;
pub const EVENT_CONN: u32 = 2;

/// Where a data record was observed.
pub const HOOK_CGROUP_INGRESS: u32 = 1;
pub const HOOK_CGROUP_EGRESS: u32 = 2;
pub const HOOK_TC_INGRESS: u32 = 3;
pub const HOOK_TC_EGRESS: u32 = 4;

/// `DataHeader::flags`: the segment starts an HTTP message (method token or `HTTP/1.`).
pub const DATA_FLAG_START: u32 = 1;
/// `DataHeader::flags`: the segment continues a message whose start was emitted, within the capture cap.
pub const DATA_FLAG_CONTINUATION: u32 = 2;
/// `DataHeader::flags`: the segment carried more payload than was copied (cap reached, or a body the agent does not
/// read left uncopied: see [`head_copy_len`]).
pub const DATA_FLAG_TRUNCATED: u32 = 4;

/// Largest capture the kernel can copy for one message; `--capture-bytes` is clamped to it.
pub const MAX_CAPTURE: usize = 16384;
/// Default bytes of headers captured per message.
pub const DEFAULT_CAPTURE: u32 = 4096;

/// A TCP segment (or GSO super-segment) that starts or continues an HTTP message. `cap_len` payload bytes follow the
/// header in the same ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataHeader {
    pub kind: u32,
    /// One of `HOOK_*`.
    pub hook: u32,
    /// CLOCK_MONOTONIC ns: on a local socket's egress (cgroup_skb), the departure time TCP stamped on the segment
    /// (`skb->tstamp`: when TCP sent it, later by the pacing delay when the socket is paced); elsewhere, or when
    /// unstamped, `bpf_ktime_get_ns` when the segment was seen.
    pub ts_ns: u64,
    /// Socket cookie of the local socket, 0 when no local socket owns the packet (TC ingress, forwarded traffic).
    pub cookie: u64,
    /// cgroup v2 id of the local socket, 0 when unknown. Like `pid_tgid`, set in a stream's first record (at this
    /// hook) and then at most once a second; 0 in the others (user space keeps it per socket).
    pub cgroup_id: u64,
    /// `bpf_get_current_pid_tgid` at the hook: reliable on egress from a syscall, arbitrary in softirq. Set (with
    /// `comm`) in the first egress record of a stream and then at most once a second; 0 in the others.
    pub pid_tgid: u64,
    pub comm: [u8; 16],
    /// Packet source and destination, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    /// TCP sequence number of the first payload byte.
    pub seq: u32,
    /// Payload bytes the segment carried in total.
    pub payload_len: u32,
    /// Payload bytes copied after this header (<= payload_len, <= MAX_CAPTURE).
    pub cap_len: u32,
    /// `DATA_FLAG_*` bits.
    pub flags: u32,
    /// TCP acknowledgement number: every byte the peer sent before it had arrived when the segment left. A
    /// response's tells whether the request's declared body went on the wire (its uncopied segments send nothing).
    pub ack: u32,
}

/// `ConnEvent::op`: a socket connect() from a local process (pid is reliable).
pub const CONN_CONNECT: u32 = 1;
/// Active side established (the local socket connected): the kernel side only asks for the socket's state changes
/// then and sends no record (the `CONN_CONNECT` record names the same socket and endpoints); user space counts one
/// as malformed.
pub const CONN_ACTIVE_ESTABLISHED: u32 = 2;
/// Passive side established (the local socket was accepted): as for `CONN_ACTIVE_ESTABLISHED`, the kernel side only
/// asks for the socket's state changes and sends no record (its cookie and endpoints are in every data record of the
/// socket; user space tells a later connection on an evicted connection's endpoints by its socket cookie); user space
/// counts one as malformed.
pub const CONN_PASSIVE_ESTABLISHED: u32 = 3;
/// The socket reached TCP_CLOSE; byte totals and end sequence numbers are final.
pub const CONN_CLOSE: u32 = 4;

/// Connection lifecycle from sock_ops.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnEvent {
    pub kind: u32,
    /// One of `CONN_*`.
    pub op: u32,
    pub ts_ns: u64,
    pub cookie: u64,
    pub cgroup_id: u64,
    pub pid_tgid: u64,
    pub comm: [u8; 16],
    /// Local and remote address, IPv4 as IPv4-mapped IPv6.
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// Host byte order.
    pub lport: u16,
    pub rport: u16,
    /// Next sequence number to send / expected to receive (stream ends at close).
    pub snd_nxt: u32,
    pub rcv_nxt: u32,
    pub srtt_us: u32,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub total_retrans: u32,
    pub _pad: u32,
}

/// Size of the ring buffer all records go through.
pub const RING_BYTES: u32 = 16 << 20;

/// Records are submitted without waking the reader, except the first that finds it asleep with this many bytes
/// waiting in the ring: under load, that is what wakes the reader, about once per 512 KiB (several hundred exchanges
/// of a small page; a thirty-second of [`RING_BYTES`]). Measured on a 2-vCPU VM in alternating runs against a saturated
/// loopback nginx: capturing with a reader woken by a 2 ms timer cost it about 14% of its throughput, with a reader
/// woken at a 256 KiB mark about 8% (an early reader, since replaced, did worse at 1 MiB). With the reader that
/// says when it sleeps (the eBPF object's `READER` flag), 1 MiB against 256 KiB (stop 27, 10 alternating rounds,
/// ClickHouse sink, about 100k exchanges/s): the capture thread's context switches 560 -> 156 a second,
/// agent CPU per event -0.087 ± 0.033 µs (-6%), kernel time per exchange about -80 ns (fewer self-IPIs of the
/// wake-up), throughput and p99 no worse with that sink; with the NDJSON sink slightly worse (stop 28, 8 rounds:
/// agent +0.105 ± 0.086 µs, throughput -4k ± 3k of 113k requests/s). Not larger: at 4 MiB (stop 28) kernel time
/// fell by another 110 ns and the agent's with the ClickHouse sink by 7%, but each wake-up handed the capture thread
/// some 5 ms of work on a core the servers needed, and with the NDJSON sink a saturated nginx lost 9% of its
/// throughput and its p99 went from 1.0 to 3.4 ms (BENCHMARKS.md). A timer shorter than the scheduler tick makes the
/// kernel reprogram the timer hardware for each wake-up, which on a VM traps to the hypervisor; a wake-up at this
/// mark does not. 512 KiB since message starts are copied head only (stop 29, [`head_copy_len`]): a small page's
/// exchange then takes half the ring bytes it did, and at 1 MiB the reader's bursts, twice as many exchanges long,
/// cost a saturated nginx (NDJSON sink) 1.1 ± 0.1 ms of p99 (4 alternating rounds), as the 4 MiB mark had; 512 KiB
/// hands the reader as many exchanges per wake-up as 1 MiB did before.
pub const RING_WAKE_BYTES: u32 = 512 << 10;

/// Words in the `PORTS` bitmap: 65536 ports, 64 to a word.
pub const PORT_WORDS: u32 = 1024;

/// The `PORTS` word holding `port`'s bit.
#[inline(always)]
pub const fn port_word(port: u16) -> u32 {
    (port >> 6) as u32
}

/// `port`'s bit within its `PORTS` word.
#[inline(always)]
pub const fn port_bit(port: u16) -> u64 {
    1 << (port & 63)
}

/// Kernel configuration written by the agent before attaching (array map, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// Bytes of each message captured (start plus continuations), <= MAX_CAPTURE.
    pub capture_bytes: u32,
    /// Non-zero: only ports set in the `PORTS` bitmap are captured (either end of the connection).
    pub filter_ports: u32,
    /// Non-zero: cgroup ingress ignores loopback packets. Set when the programs sit on the cgroup v2 root: every
    /// loopback packet was then sent by a local socket whose egress is already captured.
    pub skip_lo_ingress: u32,
    pub _pad: u32,
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self {
            capture_bytes: DEFAULT_CAPTURE,
            filter_ports: 0,
            skip_lo_ingress: 0,
            _pad: 0,
        }
    }
}

/// Methods of the IANA HTTP Method Registry (<https://www.iana.org/assignments/http-methods>), recognised by name
/// whatever follows them. `PRI` is left out: it only opens the HTTP/2 connection preface (`PRI * HTTP/2.0`).
/// Other methods (PURGE, M-SEARCH, ...) are recognised by the shape of their request line ([`extension_start`]).
pub const HTTP_METHODS: [&str; 39] = [
    "ACL",
    "BASELINE-CONTROL",
    "BIND",
    "CHECKIN",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LABEL",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MKREDIRECTREF",
    "MKWORKSPACE",
    "MOVE",
    "OPTIONS",
    "ORDERPATCH",
    "PATCH",
    "POST",
    "PROPFIND",
    "PROPPATCH",
    "PUT",
    "QUERY",
    "REBIND",
    "REPORT",
    "SEARCH",
    "TRACE",
    "UNBIND",
    "UNCHECKOUT",
    "UNLINK",
    "UNLOCK",
    "UPDATE",
    "UPDATEREDIRECTREF",
    "VERSION-CONTROL",
];

/// Longest method token recognised, registered or not (the packed form [`MethodWords`] holds this many bytes).
pub const MAX_METHOD_LEN: usize = 24;
/// A method token packed little-endian into three words, zero-padded: compared in three instructions.
pub type MethodWords = [u64; 3];

/// [`HTTP_METHODS`] packed as [`MethodWords`].
pub const HTTP_METHOD_WORDS: [MethodWords; HTTP_METHODS.len()] = {
    let mut out = [[0u64; 3]; HTTP_METHODS.len()];
    let mut m = 0;
    while m < HTTP_METHODS.len() {
        let b = HTTP_METHODS[m].as_bytes();
        let mut i = 0;
        while i < b.len() {
            out[m][i / 8] |= (b[i] as u64) << ((i % 8) * 8);
            i += 1;
        }
        m += 1;
    }
    out
};

const _: () = {
    let mut m = 0;
    while m < HTTP_METHODS.len() {
        assert!(HTTP_METHODS[m].len() <= MAX_METHOD_LEN);
        m += 1;
    }
};

/// `tchar` of RFC 9110 §5.6.2: the characters of a method token.
#[inline(always)]
pub const fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// True when the first payload bytes are the start of a request with one of the common methods or of a response:
/// nearly every message start, told from 8 bytes the kernel reads straight from the packet. The rest go through
/// [`extension_start`].
#[inline(always)]
pub fn is_common_start(p: &[u8; 8]) -> bool {
    match &p[..4] {
        b"GET " | b"PUT " | b"POST" | b"HEAD" | b"DELE" | b"PATC" | b"OPTI" | b"CONN" | b"TRAC" => {
            true
        }
        // The rest of the IANA registry by the first four bytes of each name, and two common extensions (PURGE,
        // M-SEARCH). Body bytes that happen to start this way are told apart in user space, by the framing.
        b"ACL " | b"BASE" | b"BIND" | b"CHEC" | b"COPY" | b"LABE" | b"LINK" | b"LOCK" | b"MERG"
        | b"MKAC" | b"MKCA" | b"MKCO" | b"MKRE" | b"MKWO" | b"MOVE" | b"ORDE" | b"PROP"
        | b"QUER" | b"REBI" | b"REPO" | b"SEAR" | b"UNBI" | b"UNCH" | b"UNLI" | b"UNLO"
        | b"UPDA" | b"VERS" | b"PURG" | b"M-SE" => true,
        b"HTTP" => p[4] == b'/' && p[5] == b'1' && p[6] == b'.',
        _ => false,
    }
}

/// Bytes the kernel reads to find a message start after empty lines.
pub const START_PEEK: usize = 12;

/// How many of 4 first bytes are empty lines a message may follow: `\r\n\r\n` 4, `\r\n` or `\n\n` 2, `\n` 1,
/// else 0 (RFC 9112 §2.2).
#[inline(always)]
pub fn empty_lines_len(p: [u8; 4]) -> usize {
    if p[0] == b'\r' && p[1] == b'\n' {
        if p[2] == b'\r' && p[3] == b'\n' {
            4
        } else {
            2
        }
    } else if p[0] == b'\n' {
        if p[1] == b'\n' {
            2
        } else {
            1
        }
    } else {
        0
    }
}

/// Whether 12 first bytes start a message after at most 4 bytes of empty lines (`\r\n\r\n`, `\r\n`, `\n\n`,
/// `\n`; RFC 9112 §2.2): [`is_common_start`] on the 8 bytes after them. Branches only, no loop: the kernel runs it on
/// every segment.
#[inline(always)]
pub fn is_start_after_empty_lines(p: &[u8; START_PEEK]) -> bool {
    let at = |s: usize| -> [u8; 8] {
        [
            p[s & 3],
            p[(s & 3) + 1],
            p[(s & 3) + 2],
            p[(s & 3) + 3],
            p[(s & 3) + 4],
            p[(s & 3) + 5],
            p[(s & 3) + 6],
            p[(s & 3) + 7],
        ]
    };
    let skip = empty_lines_len([p[0], p[1], p[2], p[3]]);
    if skip == 4 {
        return is_common_start(&[p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11]]);
    }
    is_common_start(&at(skip))
}

/// Whether a segment the kernel took for a message start (its first [`START_PEEK`] bytes, zero-padded) starts a
/// response (`HTTP/` after at most 4 bytes of empty lines) rather than a request. Asked only of records the kernel
/// could not submit, to count what was lost.
#[inline(always)]
pub fn is_response_start(p: &[u8; START_PEEK]) -> bool {
    let s = empty_lines_len([p[0], p[1], p[2], p[3]]);
    // `get`: no bounds-check panic path for the verifier (s + 4 <= 8 is always in bounds).
    let at = |i: usize| p.get(s + i).copied().unwrap_or(0);
    at(0) == b'H' && at(1) == b'T' && at(2) == b'T' && at(3) == b'P' && at(4) == b'/'
}

/// Bytes the kernel reads for [`extension_start`] (16, zero-padded, when the segment is shorter). A power of two:
/// indexes are masked into it, which the compiler and the verifier both see are in bounds.
pub const EXTENSION_PEEK: usize = 32;
const PEEK_MASK: usize = EXTENSION_PEEK - 1;
/// Longest method token [`extension_start`] recognises: with a space and a target start it fits 16 bytes, the
/// shortest complete request (`X / HTTP/1.0\r\n\r\n`).
pub const MAX_EXTENSION_METHOD_LEN: usize = 14;

/// Why [`extension_start`] did not take a segment for a request start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStart {
    /// Fewer than 16 bytes: no complete request line fits.
    Short,
    /// No method token of 1..=[`MAX_EXTENSION_METHOD_LEN`] token characters followed by a space.
    NoToken,
    /// A token and a space, but no request target after them (`/`, `*` or `http`).
    NoTarget,
    /// `PRI * `: the HTTP/2 connection preface, not an HTTP/1.x request.
    Http2Preface,
    /// A TLS handshake record (content type 22, version 3.x): an encrypted stream.
    Tls,
}

/// First byte of a TLS handshake record, followed by the major version 3 (SSL 3.0 to TLS 1.3 all say 3.x).
const TLS_HANDSHAKE: u8 = 0x16;

/// A request with any method, registered or not (PURGE, BREW, ...), by the shape of the start of its request line:
/// `TOKEN SP TARGET` with TOKEN 1..=[`MAX_EXTENSION_METHOD_LEN`] `tchar`s and TARGET starting with `/` (origin
/// form), `*` or `http` (absolute form), after at most 4 bytes of empty lines. `len` is how many of the bytes are
/// the segment's (at least 16 for a complete request). The kernel runs it only on segments [`is_common_start`]
/// rejected: fixed offsets and one bounded scan, so its cost stays off the common path.
#[inline(always)]
pub fn extension_start(p: &[u8; EXTENSION_PEEK], len: usize) -> Result<(), NotStart> {
    if len < 16 {
        return Err(NotStart::Short);
    }
    if p[0] == TLS_HANDSHAKE && p[1] == 3 {
        return Err(NotStart::Tls);
    }
    let skip = empty_lines_len([p[0], p[1], p[2], p[3]]);
    // The token's length: the first non-tchar within MAX_EXTENSION_METHOD_LEN + 1 bytes.
    let mut n = MAX_EXTENSION_METHOD_LEN + 1;
    let mut i = 0;
    while i <= MAX_EXTENSION_METHOD_LEN {
        if !is_tchar(p[(skip + i) & PEEK_MASK]) {
            n = i;
            break;
        }
        i += 1;
    }
    let sp = skip + n;
    if n == 0 || n > MAX_EXTENSION_METHOD_LEN || p[sp & PEEK_MASK] != b' ' {
        return Err(NotStart::NoToken);
    }
    if n == 3
        && p[skip & PEEK_MASK] == b'P'
        && p[(skip + 1) & PEEK_MASK] == b'R'
        && p[(skip + 2) & PEEK_MASK] == b'I'
    {
        return Err(NotStart::Http2Preface);
    }
    let t = sp + 1;
    let target = |k: usize| p[(t + k) & PEEK_MASK];
    let absolute = t + 4 <= len
        && target(0) == b'h'
        && target(1) == b't'
        && target(2) == b't'
        && target(3) == b'p';
    if t < len && (target(0) == b'/' || target(0) == b'*' || absolute) {
        Ok(())
    } else {
        Err(NotStart::NoTarget)
    }
}

/// Whether a segment starting with `payload` is classified as a message start by the kernel: [`is_common_start`]
/// (after empty lines) or, for the rest, [`extension_start`]. The kernel runs the same two steps without this function
/// (it reads the bytes from the packet and counts rejections); user-space tests use it to mirror the kernel.
pub fn kernel_sees_start(payload: &[u8]) -> bool {
    let common = match payload.first_chunk::<START_PEEK>() {
        Some(p) => is_start_after_empty_lines(p),
        None => payload.first_chunk::<8>().is_some_and(is_common_start),
    };
    common || {
        let mut p = [0u8; EXTENSION_PEEK];
        let n = payload.len().min(EXTENSION_PEEK);
        p[..n].copy_from_slice(&payload[..n]);
        extension_start(&p, payload.len()).is_ok()
    }
}

/// Per-CPU counters (array index). Failures and the few successes needed to compute rates.
pub const CNT_EVENTS: u32 = 0;
pub const CNT_RINGBUF_FULL: u32 = 1;
pub const CNT_FLOW_MAP_FULL: u32 = 2;
pub const CNT_LOAD_FAILED: u32 = 3;
pub const CNT_TRUNCATED: u32 = 4;
pub const CNT_NOT_PARSED: u32 = 5;
pub const CNT_CONN_EVENTS: u32 = 6;
pub const CNT_PROC_MAP_FULL: u32 = 7;
/// A request start recognised by [`extension_start`] (a method [`is_common_start`] does not know).
pub const CNT_START_EXTENSION: u32 = 8;
/// Segments of no captured message (no stream state) that start no message, per [`NotStart`] reason.
pub const CNT_NOT_START_SHORT: u32 = 9;
pub const CNT_NOT_START_NO_TOKEN: u32 = 10;
pub const CNT_NOT_START_NO_TARGET: u32 = 11;
pub const CNT_NOT_START_HTTP2_PREFACE: u32 = 12;
pub const CNT_NOT_START_TLS: u32 = 13;
/// What each [`CNT_RINGBUF_FULL`] record was (they add up to it), and request starts whose payload could not be
/// loaded ([`CNT_LOAD_FAILED`]). A request start record lost is an exchange the agent cannot report: the kernel emits
/// each segment at one hook (cgroup ingress skips what a local sender's egress saw), so these two are the exchanges
/// lost, one each, unless requests are pipelined in one segment or TC and cgroup hooks see the same packets.
pub const CNT_RINGBUF_FULL_REQUEST: u32 = 14;
pub const CNT_RINGBUF_FULL_RESPONSE: u32 = 15;
pub const CNT_RINGBUF_FULL_CONTINUATION: u32 = 16;
pub const CNT_RINGBUF_FULL_CONN: u32 = 17;
pub const CNT_LOAD_FAILED_REQUEST: u32 = 18;
/// A local socket's second message whose socket could not be given per-socket state (the kernel gives none to
/// request and time-wait sockets, or could not allocate it): its stream's state stayed in the shared flow table.
pub const CNT_SOCK_STORAGE_UNAVAILABLE: u32 = 19;
/// Message starts whose body the kernel left uncopied ([`head_copy_len`]): a success, not counted as truncated.
pub const CNT_BODY_NOT_COPIED: u32 = 20;
pub const CNT_MAX: u32 = 21;

impl NotStart {
    /// The counter of segments dropped for this reason.
    pub const fn counter(self) -> u32 {
        match self {
            NotStart::Short => CNT_NOT_START_SHORT,
            NotStart::NoToken => CNT_NOT_START_NO_TOKEN,
            NotStart::NoTarget => CNT_NOT_START_NO_TARGET,
            NotStart::Http2Preface => CNT_NOT_START_HTTP2_PREFACE,
            NotStart::Tls => CNT_NOT_START_TLS,
        }
    }

    /// Whether a stream whose first payload is this can carry no HTTP/1.x message at all (TLS, HTTP/2): the kernel
    /// then stops looking at the stream.
    pub const fn never_http1(self) -> bool {
        matches!(self, NotStart::Http2Preface | NotStart::Tls)
    }
}

/// Names the agent exports each counter under (`observer_kernel_<name>_total`).
pub const COUNTER_NAMES: [&str; CNT_MAX as usize] = [
    "events",
    "ringbuf_full",
    "flow_map_full",
    "load_failed",
    "truncated",
    "not_parsed",
    "conn_events",
    "proc_map_full",
    "start_extension_method",
    "not_start_short",
    "not_start_no_token",
    "not_start_no_target",
    "not_start_http2_preface",
    "not_start_tls",
    "ringbuf_full_request_starts",
    "ringbuf_full_response_starts",
    "ringbuf_full_continuations",
    "ringbuf_full_conn_events",
    "load_failed_request_starts",
    "sock_storage_unavailable",
    "body_not_copied",
];

const _: () = assert!(core::mem::size_of::<DataHeader>() == 112);
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 128);
const _: () = assert!(core::mem::size_of::<KernelConfig>() == 16);

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: (this and the next two) Copy, #[repr(C)] structs of integers and byte arrays only, with no pointer or
    // reference, so every bit pattern is a valid value and aya may copy them to and from map memory byte for byte;
    // their layout is the kernel side's, sizes asserted above.
    unsafe impl aya::Pod for DataHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for KernelConfig {}
}

/// Reads a record of type `T` from the start of a ring-buffer item; `None` if it is too short.
#[cfg(feature = "user")]
pub fn read_record<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; T is a repr(C) POD; read_unaligned tolerates any alignment.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn message_starts_after_empty_lines_and_by_every_registered_method() {
        for m in HTTP_METHODS.iter().chain(&["PURGE", "M-SEARCH"]) {
            let line = std::format!("{m} /x HTTP/1.1\r\n");
            assert!(kernel_sees_start(line.as_bytes()), "{m}");
            for lead in ["\r\n", "\r\n\r\n", "\n", "\n\n"] {
                let line = std::format!("{lead}{m} /x HTTP/1.1\r\n");
                assert!(kernel_sees_start(line.as_bytes()), "{lead:?}{m}");
            }
        }
        assert!(kernel_sees_start(b"\r\nHTTP/1.1 200 OK\r\n"));
        for no in [
            &b"Host: x\r\nAccept: */*"[..],
            b"{\"a\": 1, \"b\": 2}",
            b"\r\n\r\n\r\nGET / HTTP/1.1",
            b"GET",
        ] {
            assert!(!kernel_sees_start(no), "{:?}", std::str::from_utf8(no));
        }
    }

    #[test]
    fn extension_methods_by_the_shape_of_the_request_line() {
        let shape = |b: &[u8]| {
            let mut p = [0u8; EXTENSION_PEEK];
            let n = b.len().min(EXTENSION_PEEK);
            p[..n].copy_from_slice(&b[..n]);
            extension_start(&p, b.len())
        };
        for yes in [
            &b"BREW /pot-1 HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"NOTREGISTERED /long HTTP/1.1\r\n\r\n",
            b"X / HTTP/1.0\r\n\r\n",
            b"FOO_BAR.v2 * HTTP/1.1\r\n\r\n",
            b"PURGE http://cache.test/a HTTP/1.1\r\n\r\n",
            b"\r\n\r\nBREW /after-empty-lines HTTP/1.1\r\n",
            b"\nbrew /lower-case-too HTTP/1.1\r\n\r\n",
            b"FOURTEENCHARSX /x HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(shape(yes), Ok(()), "{:?}", std::str::from_utf8(yes));
            assert!(kernel_sees_start(yes), "{:?}", std::str::from_utf8(yes));
        }
        for (no, why) in [
            (&b"BREW / HTTP/1.1"[..], NotStart::Short),
            (b"FIFTEENCHARSXYZ /x HTTP/1.1\r\n\r\n", NotStart::NoToken),
            (b"{\"a\": 1, \"b\": [1, 2, 3]}", NotStart::NoToken),
            (b"Host: x\r\nAccept: */*\r\n\r\n", NotStart::NoToken),
            (b" GET /leading-space HTTP/1.1\r\n", NotStart::NoToken),
            (
                b"EHLO mail.example.com\r\nMAIL FROM:<a@b>\r\n",
                NotStart::NoTarget,
            ),
            (
                b"SET session:1 value-of-some-length\r\n",
                NotStart::NoTarget,
            ),
            (b"Hello world, a text body segment", NotStart::NoTarget),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", NotStart::Http2Preface),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03GET / HTTP/1.1",
                NotStart::Tls,
            ),
        ] {
            assert_eq!(shape(no), Err(why), "{:?}", std::str::from_utf8(no));
            assert!(!kernel_sees_start(no), "{:?}", std::str::from_utf8(no));
        }
    }

    #[test]
    fn lost_starts_are_told_requests_or_responses() {
        let head = |b: &[u8]| {
            let mut p = [0u8; START_PEEK];
            p[..b.len().min(START_PEEK)].copy_from_slice(&b[..b.len().min(START_PEEK)]);
            p
        };
        for yes in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"\r\nHTTP/1.0 404",
            b"\r\n\r\nHTTP/1.1 2",
            b"\nHTTP/1.1",
        ] {
            assert!(
                is_response_start(&head(yes)),
                "{:?}",
                std::str::from_utf8(yes)
            );
        }
        for no in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"HTTPX / HTTP/1.1",
            b"\r\nPOST /HTTP/",
            b"HTTP",
        ] {
            assert!(
                !is_response_start(&head(no)),
                "{:?}",
                std::str::from_utf8(no)
            );
        }
    }

    #[test]
    fn registry_words_match_their_names() {
        assert_eq!(
            HTTP_METHOD_WORDS[8][0],
            u64::from_le_bytes(*b"GET\0\0\0\0\0")
        );
        let i = HTTP_METHODS
            .iter()
            .position(|m| *m == "UPDATEREDIRECTREF")
            .unwrap_or(0);
        assert_eq!(HTTP_METHOD_WORDS[i][2], u64::from(b'F'));
    }
}
