//! The sock_ops program: a connection's lifecycle as the agent needs it. A record at connect (the calling task's pid,
//! comm and cgroup, and both endpoints) and at close (the final sequence numbers and byte counts, so the agent knows
//! where each stream ended); the established callbacks only ask for the close. Records go through the same ring as
//! the data records, in production order.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE,
    },
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    },
    macros::sock_ops,
    programs::SockOpsContext,
    EbpfContext,
};
use observer_common::*;

use crate::{
    addr_bytes, config, count, current_comm, port_wanted, submit_flags, words_bytes, zero_words,
    EVENTS, V4_MAPPED,
};

#[sock_ops]
pub fn observer_sockops(ctx: SockOpsContext) -> u32 {
    let _ = on_sock_ops(&ctx);
    1
}

#[inline(always)]
fn on_sock_ops(ctx: &SockOpsContext) -> Result<(), ()> {
    let op = ctx.op();
    let kind = match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => CONN_CONNECT,
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => CONN_ACTIVE_ESTABLISHED,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => CONN_PASSIVE_ESTABLISHED,
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) != BPF_TCP_CLOSE {
                return Ok(());
            }
            CONN_CLOSE
        }
        _ => return Ok(()),
    };
    let family = ctx.family();
    let lport = ctx.local_port() as u16;
    let rport = u16::from_be((ctx.remote_port() >> 16) as u16);
    let cfg = config();
    if cfg.filter_ports != 0 && !port_wanted(lport) && !port_wanted(rport) {
        return Ok(());
    }
    if kind == CONN_ACTIVE_ESTABLISHED || kind == CONN_PASSIVE_ESTABLISHED {
        // Ask for state changes so the close (with final sequence numbers) reaches us.
        let flags = ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG;
        let _ = ctx.set_cb_flags(flags as i32);
        // No record. Active: the connect record named this socket and both its endpoints already (the local port is
        // bound before the connect callback). Passive: every data record of the socket carries its cookie and
        // endpoints, and an accepted socket has no task to name; the agent tells a later connection on an evicted
        // one's endpoints by the socket cookie. A record per connection end saved, which connection churn pays for.
        return Ok(());
    }
    // The connect callback runs in the calling task: the pid, comm and cgroup are the client's.
    let (pid_tgid, comm, cgroup_id) = if kind == CONN_CONNECT {
        // SAFETY: a helper without arguments; connect() runs in task context, where the current cgroup is defined.
        let cg = unsafe { bpf_get_current_cgroup_id() };
        (bpf_get_current_pid_tgid(), current_comm(), cg)
    } else {
        (0, zero_words(), 0)
    };
    // Addresses in words, as in [`FlowKey`]: byte arrays filled piecewise made the compiler zero the record through
    // a byte-at-a-time `memset` subprogram, a sixth of this program's time under connection churn.
    let (laddr, raddr): ([u32; 4], [u32; 4]) = if family == 2 {
        (
            [0, 0, V4_MAPPED, ctx.local_ip4()],
            [0, 0, V4_MAPPED, ctx.remote_ip4()],
        )
    } else if family == 10 {
        // The context only allows 4-byte loads of these arrays: read each word volatile so none are merged.
        let ops = ctx.ops;
        let mut l = [0u32; 4];
        let mut r = [0u32; 4];
        for i in 0..4 {
            // SAFETY: `ops` is the program's context, valid for its run; i < 4 indexes the 4-word arrays.
            l[i] = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ops).local_ip6[i])) };
            // SAFETY: as above.
            r[i] = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ops).remote_ip6[i])) };
        }
        (l, r)
    } else {
        return Ok(());
    };
    // The record is written straight into its ring reservation: no stack copy for `bpf_ringbuf_output` to copy again.
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(CNT_RINGBUF_FULL);
        count(CNT_RINGBUF_FULL_CONN);
        return Err(());
    };
    // SAFETY: the program's own context, valid and only read for the rest of its run.
    let ops = unsafe { &*ctx.ops };
    // SAFETY: a reserved record, ours until submitted; the ring places records at 8-byte boundaries, ConnEvent's
    // alignment, and `write` makes no reference to the uninitialised memory.
    unsafe {
        entry.as_mut_ptr().write(ConnEvent {
            kind: EVENT_CONN,
            op: kind,
            // SAFETY: a helper without arguments or side effects.
            ts_ns: bpf_ktime_get_ns(),
            // SAFETY: the helper takes the program's own sock_ops context, valid for its run.
            cookie: bpf_get_socket_cookie(ctx.as_ptr()),
            cgroup_id,
            pid_tgid,
            comm: words_bytes(comm),
            laddr: addr_bytes(laddr),
            raddr: addr_bytes(raddr),
            lport,
            rport,
            snd_nxt: ops.snd_nxt,
            rcv_nxt: ops.rcv_nxt,
            srtt_us: ops.srtt_us >> 3,
            bytes_acked: ops.bytes_acked,
            bytes_received: ops.bytes_received,
            total_retrans: ops.total_retrans,
            _pad: 0,
        })
    };
    entry.submit(submit_flags());
    count(CNT_CONN_EVENTS);
    Ok(())
}
