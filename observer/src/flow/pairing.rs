//! Pairing: requests wait per direction for their final response and both sizes; complete ones are handed over
//! in order, ones cut short by the close are clipped to the bytes sent, and the close, the idle timeout or a full
//! queue hands over the rest with estimated ends. Messages lost to the capture keep their place as phantoms.
use std::collections::VecDeque;

use super::conn::{Conn, Ctx};
use super::stream::{seq_le, seq_lt, Kind, MsgState};
use crate::http::{Anomalies, RequestHead};

/// The final response of an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resp {
    pub(crate) start: u32,
    /// 0 when the response was lost (a gap in the response stream) and only its size is known.
    pub(crate) status: u16,
    /// When its head was complete (CLOCK_MONOTONIC ns).
    pub(crate) head_ts: u64,
    pub(crate) end: Option<u32>,
    pub(crate) truncated: bool,
    /// The connection closed before the end its framing declared: `end` is where the bytes stopped.
    pub(crate) incomplete: bool,
    pub(crate) anomalies: Anomalies,
}

/// A request waiting for its response and sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) req_start: u32,
    pub(crate) req_ts: u64,
    pub(crate) req: RequestHead,
    pub(crate) req_truncated: bool,
    pub(crate) req_end: Option<u32>,
    /// The connection closed before the end the request's framing declared: `req_end` is where the bytes stopped.
    pub(crate) req_incomplete: bool,
    /// The first bytes of the request's body (for `request_hash`).
    pub(crate) req_body: crate::event::BodyPrefix,
    pub(crate) resp: Option<Resp>,
    /// Bytes of interim (1xx) responses before the final one.
    pub(crate) interim_bytes: u64,
    /// Stands for a request that was lost or unparseable: takes its response's place, never emitted.
    pub(crate) phantom: bool,
}

impl Pending {
    pub(super) fn complete(&self) -> bool {
        self.req_end.is_some() && self.resp.as_ref().is_some_and(|r| r.end.is_some())
    }
}

/// A finished request handed back to the engine; `dir` is the direction the request travelled.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) dir: usize,
    pub(crate) p: Pending,
}

impl Conn {
    /// A message we did not capture travelled in `dir` between `start` and `end`.
    pub(super) fn lost_message(&mut self, dir: usize, start: u32, end: u32, ctx: &mut Ctx) {
        match self.streams[dir].last_kind {
            Some(Kind::Request) if self.orphan_resp[1 - dir] > 0 => self.orphan_resp[1 - dir] -= 1,
            Some(Kind::Request) => self.push_request(
                dir,
                Pending {
                    req_start: start,
                    req_ts: 0,
                    req: RequestHead::default(),
                    req_truncated: false,
                    req_end: Some(end),
                    req_incomplete: false,
                    req_body: Default::default(),
                    resp: None,
                    interim_bytes: 0,
                    phantom: true,
                },
                ctx,
            ),
            Some(Kind::Response) => {
                if self.skip_resp[dir] > 0 {
                    self.skip_resp[dir] -= 1;
                } else if let Some(p) = self.pending[1 - dir].iter_mut().find(|p| p.resp.is_none())
                {
                    p.resp = Some(Resp {
                        start,
                        status: 0,
                        head_ts: 0,
                        end: Some(end),
                        truncated: false,
                        incomplete: false,
                        anomalies: Anomalies::NONE,
                    });
                }
            }
            None => {}
        }
    }

    /// The message that started at `start` in direction `dir` ends at `end`.
    pub(super) fn msg_end(&mut self, dir: usize, start: u32, end: u32) {
        let st = &mut self.streams[dir];
        if st.open == Some(start) {
            st.open = None;
            if std::mem::take(&mut st.anomalous_open) {
                st.anomaly_end = Some(end);
            }
        }
        st.expect_next = Some(end);
        if let Some(p) = self.pending[dir]
            .iter_mut()
            .find(|p| p.req_start == start && p.req_end.is_none())
        {
            p.req_end = Some(end);
            return;
        }
        if let Some(r) = self.pending[1 - dir]
            .iter_mut()
            .filter_map(|p| p.resp.as_mut())
            .find(|r| r.start == start && r.end.is_none())
        {
            r.end = Some(end);
        }
    }

    pub(super) fn push_request(&mut self, dir: usize, p: Pending, ctx: &mut Ctx) {
        if !p.phantom {
            self.orphan_resp[1 - dir] = 0;
        }
        if self.pending[dir].len() >= ctx.cfg.max_pending_per_connection.max(1) {
            if let Some(mut old) = self.pending[dir].pop_front() {
                ctx.stats.evicted[1].inc();
                if old.resp.is_none() {
                    // Its response, when it comes, must not be taken for the next request's.
                    self.skip_resp[1 - dir] += 1;
                }
                self.settle(dir, &mut old);
                if !old.phantom {
                    ctx.done.push(Done { dir, p: old });
                }
            }
        }
        if self.pending[dir].capacity() == 0 {
            // One request at a time is the common case: no room for four.
            self.pending[dir].reserve_exact(1);
        }
        self.pending[dir].push_back(p);
    }

    /// The stream in direction `dir` ended at `end`: messages whose framing declared a later end stop there and are
    /// marked incomplete, so their sizes count the bytes that were sent, not those announced.
    pub(super) fn clip(&mut self, dir: usize, end: u32) {
        let cut = |start: u32, e: &mut Option<u32>| match *e {
            Some(declared) if seq_le(start, end) && seq_lt(end, declared) => {
                *e = Some(end);
                true
            }
            _ => false,
        };
        for p in self.pending[dir].iter_mut() {
            p.req_incomplete |= cut(p.req_start, &mut p.req_end);
        }
        for r in self.pending[1 - dir]
            .iter_mut()
            .filter_map(|p| p.resp.as_mut())
        {
            r.incomplete |= cut(r.start, &mut r.end);
        }
    }

    /// Gives an exchange that must go out now estimated ends for what was never delimited.
    pub(super) fn settle(&self, dir: usize, p: &mut Pending) {
        if p.req_end.is_none() {
            let min = p.req_start.wrapping_add(p.req.head_len as u32);
            let next = self.pending[dir]
                .iter()
                .map(|q| q.req_start)
                .find(|s| seq_lt(p.req_start, *s));
            p.req_end = Some(next.unwrap_or_else(|| self.streams[dir].estimate_end(min)));
        }
        if let Some(r) = p.resp.as_mut() {
            if r.end.is_none() {
                let next = self.pending[dir]
                    .iter()
                    .filter_map(|q| q.resp.as_ref())
                    .map(|q| q.start)
                    .find(|s| seq_lt(r.start, *s));
                r.end = Some(next.unwrap_or_else(|| self.streams[1 - dir].estimate_end(r.start)));
            }
        }
    }

    /// Hands over every exchange at the front of a queue that is complete, in order. A request whose declared end
    /// was not reached yet waits (for the close, a later segment or acknowledgement), so its size never counts a
    /// body that was announced but not sent.
    pub(super) fn flush(&mut self, ctx: &mut Ctx) {
        for dir in 0..2 {
            let stream = &self.streams[dir];
            while self.pending[dir]
                .front()
                .is_some_and(|p| p.complete() && p.req_end.is_some_and(|e| stream.reached(e)))
            {
                let Some(p) = self.pending[dir].pop_front() else {
                    break;
                };
                if !p.phantom {
                    ctx.done.push(Done { dir, p });
                }
            }
            // The emptied queue keeps its room for the connection's next request (freeing it here cost an
            // allocation and a free per exchange); `expire` frees it once the connection is quiet.
        }
    }

    /// The connection is gone (closed, idle or evicted): delimit what `ends` allows (stream end sequence numbers as
    /// sock_ops reports them, FIN included) and hand over every request.
    pub(crate) fn finalize(&mut self, ends: [Option<u32>; 2], ctx: &mut Ctx) {
        for (dir, end) in ends.into_iter().enumerate() {
            if let MsgState::Head { start, ts, buf } = std::mem::take(&mut self.streams[dir].state)
            {
                self.on_truncated_head(dir, start, ts, &buf, ctx);
            }
            let Some(mut end) = end else { continue };
            let st = &self.streams[dir];
            if st.max_end.is_some_and(|m| seq_lt(m, end)) {
                // The FIN takes one sequence number after the last data byte.
                end = end.wrapping_sub(1);
            }
            if let Some(open) = st.open {
                if seq_le(open, end) {
                    self.msg_end(dir, open, end);
                }
            }
            self.clip(dir, end);
        }
        for dir in 0..2 {
            while let Some(mut p) = self.pending[dir].pop_front() {
                if !p.complete() {
                    if p.resp.is_none() {
                        ctx.stats.no_response.inc();
                    }
                    self.settle(dir, &mut p);
                }
                if !p.phantom {
                    ctx.done.push(Done { dir, p });
                }
            }
        }
    }

    /// Time-outs at `now`: true when the whole connection has been idle and should be dropped (after
    /// [`Conn::finalize`]). Otherwise exchanges whose response started but cannot be delimited are handed over once
    /// their response direction has been quiet for the idle timeout.
    pub(crate) fn expire(&mut self, now: u64, ctx: &mut Ctx) -> bool {
        let idle = ctx.cfg.idle_timeout_ns;
        if now.saturating_sub(self.last_ts) >= idle {
            return true;
        }
        for dir in 0..2 {
            let rdir = 1 - dir;
            while let Some((rstart, head_ts)) = self.pending[dir]
                .front()
                .and_then(|p| p.resp.as_ref())
                .map(|r| (r.start, r.head_ts))
            {
                if now.saturating_sub(self.streams[rdir].last_ts) < idle
                    || now.saturating_sub(head_ts) < idle
                {
                    break;
                }
                let Some(mut p) = self.pending[dir].pop_front() else {
                    break;
                };
                self.settle(dir, &mut p);
                let st = &mut self.streams[rdir];
                if st.open == Some(rstart) {
                    st.open = None;
                    st.state = MsgState::Unknown;
                }
                ctx.stats.timed_out.inc();
                if !p.phantom {
                    ctx.done.push(Done { dir, p });
                }
            }
            release_if_empty(&mut self.pending[dir]);
        }
        false
    }
}

/// Frees the buffer of a queue that was drained (at the engine's tick): an idle connection holds no heap for its
/// requests.
fn release_if_empty(q: &mut VecDeque<Pending>) {
    if q.is_empty() && q.capacity() > 0 {
        *q = VecDeque::new();
    }
}
