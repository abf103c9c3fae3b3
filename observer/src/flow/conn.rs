//! One TCP connection: its two byte streams rebuilt from captured segments, message by message.
//!
//! Each direction is a [`Stream`] whose captured bytes are walked message by message (head, then body framing),
//! using TCP sequence numbers to place segments, merge the second observation of locally looped traffic, drop
//! retransmits and measure message sizes. Parsed heads go to the pairing (`pairing.rs`), which hands finished
//! exchanges to the caller through [`Ctx::done`].
use std::collections::VecDeque;

use observer_common::{DataHeader, DATA_FLAG_START, DATA_FLAG_TRUNCATED};

use super::pairing::{Done, Pending, Resp};
use super::stream::{hook_slot, seq_le, seq_lt, Kind, MsgState, Stashed, Stream, MAX_STASH, START};
use super::{FlowConfig, FlowCounters};
use crate::http::{
    self, Anomalies, BodyLength, ChunkStep, ChunkedDecoder, Head, Parsed, RequestHead,
};

/// Address (IPv4-mapped IPv6) and port.
pub(crate) type Endpoint = ([u8; 16], u16);

/// Bodies at least this long cannot be placed with 32-bit sequence arithmetic; their end is left unknown.
const MAX_SEQ_SPAN: u64 = 1 << 30;
/// No HTTP/1.x message is shorter than this (`GET / HTTP/1.1\r\n\r\n` is 18 bytes).
const MIN_MESSAGE: u32 = 16;
/// Both directions of a connection, endpoints in a fixed order so either direction finds the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey {
    pub(crate) ends: [Endpoint; 2],
}

impl ConnKey {
    /// Key of the connection a packet from `src` to `dst` belongs to, and the direction index of that packet:
    /// direction `d` goes from `ends[d]` to `ends[1 - d]`.
    pub(crate) fn new(src: Endpoint, dst: Endpoint) -> (Self, usize) {
        if src <= dst {
            (ConnKey { ends: [src, dst] }, 0)
        } else {
            (ConnKey { ends: [dst, src] }, 1)
        }
    }
}

/// What is known about the local socket (if any) at one end of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct EndInfo {
    /// A local socket (or local hook) observed this end.
    pub(crate) local: bool,
    pub(crate) cookie: u64,
    pub(crate) cgroup_id: u64,
    pub(crate) pid: u32,
    pub(crate) comm: crate::event::SharedStr,
}

/// What a connection operation needs from the engine.
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a FlowConfig,
    pub(crate) stats: &'a FlowCounters,
    /// Heads noted for `origin` (with `report_started`).
    pub(crate) started: &'a mut Vec<super::Started>,
    pub(crate) done: &'a mut Vec<Done>,
}

/// One TCP connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) key: ConnKey,
    /// Local socket identity per endpoint (index as in `key.ends`).
    pub(crate) ends: [EndInfo; 2],
    pub(super) streams: [Stream; 2],
    /// Requests sent in direction `d`, oldest first.
    pub(super) pending: [VecDeque<Pending>; 2],
    /// Final responses still to come in direction `d` whose request was already given up.
    pub(super) skip_resp: [u32; 2],
    /// Final responses in direction `d` that found no request since the last request: a request found missing
    /// later (sequence gap) was answered by one of them.
    pub(super) orphan_resp: [u32; 2],
    /// Upgraded (101) or CONNECT tunnel: no more HTTP here.
    pub(super) tunnel: bool,
    pub(crate) last_ts: u64,
}

impl Conn {
    pub(crate) fn new(key: ConnKey, ts: u64) -> Self {
        Conn {
            key,
            ends: Default::default(),
            streams: Default::default(),
            pending: Default::default(),
            skip_resp: [0; 2],
            orphan_resp: [0; 2],
            tunnel: false,
            last_ts: ts,
        }
    }

    /// Heap bytes reserved by this connection's buffers (request queues, stashes, head buffers).
    #[cfg(test)]
    pub(crate) fn heap_capacity(&self) -> usize {
        let queues: usize = self.pending.iter().map(|q| q.capacity()).sum();
        let streams: usize = self
            .streams
            .iter()
            .map(|st| {
                let head = match &st.state {
                    MsgState::Head { buf, .. } => buf.capacity(),
                    _ => 0,
                };
                let stash: usize = st.stash.iter().map(|s| s.data.capacity()).sum();
                head + stash + st.stash.capacity() * std::mem::size_of::<Stashed>()
            })
            .sum();
        queues * std::mem::size_of::<Pending>() + streams
    }

    pub(crate) fn pending_len(&self) -> usize {
        self.pending[0].len() + self.pending[1].len()
    }

    /// A captured segment travelling in direction `dir`.
    pub(crate) fn on_data(&mut self, dir: usize, hdr: &DataHeader, payload: &[u8], ctx: &mut Ctx) {
        self.last_ts = self.last_ts.max(hdr.ts_ns);
        if self.tunnel || payload.is_empty() {
            return;
        }
        let Some(slot) = hook_slot(hdr.hook) else {
            ctx.stats.malformed.inc();
            return;
        };
        if hdr.ack != 0 {
            let peer = &mut self.streams[1 - dir];
            if peer.acked.is_none_or(|a| seq_lt(a, hdr.ack)) {
                peer.acked = Some(hdr.ack);
            }
        }
        let seq = hdr.seq;
        let seg_end = seq.wrapping_add(hdr.payload_len.max(payload.len() as u32));
        let st = &mut self.streams[dir];
        st.last_ts = st.last_ts.max(hdr.ts_ns);
        if st.max_end.is_none_or(|m| seq_lt(m, seg_end)) {
            st.max_end = Some(seg_end);
        }
        // A start flag on the bytes right after an unfinished head or chunked body is the kernel's classifier
        // matching inside the message (`... HTTP/1.1` split at a segment boundary): it is a continuation.
        let mid_message = st.next_seq == Some(seq)
            && matches!(st.state, MsgState::Head { .. } | MsgState::Chunked(_));
        let is_start = hdr.flags & DATA_FLAG_START != 0 && !mid_message;
        let copied_end = seq.wrapping_add(payload.len() as u32);
        let walked = st.next_seq.is_some_and(|ns| {
            if is_start {
                seq_lt(seq, ns)
            } else {
                seq_le(copied_end, ns)
            }
        });
        let seen_by_hook = st.recent.mark(seq, 1 << slot);
        if walked {
            if seen_by_hook {
                // The same hook saw these bytes before: a TCP retransmission.
                ctx.stats.retransmits.inc();
            } else if is_start && !st.recent.has(seq, START) {
                ctx.stats.out_of_order.inc();
            } else {
                // The other end's observation of bytes already walked (both ends local).
                ctx.stats.duplicates.inc();
            }
            return;
        }

        if is_start {
            if matches!(st.state, MsgState::Body(_))
                && st.expect_next.is_some_and(|e| seq_lt(seq, e))
            {
                // Body bytes that happen to look like a message start; the framing says otherwise.
                ctx.stats.misframed.inc();
                return;
            }
            self.start_message(dir, seq, ctx);
            let st = &mut self.streams[dir];
            st.next_seq = Some(seq);
            st.captured = 0;
            st.capture_over = false;
            st.stash.retain(|s| seq_lt(seq, s.seq));
            self.feed(dir, payload, hdr.ts_ns, hdr.flags, ctx);
        } else {
            let Some(ns) = st.next_seq else {
                // A continuation of a message whose start we never saw.
                ctx.stats.out_of_order.inc();
                return;
            };
            if seq_lt(ns, seq) {
                if st.stash.len() < MAX_STASH {
                    st.stash.push(Stashed {
                        seq,
                        ts: hdr.ts_ns,
                        flags: hdr.flags,
                        data: payload.to_vec(),
                    });
                    ctx.stats.out_of_order.inc();
                } else {
                    ctx.stats.gaps.inc();
                }
                return;
            }
            let skip = ns.wrapping_sub(seq) as usize;
            self.feed(dir, &payload[skip..], hdr.ts_ns, hdr.flags, ctx);
        }
        self.drain_stash(dir, ctx);
        let st = &mut self.streams[dir];
        if st.stash.is_empty() && st.stash.capacity() > 0 {
            // The gap filled: free the stash's buffer.
            st.stash = Vec::new();
        }
        self.flush(ctx);
    }

    /// Feeds stashed segments that became contiguous.
    fn drain_stash(&mut self, dir: usize, ctx: &mut Ctx) {
        loop {
            let st = &mut self.streams[dir];
            let Some(ns) = st.next_seq else { return };
            let Some(i) = st.stash.iter().position(|s| seq_le(s.seq, ns)) else {
                return;
            };
            let s = st.stash.swap_remove(i);
            let end = s.seq.wrapping_add(s.data.len() as u32);
            if seq_lt(ns, end) {
                let skip = ns.wrapping_sub(s.seq) as usize;
                self.feed(dir, &s.data[skip..], s.ts, s.flags, ctx);
            }
        }
    }

    /// A new message starts at `seq`: whatever was in progress in this direction ends there.
    fn start_message(&mut self, dir: usize, seq: u32, ctx: &mut Ctx) {
        let state = std::mem::take(&mut self.streams[dir].state);
        if let MsgState::Head { start, ts, buf } = state {
            // Its head never completed, and the kernel moved on.
            self.on_truncated_head(dir, start, ts, &buf, ctx);
        }
        let st = &mut self.streams[dir];
        st.state = MsgState::Idle;
        if let Some(open) = st.open {
            self.msg_end(dir, open, seq);
        } else if let Some(e) = st.expect_next {
            if seq.wrapping_sub(e) >= MIN_MESSAGE && seq_lt(e, seq) {
                // Bytes between the end of the last message and this start were never captured: a whole message.
                // (A few stray bytes, like the CRLF some clients add after a body, are not a message.)
                ctx.stats.gaps.inc();
                self.lost_message(dir, e, seq, ctx);
            }
        }
        self.streams[dir].expect_next = None;
    }

    /// Walks `bytes`, the captured continuation of direction `dir` at `next_seq`.
    fn feed(&mut self, dir: usize, bytes: &[u8], ts: u64, flags: u32, ctx: &mut Ctx) {
        let Some(base) = self.streams[dir].next_seq else {
            return;
        };
        {
            let st = &mut self.streams[dir];
            st.captured = st.captured.saturating_add(bytes.len() as u32);
            if flags & DATA_FLAG_TRUNCATED != 0 || st.captured >= ctx.cfg.capture_bytes {
                st.capture_over = true;
            }
            st.next_seq = Some(base.wrapping_add(bytes.len() as u32));
        }
        let len = bytes.len();
        let mut i = 0;
        while i < len {
            let at = base.wrapping_add(i as u32);
            let state = std::mem::take(&mut self.streams[dir].state);
            let next = match state {
                // Empty lines between messages are ignored (RFC 9112 §2.2).
                MsgState::Idle if matches!(bytes[i], b'\r' | b'\n') => {
                    i += 1;
                    MsgState::Idle
                }
                MsgState::Idle => {
                    self.streams[dir].recent.mark(at, START);
                    MsgState::Head {
                        start: at,
                        ts,
                        buf: Vec::new(),
                    }
                }
                MsgState::Head {
                    start,
                    ts: head_ts,
                    mut buf,
                } => {
                    let old = buf.len();
                    let room = http_limit(ctx.cfg).saturating_sub(old);
                    let take = room.min(len - i);
                    if self.streams[dir].capture_over && i + take == len {
                        // The head runs to where the capture stopped: no later byte can complete it.
                        let cut = if old == 0 {
                            http::parse_cut_head(&bytes[i..])
                        } else {
                            buf.extend_from_slice(&bytes[i..]);
                            http::parse_cut_head(&buf)
                        };
                        match cut {
                            http::CutHead::Complete(head) => {
                                i += head.head_len().saturating_sub(old);
                                self.on_head(dir, start, ts, head_ts, head, false, ctx)
                            }
                            http::CutHead::Truncated(head) => {
                                self.on_cut_head(dir, start, head_ts, head, ctx);
                                i = len;
                                MsgState::Unknown
                            }
                            http::CutHead::Malformed(e) => {
                                let seen = if old == 0 { &bytes[i..] } else { &buf[..] };
                                self.on_malformed(dir, start, seen, &e, ctx);
                                i = len;
                                MsgState::Unknown
                            }
                        }
                    } else {
                        // Usually a head starts and ends in one segment: it is parsed where it lies, and bytes are
                        // kept only for a head that goes on in a later segment.
                        let parsed = if old == 0 {
                            http::parse_head(&bytes[i..i + take])
                        } else {
                            buf.extend_from_slice(&bytes[i..i + take]);
                            http::parse_head(&buf)
                        };
                        match parsed {
                            Ok(Parsed::Complete(head)) => {
                                i += head.head_len().saturating_sub(old);
                                self.on_head(dir, start, ts, head_ts, head, false, ctx)
                            }
                            Ok(Parsed::Partial) => {
                                if old == 0 {
                                    buf.extend_from_slice(&bytes[i..i + take]);
                                }
                                i += take;
                                if buf.len() >= http_limit(ctx.cfg) {
                                    self.on_truncated_head(dir, start, head_ts, &buf, ctx);
                                    // Whatever else this segment holds cannot be placed.
                                    i = len;
                                    MsgState::Unknown
                                } else {
                                    MsgState::Head {
                                        start,
                                        ts: head_ts,
                                        buf,
                                    }
                                }
                            }
                            Err(e) => {
                                let seen = if old == 0 {
                                    &bytes[i..i + take]
                                } else {
                                    &buf[..]
                                };
                                self.on_malformed(dir, start, seen, &e, ctx);
                                i = len;
                                MsgState::Unknown
                            }
                        }
                    }
                }
                MsgState::Body(rem) => {
                    let take = rem.min((len - i) as u64);
                    self.note_body(dir, at, &bytes[i..i + take as usize]);
                    i += take as usize;
                    if rem == take {
                        MsgState::Idle
                    } else {
                        MsgState::Body(rem - take)
                    }
                }
                MsgState::Chunked(mut dec) => match dec.feed(&bytes[i..]) {
                    Ok(ChunkStep::Done(n)) => {
                        self.note_body(dir, at, &bytes[i..i + n]);
                        i += n;
                        if let Some(open) = self.streams[dir].open {
                            self.msg_end(dir, open, base.wrapping_add(i as u32));
                        }
                        MsgState::Idle
                    }
                    Ok(ChunkStep::NeedMore) => {
                        self.note_body(dir, at, &bytes[i..]);
                        i = len;
                        MsgState::Chunked(dec)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "bad chunked body");
                        ctx.stats.malformed.inc();
                        i = len;
                        MsgState::Unknown
                    }
                },
                MsgState::Unknown => {
                    i = len;
                    MsgState::Unknown
                }
            };
            self.streams[dir].state = next;
        }
        // A head still incomplete when the kernel stopped copying will never complete.
        let st = &mut self.streams[dir];
        if st.capture_over && matches!(st.state, MsgState::Head { .. }) {
            if let MsgState::Head { start, ts, buf } = std::mem::take(&mut st.state) {
                self.on_truncated_head(dir, start, ts, &buf, ctx);
            }
            self.streams[dir].state = MsgState::Unknown;
        }
    }

    /// Body bytes at `at` walked in direction `dir`: while they belong to the newest request there, its first
    /// [`crate::event::BODY_PREFIX`] bytes are kept for `request_hash`. Bytes arrive here contiguous, so a body
    /// split across segments is kept in order.
    fn note_body(&mut self, dir: usize, at: u32, bytes: &[u8]) {
        if bytes.is_empty() || self.streams[dir].last_kind != Some(Kind::Request) {
            return;
        }
        if let Some(p) = self.pending[dir].back_mut() {
            let inside = seq_lt(p.req_start, at) && p.req_end.is_none_or(|e| seq_lt(at, e));
            if inside && !p.phantom && !p.req_body.is_full() {
                p.req_body.extend(bytes);
            }
        }
    }

    /// A complete (or, with `truncated`, best-effort) head at `start` in direction `dir`; returns the walker state
    /// for the bytes after it. `ts` is the time of the segment that completed the head, `start_ts` of its first.
    #[allow(clippy::too_many_arguments)]
    fn on_head(
        &mut self,
        dir: usize,
        start: u32,
        ts: u64,
        start_ts: u64,
        head: Head,
        truncated: bool,
        ctx: &mut Ctx,
    ) -> MsgState {
        let head_len = head.head_len() as u64;
        let mut anomalies = match &head {
            Head::Request(r) => r.anomalies,
            Head::Response(r) => r.anomalies,
        };
        if self.streams[dir].anomaly_end.take() == Some(start) {
            anomalies.insert(Anomalies::FOLLOWS_ANOMALY);
        }
        ctx.stats.count_anomalies(anomalies);
        let framing = match head {
            Head::Request(mut req) => {
                req.anomalies = anomalies;
                self.streams[dir].last_kind = Some(Kind::Request);
                let framing = if truncated {
                    None
                } else {
                    match req.body_length() {
                        Ok(f) => Some(f),
                        Err(e) => {
                            tracing::debug!(error = %e, "request framing");
                            ctx.stats.malformed.inc();
                            None
                        }
                    }
                };
                if ctx.cfg.report_started {
                    self.note_request(dir, start_ts, &req.headers, ctx);
                }
                self.push_request(
                    dir,
                    Pending {
                        req_start: start,
                        req_ts: start_ts,
                        req,
                        req_truncated: truncated,
                        req_end: None,
                        req_incomplete: false,
                        req_body: Default::default(),
                        resp: None,
                        interim_bytes: 0,
                        phantom: false,
                    },
                    ctx,
                );
                framing
            }
            Head::Response(resp) => {
                self.streams[dir].last_kind = Some(Kind::Response);
                let qdir = 1 - dir;
                if resp.is_interim() {
                    if self.skip_resp[dir] == 0 {
                        if let Some(p) = self.pending[qdir].iter_mut().find(|p| p.resp.is_none()) {
                            p.interim_bytes += head_len;
                        }
                    }
                    Some(BodyLength::Empty)
                } else {
                    let noted = ctx.cfg.report_started.then(|| {
                        let server = &self.ends[dir];
                        let peer = match (server.local, server.pid) {
                            (false, _) => super::Peer::Remote,
                            (true, 0) => super::Peer::Unknown,
                            (true, pid) => super::Peer::Local(pid),
                        };
                        (super::exchange_conn_id(self, qdir), peer)
                    });
                    let target = if self.skip_resp[dir] > 0 {
                        self.skip_resp[dir] -= 1;
                        None
                    } else {
                        let t = self.pending[qdir].iter_mut().find(|p| p.resp.is_none());
                        if t.is_none() {
                            ctx.stats.unmatched_responses.inc();
                            self.orphan_resp[dir] += 1;
                        }
                        t
                    };
                    let method = target.as_ref().map_or("GET", |p| p.req.method());
                    let tunnel = !truncated && resp.starts_tunnel(method);
                    let framing = if truncated {
                        None
                    } else {
                        match resp.body_length(method) {
                            Ok(f) => Some(f),
                            Err(e) => {
                                tracing::debug!(error = %e, "response framing");
                                ctx.stats.malformed.inc();
                                None
                            }
                        }
                    };
                    if let (Some((conn_id, server)), Some(p)) = (noted, &target) {
                        ctx.started.push(super::Started::Response {
                            conn_id,
                            req_ts: super::unix_time(ctx.cfg, p.req_ts),
                            ts: super::unix_time(ctx.cfg, ts),
                            server,
                        });
                    }
                    if let Some(p) = target {
                        p.resp = Some(Resp {
                            start,
                            status: resp.status,
                            head_ts: ts,
                            end: None,
                            truncated,
                            incomplete: false,
                            anomalies,
                        });
                    }
                    if tunnel {
                        self.tunnel = true;
                    }
                    framing
                }
            }
        };
        let st = &mut self.streams[dir];
        st.open = Some(start);
        st.anomalous_open = !anomalies.is_empty()
            && matches!(framing, Some(BodyLength::Length(_) | BodyLength::Chunked));
        match framing {
            Some(BodyLength::Empty) => {
                self.msg_end(dir, start, start.wrapping_add(head_len as u32));
                MsgState::Idle
            }
            Some(BodyLength::Length(n)) if head_len + n < MAX_SEQ_SPAN => {
                self.msg_end(dir, start, start.wrapping_add((head_len + n) as u32));
                MsgState::Body(n)
            }
            Some(BodyLength::Chunked) => MsgState::Chunked(ChunkedDecoder::new()),
            _ => MsgState::Unknown,
        }
    }

    /// Notes a request head for `origin`: who sent it, what serves it as far as known, its propagated ids.
    fn note_request(&self, dir: usize, start_ts: u64, headers: &http::Headers, ctx: &mut Ctx) {
        let (client, server) = (&self.ends[dir], &self.ends[1 - dir]);
        let server = match (server.local, server.pid) {
            (true, 0) => super::Peer::Unknown,
            (true, pid) => super::Peer::Local(pid),
            // Something came back from that end before and no local socket saw it: it is elsewhere.
            (false, _) if self.streams[1 - dir].last_kind.is_some() => super::Peer::Remote,
            (false, _) => super::Peer::Unknown,
        };
        let (trace, request_id) = crate::origin::id_hashes(headers);
        ctx.started.push(super::Started::Request {
            conn_id: super::exchange_conn_id(self, dir),
            ts: super::unix_time(ctx.cfg, start_ts),
            client_pid: if client.local { client.pid } else { 0 },
            server,
            trace,
            request_id,
        });
    }

    pub(super) fn on_truncated_head(
        &mut self,
        dir: usize,
        start: u32,
        ts: u64,
        buf: &[u8],
        ctx: &mut Ctx,
    ) {
        match http::parse_truncated_head(buf) {
            Some(head) => self.on_cut_head(dir, start, ts, head, ctx),
            None => {
                ctx.stats.truncated_heads.inc();
                self.on_malformed(dir, start, buf, &http::ParseError::NotHttp, ctx)
            }
        }
    }

    /// A head cut short, read as far as it goes.
    fn on_cut_head(&mut self, dir: usize, start: u32, ts: u64, head: http::Head, ctx: &mut Ctx) {
        ctx.stats.truncated_heads.inc();
        self.on_head(dir, start, ts, ts, head, true, ctx);
    }

    fn on_malformed(
        &mut self,
        dir: usize,
        start: u32,
        buf: &[u8],
        e: &http::ParseError,
        ctx: &mut Ctx,
    ) {
        tracing::debug!(error = %e, len = buf.len(), "malformed HTTP message start");
        ctx.stats.malformed.inc();
        let st = &mut self.streams[dir];
        st.expect_next = None;
        if http::looks_like_request(buf) {
            // A request we cannot read still gets an answer: keep its place in the pairing.
            st.open = Some(start);
            st.last_kind = Some(Kind::Request);
            self.push_request(
                dir,
                Pending {
                    req_start: start,
                    req_ts: 0,
                    req: RequestHead::default(),
                    req_truncated: false,
                    req_end: None,
                    req_incomplete: false,
                    req_body: Default::default(),
                    resp: None,
                    interim_bytes: 0,
                    phantom: true,
                },
                ctx,
            );
        } else {
            st.open = None;
        }
    }
}

/// Longest head buffer kept for one message.
fn http_limit(cfg: &FlowConfig) -> usize {
    (cfg.capture_bytes as usize).clamp(1, observer_common::MAX_CAPTURE)
}
