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
    pub _pad: u32,
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

/// Per-CPU counters (array index). Failures and the few successes needed to compute rates.
pub const CNT_EVENTS: u32 = 0;
pub const CNT_RINGBUF_FULL: u32 = 1;
pub const CNT_FLOW_MAP_FULL: u32 = 2;
pub const CNT_LOAD_FAILED: u32 = 3;
pub const CNT_TRUNCATED: u32 = 4;
pub const CNT_NOT_PARSED: u32 = 5;
pub const CNT_CONN_EVENTS: u32 = 6;
pub const CNT_PROC_MAP_FULL: u32 = 7;
pub const CNT_MAX: u32 = 8;

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
