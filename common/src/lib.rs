//! Records shared by the kernel programs and the agent: what crosses the ring buffer and the maps.
//!
//! Every type is `#[repr(C)]`, plain old data with explicit padding, no bool/enum/Option inside, so both sides agree
//! on the layout byte for byte. Event kinds and counter indices are stable numbers: never renumber them.
#![no_std]

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
/// `DataHeader::flags`: the segment carried more payload than was copied (cap reached).
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
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the segment was seen.
    pub ts_ns: u64,
    /// Socket cookie of the local socket, 0 when no local socket owns the packet (TC ingress, forwarded traffic).
    pub cookie: u64,
    /// cgroup v2 id of the local socket, 0 when unknown.
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
/// Active side established (the local socket connected).
pub const CONN_ACTIVE_ESTABLISHED: u32 = 2;
/// Passive side established (the local socket was accepted).
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

/// Records are submitted without waking the reader, except the one that takes the bytes waiting in the ring past
/// this mark: under load, that is what wakes the reader, about once per 256 KiB (a few hundred records). Measured
/// on a 2-vCPU VM in alternating runs against a saturated loopback nginx: capturing with a reader woken by a 2 ms
/// timer cost it about 14% of its throughput, with a reader woken at this mark about 8%; marks of 128 KiB and
/// 1 MiB did worse than 256 KiB. A timer shorter than the scheduler tick makes the kernel reprogram the timer
/// hardware for each wake-up, which on a VM traps to the hypervisor; a wake-up at this mark does not.
pub const RING_WAKE_BYTES: u32 = 256 << 10;

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
/// Other methods (PURGE, M-SEARCH, ...) are recognised by the shape of their request line ([`classify_start`]).
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
/// Bytes of a segment's start the kernel reads to classify it when its first bytes are not one of the common
/// methods: a request line with an unregistered method must show its ` HTTP/1.` within them.
pub const START_WINDOW: usize = 256;
/// CR and LF bytes skipped before a message start (RFC 9112 §2.2: empty lines before a request line are ignored).
pub const MAX_LEADING_EMPTY: usize = 8;

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
/// [`classify_start`].
#[inline(always)]
pub fn is_common_start(p: &[u8; 8]) -> bool {
    match &p[..4] {
        b"GET " | b"PUT " | b"POST" | b"HEAD" | b"DELE" | b"PATC" | b"OPTI" | b"CONN" | b"TRAC" => {
            true
        }
        b"HTTP" => p[4] == b'/' && p[5] == b'1' && p[6] == b'.',
        _ => false,
    }
}

/// Whether a segment starting with `payload` is classified as a message start by the kernel: [`is_common_start`]
/// or, for what could still be one, [`classify_start`]. The kernel runs the same two steps without this function
/// (it reads the bytes from the packet and counts rejections); user-space tests use it to mirror the kernel.
pub fn kernel_sees_start(payload: &[u8]) -> bool {
    let Some(head) = payload.first_chunk::<8>() else {
        return false;
    };
    if is_common_start(head) {
        return true;
    }
    let mut buf = [0u8; START_WINDOW];
    let n = payload.len().min(START_WINDOW);
    buf[..n].copy_from_slice(&payload[..n]);
    matches!(classify_start(&buf, n), Start::Request | Start::Response)
}

/// What the first bytes of a segment are, as [`classify_start`] reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Not the start of an HTTP/1.x message.
    No,
    /// A request line: a registered method and a target, or any method token, a target and ` HTTP/1.`.
    Request,
    /// A status line (`HTTP/1.`).
    Response,
    /// A token, a space and a target, but what follows the target is not ` HTTP/1.`: not a request line (body
    /// text usually). Counted (`CNT_START_REJECTED`).
    Rejected,
    /// An unregistered method whose request line goes on past the bytes read (the window or the segment): cannot
    /// be told from body text, so not captured. Counted (`CNT_START_UNCONFIRMED`).
    Unconfirmed,
}

/// Classifies the first `len` bytes of `buf` (at most [`START_WINDOW`]) as a message start, after up to
/// [`MAX_LEADING_EMPTY`] CR/LF bytes.
///
/// Written for the eBPF verifier, which follows every path: three "find the first byte that ..." loops, each with a
/// single way out per iteration, so what a loop carries from one iteration to the next is its index alone and
/// paths that reach the same index merge; the method token is compared as three words loaded at once, not built
/// byte by byte; every index into `buf` is masked into it.
#[inline(always)]
pub fn classify_start(buf: &[u8; START_WINDOW], len: usize) -> Start {
    const MASK: usize = START_WINDOW - 1;
    let len = if len > START_WINDOW {
        START_WINDOW
    } else {
        len
    };
    // Empty lines.
    let mut lead = 0usize;
    while lead < MAX_LEADING_EMPTY {
        if lead >= len {
            return Start::No;
        }
        let b = buf[lead & MASK];
        if b != b'\r' && b != b'\n' {
            break;
        }
        lead += 1;
    }
    // The method token: `at` is the byte after it.
    let mut at = lead;
    while at < lead + MAX_METHOD_LEN + 1 {
        if at >= len || !is_tchar(buf[at & MASK]) {
            break;
        }
        at += 1;
    }
    let tok = at - lead;
    if tok == 0 || tok > MAX_METHOD_LEN || at + 1 >= len {
        return Start::No;
    }
    let words = token_words(buf, lead & 15, tok);
    let sep = buf[at & MASK];
    if sep == b'/' {
        // `HTTP/1.` after the empty lines: a status line.
        if words == HTTP_WORDS
            && at + 2 < len
            && buf[(at + 1) & MASK] == b'1'
            && buf[(at + 2) & MASK] == b'.'
        {
            return Start::Response;
        }
        return Start::No;
    }
    // A space, then the target's first byte: visible, not a space.
    let t = buf[(at + 1) & MASK];
    if sep != b' ' || t < 0x21 || t == 0x7f {
        return Start::No;
    }
    let mut m = 0;
    while m < HTTP_METHOD_WORDS.len() {
        if HTTP_METHOD_WORDS[m] == words {
            return Start::Request;
        }
        m += 1;
    }
    // An unregistered method: the target must end at a space followed by `HTTP/1.` within the window.
    let mut end = at + 2;
    while end < START_WINDOW {
        if end >= len {
            return Start::Unconfirmed;
        }
        let b = buf[end & MASK];
        if b <= b' ' || b == 0x7f {
            break;
        }
        end += 1;
    }
    if end >= START_WINDOW {
        return Start::Unconfirmed;
    }
    if buf[end & MASK] != b' ' {
        // A control character (CR, LF, TAB) inside or right after the target: not a request line.
        return Start::Rejected;
    }
    if end + 8 > len {
        return Start::Unconfirmed;
    }
    let mut k = 1;
    while k < 8 {
        if buf[(end + k) & MASK] != b" HTTP/1."[k] {
            return Start::Rejected;
        }
        k += 1;
    }
    Start::Request
}

/// `HTTP` as [`MethodWords`].
const HTTP_WORDS: MethodWords = [u64::from_le_bytes(*b"HTTP\0\0\0\0"), 0, 0];

/// The `tok` bytes at `off` (`tok` <= [`MAX_METHOD_LEN`], `off` < 16) as [`MethodWords`], zero-padded: three loads and
/// three masks instead of a loop.
#[inline(always)]
fn token_words(buf: &[u8; START_WINDOW], off: usize, tok: usize) -> MethodWords {
    let word = |k: usize| {
        let i = (off & 15) + 8 * k;
        let mut w = [0u8; 8];
        w.copy_from_slice(&buf[i..i + 8]);
        let w = u64::from_le_bytes(w);
        let keep = tok.saturating_sub(8 * k);
        if keep >= 8 {
            w
        } else {
            w & ((1u64 << (8 * keep)) - 1)
        }
    };
    [word(0), word(1), word(2)]
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
/// Segments starting with a token, a space and a target but no ` HTTP/1.` after the target ([`Start::Rejected`]).
pub const CNT_START_REJECTED: u32 = 8;
/// Segments starting with an unregistered method whose request line did not end in the bytes read
/// ([`Start::Unconfirmed`]): possibly a request, not captured.
pub const CNT_START_UNCONFIRMED: u32 = 9;
pub const CNT_MAX: u32 = 10;

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
    "start_rejected",
    "start_unconfirmed",
];

const _: () = assert!(core::mem::size_of::<DataHeader>() == 112);
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 128);
const _: () = assert!(core::mem::size_of::<KernelConfig>() == 16);

#[cfg(feature = "user")]
mod user {
    use super::*;
    unsafe impl aya::Pod for DataHeader {}
    unsafe impl aya::Pod for ConnEvent {}
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

    fn classify(bytes: &[u8]) -> Start {
        let mut buf = [0xaa; START_WINDOW];
        let n = bytes.len().min(START_WINDOW);
        buf[..n].copy_from_slice(&bytes[..n]);
        classify_start(&buf, n)
    }

    #[test]
    fn message_starts_by_registered_method_or_request_line_shape() {
        for req in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\r\n\r\nGET /x HTTP/1.1\r\n",
            b"\nPOST /x HTTP/1.0\r\n",
            b"PURGE /x HTTP/1.1\r\n",
            b"M-SEARCH * HTTP/1.1\r\n",
            b"QUERY /q HTTP/1.1\r\n",
            b"x_Custom.v2 http://h/ HTTP/1.1\r\n",
        ] {
            assert_eq!(
                classify(req),
                Start::Request,
                "{:?}",
                std::str::from_utf8(req)
            );
        }
        let mut long = std::vec::Vec::from(&b"BASELINE-CONTROL /"[..]);
        long.resize(400, b'a');
        assert_eq!(
            classify(&long),
            Start::Request,
            "a registered method needs no version"
        );
        for resp in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"\r\nHTTP/1.0 404 Not Found\r\n",
        ] {
            assert_eq!(
                classify(resp),
                Start::Response,
                "{:?}",
                std::str::from_utf8(resp)
            );
        }
    }

    #[test]
    fn what_is_not_a_start_is_rejected_or_unconfirmed() {
        for no in [
            &b"Host: x\r\n"[..],
            b"{\"a\": 1}",
            b"\x00\x01\x02\x03 x",
            b"GET  / HTTP/1.1",
            b"HTTP/2 200\r\n",
            b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n",
            b"ABCDEFGHIJKLMNOPQRSTUVWXY / HTTP/1.1\r\n",
            b"GET",
        ] {
            assert_eq!(classify(no), Start::No, "{:?}", std::str::from_utf8(no));
        }
        for rejected in [
            &b"hello world and more text"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"NOTREG /a\r\nHost: x\r\n",
        ] {
            assert_eq!(
                classify(rejected),
                Start::Rejected,
                "{:?}",
                std::str::from_utf8(rejected)
            );
        }
        let mut long = std::vec::Vec::from(&b"NOTREG /"[..]);
        long.resize(400, b'a');
        long.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(
            classify(&long),
            Start::Unconfirmed,
            "line longer than the window"
        );
        assert_eq!(
            classify(b"NOTREG /short"),
            Start::Unconfirmed,
            "segment ends in the line"
        );
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
