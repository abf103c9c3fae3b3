//! The kernel's half of leaving bodies uncopied: a message start's first bytes loaded into a per-CPU scratch and
//! [`head_copy_len`] (in `common`, where the flow tests mirror it) asked how much of the segment the agent needs.
//! Its own global function, so that the verifier checks the scan once instead of inside every path of `capture`.
use aya_ebpf::{
    helpers::generated::bpf_skb_load_bytes, macros::map, maps::PerCpuArray,
    programs::sk_buff::SkBuff,
};
use observer_common::*;

/// 1: message starts' heads are scanned ([`observer_head_copy`]). The loader sets 0 when the kernel's verifier does
/// not take the programs with the scan: read-only data, so the verifier then drops the scan's code as dead.
#[unsafe(no_mangle)]
pub(crate) static HEAD_SCAN_ENABLED: u32 = 1;

/// A message start's first bytes, for [`head_copy_len`]: one per CPU, a program runs to its end on one CPU.
#[map]
static HEAD: PerCpuArray<HeadScratch> = PerCpuArray::with_max_entries(1, 0);

/// [`head_copy_len`] on the first `copy` (> [`HEAD_SCAN_MIN`]) payload bytes at `off`, at most [`HEAD_SCAN`] of them
/// loaded into [`HEAD`]: how many bytes of the segment to copy when fewer than `copy` will do, else 0.
#[inline(always)]
pub(crate) fn head_copy(skb: &SkBuff, off: usize, copy: usize, payload_len: usize) -> usize {
    let Some(s) = HEAD.get_ptr_mut(0) else {
        return 0;
    };
    let n = if copy < HEAD_SCAN { copy } else { HEAD_SCAN };
    // 1 <= n <= HEAD_SCAN in a form the verifier can follow.
    let n = ((n - 1) & (HEAD_SCAN - 1)) + 1;
    // SAFETY: `s` is this CPU's scratch value, valid for the program's run, with room for HEAD_SCAN >= n bytes; the
    // helper checks `off + n` against the packet.
    if unsafe { bpf_skb_load_bytes(skb.skb as *const _, off as u32, s as *mut _, n as u32) } != 0 {
        return 0;
    }
    match observer_head_copy(s, n as u64, payload_len as u64) as usize {
        h if h < copy => h,
        _ => 0,
    }
}

/// [`head_copy_len`] as a global function, which the verifier checks once, on its own, with arguments it knows only
/// by type, and whose answer it sees as one unknown number: `capture` already takes most of the verifier's
/// million-instruction budget, and the scan verified inline multiplied its paths past it. 0: copy as before.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn observer_head_copy(s: *mut HeadScratch, n: u64, payload_len: u64) -> u64 {
    if s.is_null() || n == 0 || n > HEAD_SCAN as u64 {
        return 0;
    }
    // SAFETY: non-null, and the caller passes this CPU's scratch value (the verifier checks the pointer against the
    // size of a HeadScratch); nothing else uses it during this program's run.
    head_copy_len(unsafe { &mut *s }, n as usize, payload_len as usize).unwrap_or(0) as u64
}
