//! Engine tests from byte fixtures: a small simulated connection produces the records the kernel programs would.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use observer_common::{
    ConnEvent, DataHeader, CONN_CLOSE, CONN_CONNECT, DATA_FLAG_CONTINUATION, DATA_FLAG_START,
    DATA_FLAG_TRUNCATED, EVENT_CONN, EVENT_DATA, HOOK_CGROUP_EGRESS, HOOK_CGROUP_INGRESS,
    HOOK_TC_INGRESS,
};

use super::{Engine, FlowConfig, FlowStats};
use crate::cgroups::MapResolver;
use crate::event::{Exchange, Exchanges, Side};

const C2S: usize = 0;
const S2C: usize = 1;
const CLIENT_COOKIE: u64 = 1001;
const SERVER_COOKIE: u64 = 2002;
const CLIENT_PID: u32 = 4242;
const SERVER_PID: u32 = 777;
const CLIENT_CGROUP: u64 = 11;
const SERVER_CGROUP: u64 = 22;
/// Simulated time starts here (CLOCK_MONOTONIC ns).
const T0: u64 = 1_000_000_000;

/// Which local sockets the simulated kernel sees.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Obs {
    Client,
    Server,
    Both,
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[10] = 0xff;
    x[11] = 0xff;
    x[12..].copy_from_slice(&[a, b, c, d]);
    x
}

fn comm(s: &str) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..s.len()].copy_from_slice(s.as_bytes());
    c
}

/// What the kernel classifier treats as a message start.
fn looks_like_start(b: &[u8]) -> bool {
    observer_common::kernel_sees_start(b)
}

/// One TCP connection between a client and a server, observed as `obs` says, feeding an [`Engine`].
struct Sim {
    eng: Engine,
    obs: Obs,
    now: u64,
    client: ([u8; 16], u16),
    server: ([u8; 16], u16),
    /// Next sequence number per direction.
    seq: [u32; 2],
    /// Capture left for the current message per direction (the kernel's per-flow state).
    cap_left: [u32; 2],
    cap: u32,
    /// Every record produced, for replay tests.
    log: Vec<Rec>,
    /// Socket cookies of the client's and the server's end.
    cookies: [u64; 2],
    /// Whether message starts are copied as the kernel does (`observer_common::kernel_copy_len`: a body the agent
    /// does not read left uncopied), or whole up to the cap.
    head_scan: bool,
}

#[derive(Clone, Debug)]
enum Rec {
    Data(DataHeader, Vec<u8>),
    Conn(ConnEvent),
}

fn resolver() -> Box<MapResolver> {
    Box::new(MapResolver(HashMap::from([
        (CLIENT_CGROUP, "/user.slice/client.scope".to_string()),
        (SERVER_CGROUP, "/system.slice/nginx.service".to_string()),
    ])))
}

impl Sim {
    fn new(obs: Obs) -> Self {
        Self::with_config(obs, FlowConfig::default())
    }

    fn with_config(obs: Obs, cfg: FlowConfig) -> Self {
        let cap = cfg.capture_bytes;
        Sim {
            eng: Engine::new(cfg, resolver()),
            obs,
            now: T0,
            client: (v4(10, 0, 0, 1), 40000),
            server: (v4(10, 0, 0, 2), 80),
            seq: [1_000, 4_294_960_000], // the server's stream wraps around 2^32 early on
            cap_left: [0; 2],
            cap,
            log: Vec::new(),
            cookies: [CLIENT_COOKIE, SERVER_COOKIE],
            head_scan: true,
        }
    }

    /// Another connection between the same hosts (new client port), same engine.
    fn next_conn(&mut self) {
        self.client.1 += 1;
        self.seq = [50_000, 90_000];
        self.cap_left = [0; 2];
    }

    fn advance_us(&mut self, us: u64) {
        self.now += us * 1000;
    }

    fn client_local(&self) -> bool {
        self.obs != Obs::Server
    }

    fn server_local(&self) -> bool {
        self.obs != Obs::Client
    }

    fn record(&mut self, dir: usize, hook: u32, seq: u32, seg: &[u8], flags: u32, copy: usize) {
        let (src, dst) = if dir == C2S {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        // The local socket of the hook: egress is the sender's, ingress the receiver's.
        let sender_is_client = dir == C2S;
        let local_is_client = (hook == HOOK_CGROUP_EGRESS) == sender_is_client;
        let (cookie, cgroup, pid, name) = if local_is_client {
            (self.cookies[0], CLIENT_CGROUP, CLIENT_PID, "curl")
        } else {
            (self.cookies[1], SERVER_CGROUP, SERVER_PID, "nginx")
        };
        // On ingress the current task is whatever softirq interrupted: deliberately wrong.
        let (pid, name) = if hook == HOOK_CGROUP_EGRESS {
            (pid, name)
        } else {
            (31337, "ksoftirqd/0")
        };
        let hdr = DataHeader {
            kind: EVENT_DATA,
            hook,
            ts_ns: self.now,
            cookie,
            cgroup_id: cgroup,
            pid_tgid: (u64::from(pid) << 32) | u64::from(pid),
            comm: comm(name),
            saddr: src.0,
            daddr: dst.0,
            sport: src.1,
            dport: dst.1,
            seq,
            payload_len: seg.len() as u32,
            cap_len: copy as u32,
            flags,
            // Everything the peer wrote has arrived (the simulated network delivers at once).
            ack: self.seq[1 - dir],
        };
        self.deliver(Rec::Data(hdr, seg[..copy].to_vec()));
    }

    fn deliver(&mut self, rec: Rec) {
        match &rec {
            Rec::Data(h, p) => self.eng.on_data(h, p),
            Rec::Conn(e) => self.eng.on_conn(e),
        }
        self.log.push(rec);
    }

    /// One TCP segment in `dir`, classified and copied as the kernel does, seen by the observing hooks.
    fn segment(&mut self, dir: usize, seg: &[u8]) {
        let seq = self.seq[dir];
        self.seq[dir] = seq.wrapping_add(seg.len() as u32);
        let flags = if looks_like_start(seg) {
            self.cap_left[dir] = self.cap;
            DATA_FLAG_START
        } else if self.cap_left[dir] > 0 {
            DATA_FLAG_CONTINUATION
        } else {
            self.now += 1000;
            return;
        };
        let (copy, body_skipped) = observer_common::kernel_copy_len(
            seg,
            flags == DATA_FLAG_START && self.head_scan,
            self.cap_left[dir] as usize,
        );
        self.cap_left[dir] = if body_skipped {
            0
        } else {
            self.cap_left[dir] - copy as u32
        };
        let flags = flags
            | if copy < seg.len() {
                DATA_FLAG_TRUNCATED
            } else {
                0
            };
        let (sender_local, receiver_local) = if dir == C2S {
            (self.client_local(), self.server_local())
        } else {
            (self.server_local(), self.client_local())
        };
        if sender_local {
            self.record(dir, HOOK_CGROUP_EGRESS, seq, seg, flags, copy);
        }
        if receiver_local {
            self.record(dir, HOOK_CGROUP_INGRESS, seq, seg, flags, copy);
        }
        self.now += 1000;
    }

    /// Writes `bytes` in `dir` as segments of at most `mss` bytes.
    fn write(&mut self, dir: usize, bytes: &[u8], mss: usize) {
        for seg in bytes.chunks(mss) {
            self.segment(dir, seg);
        }
    }

    fn request(&mut self, bytes: &[u8]) {
        self.write(C2S, bytes, 65_000);
    }

    fn response(&mut self, bytes: &[u8]) {
        self.write(S2C, bytes, 65_000);
    }

    fn conn_event(&mut self, op: u32, client_side: bool) -> ConnEvent {
        let (cookie, cgroup, local, remote, snd, rcv) = if client_side {
            (
                self.cookies[0],
                CLIENT_CGROUP,
                self.client,
                self.server,
                self.seq[C2S],
                self.seq[S2C],
            )
        } else {
            (
                self.cookies[1],
                SERVER_CGROUP,
                self.server,
                self.client,
                self.seq[S2C],
                self.seq[C2S],
            )
        };
        ConnEvent {
            kind: EVENT_CONN,
            op,
            ts_ns: self.now,
            cookie,
            cgroup_id: cgroup,
            pid_tgid: u64::from(CLIENT_PID + 1) << 32,
            comm: comm("python3"),
            laddr: local.0,
            raddr: remote.0,
            lport: local.1,
            rport: remote.1,
            // Both FINs were exchanged: each takes one sequence number.
            snd_nxt: snd.wrapping_add(1),
            rcv_nxt: rcv.wrapping_add(1),
            ..ConnEvent::default()
        }
    }

    /// connect() from the client (its pid and comm, as sock_ops reports them).
    fn connect(&mut self) {
        if self.client_local() {
            let ev = self.conn_event(CONN_CONNECT, true);
            self.deliver(Rec::Conn(ev));
        }
    }

    /// Both sockets reach TCP_CLOSE.
    fn close(&mut self) {
        if self.client_local() {
            let ev = self.conn_event(CONN_CLOSE, true);
            self.deliver(Rec::Conn(ev));
        }
        if self.server_local() {
            let ev = self.conn_event(CONN_CLOSE, false);
            self.deliver(Rec::Conn(ev));
        }
    }

    fn take(&mut self) -> Vec<Exchange> {
        let mut out = Exchanges::default();
        self.eng.drain(&mut out);
        out.drain().collect()
    }

    fn stats(&self) -> FlowStats {
        self.eng.stats()
    }
}

fn get(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: api.example\r\nUser-Agent: curl/8.5\r\nAccept: */*\r\n\r\n"
    )
    .into_bytes()
}

fn ok(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn status(code: u16, extra: &str) -> Vec<u8> {
    format!("HTTP/1.1 {code} X\r\n{extra}\r\n").into_bytes()
}

fn body(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

fn one(ex: &[Exchange]) -> &Exchange {
    assert_eq!(ex.len(), 1, "expected exactly one exchange, got {ex:#?}");
    &ex[0]
}

#[test]
fn keep_alive_gets_server_side() {
    let mut s = Sim::new(Obs::Server);
    let mut sizes = Vec::new();
    for (i, n) in [10usize, 0, 3000].into_iter().enumerate() {
        let req = get(&format!("/items/{i}?b=1&a=2"));
        let resp = ok(&body(n));
        s.request(&req);
        s.advance_us(250);
        s.response(&resp);
        s.advance_us(5000);
        sizes.push((req.len() as u64, resp.len() as u64));
        let ex = s.take();
        let e = &one(&ex).event;
        assert_eq!(e.path, format!("/items/{i}"), "path of exchange {i}");
        assert_eq!(
            (e.req_bytes, e.resp_bytes),
            sizes[i],
            "sizes of exchange {i}"
        );
    }
    s.close();
    assert!(s.take().is_empty(), "close must not emit anything again");
    let st = s.stats();
    assert_eq!(st.exchanges, 3);
    assert_eq!(
        (st.connections, st.pending_requests),
        (0, 0),
        "close frees the connection"
    );
}

#[test]
fn event_fields_server_side() {
    let mut s = Sim::new(Obs::Server);
    s.eng.cfg.mono_to_unix_offset_ns = 1_700_000_000_000_000_000;
    s.request(b"GET /v1/users/42?expand=1&fields=a&expand=2 HTTP/1.1\r\nHost: api.example:8080\r\nUser-Agent: test-agent/1\r\nX-Request-Id: req-123\r\n\r\n");
    s.advance_us(1500);
    s.response(&ok(b"hello"));
    let ex = s.take();
    let x = one(&ex);
    let e = &x.event;
    assert_eq!(
        e.ts.0,
        1_700_000_000_000_000 + T0 as i64 / 1000,
        "ts is the request start in Unix us"
    );
    assert_eq!(
        e.duration_us, 1501,
        "request start to response head (1 us segment spacing)"
    );
    assert_eq!(e.side, Side::Server);
    assert_eq!(
        (e.method.as_str(), e.host.as_str(), e.path.as_str()),
        ("GET", "api.example:8080", "/v1/users/42")
    );
    assert_eq!(e.query_keys, vec!["expand", "fields"]);
    assert_eq!(x.request.raw_query, "expand=1&fields=a&expand=2");
    assert_eq!(e.status, 200);
    assert_eq!(e.src_ip, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!((e.src_port, e.dst_port), (40000, 80));
    assert_eq!(e.dst_ip, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
    assert_eq!(
        (e.server_pid, e.server_comm.as_str()),
        (SERVER_PID, "nginx"),
        "server identity from egress"
    );
    assert_eq!(e.server_cgroup, "/system.slice/nginx.service");
    assert_eq!(
        (
            e.client_pid,
            e.client_comm.as_str(),
            e.client_cgroup.as_str()
        ),
        (0, "", "")
    );
    assert_eq!(e.user_agent, "test-agent/1");
    assert_eq!(e.request_id, "req-123");
    assert!(!e.truncated);
    assert_eq!(
        e.conn_id, SERVER_COOKIE,
        "server cookie when the client is not local"
    );
    assert_eq!(x.request.headers.len(), 3);
    assert_eq!(
        x.request.headers.iter().nth(2),
        Some(("X-Request-Id", "req-123"))
    );
    assert_eq!(e.api_id, "", "enrichment fields stay default");
}

#[test]
fn request_id_from_traceparent() {
    let mut s = Sim::new(Obs::Server);
    s.request(b"GET / HTTP/1.1\r\nHost: a\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n");
    s.response(&ok(b""));
    s.request(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-ID: explicit\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n");
    s.response(&ok(b""));
    s.request(b"GET / HTTP/1.1\r\nHost: a\r\ntraceparent: nonsense\r\n\r\n");
    s.response(&ok(b""));
    let ids: Vec<String> = s.take().into_iter().map(|x| x.event.request_id).collect();
    assert_eq!(
        ids,
        vec!["4bf92f3577b34da6a3ce929d0e0e4736", "explicit", ""]
    );
}

#[test]
fn stray_crlf_after_a_body_is_not_a_lost_request() {
    let mut s = Sim::new(Obs::Server);
    s.request(b"POST /form HTTP/1.1\r\nContent-Length: 3\r\n\r\na=b");
    s.segment(C2S, b"\r\n"); // a continuation within the POST's capture
    s.response(&ok(b"1"));
    s.request(&get("/next"));
    s.response(&ok(b"2"));
    let got: Vec<(String, u16)> = s
        .take()
        .into_iter()
        .map(|x| (x.event.path, x.event.status))
        .collect();
    assert_eq!(
        got,
        vec![("/form".to_string(), 200), ("/next".to_string(), 200)]
    );
    assert_eq!((s.stats().gaps, s.stats().malformed), (0, 0));
    // Without the capture (the kernel stopped copying), the 2-byte hole is not taken for a lost request either.
    let mut s = Sim::new(Obs::Server);
    s.request(b"POST /form HTTP/1.1\r\nContent-Length: 3\r\n\r\na=b");
    s.cap_left[C2S] = 0;
    s.segment(C2S, b"\r\n");
    s.response(&ok(b"1"));
    s.request(&get("/next"));
    s.response(&ok(b"2"));
    assert_eq!(s.take().len(), 2);
    assert_eq!((s.stats().gaps, s.stats().malformed), (0, 0));
}

#[test]
fn monotonic_offset_is_plausible() {
    let off = super::mono_to_unix_offset_ns();
    assert!(
        off > 1_600_000_000_000_000_000,
        "Unix time minus uptime must be after 2020: {off}"
    );
}

#[test]
fn pipelined_requests_and_responses_in_one_segment() {
    let mut s = Sim::new(Obs::Server);
    let reqs = [get("/a"), get("/b?x=1"), get("/c")];
    let resps = [
        ok(b"first"),
        status(404, "Content-Length: 0\r\n"),
        ok(&body(100)),
    ];
    s.request(&reqs.concat());
    s.advance_us(100);
    s.response(&resps.concat());
    let ex = s.take();
    assert_eq!(ex.len(), 3, "one exchange per pipelined request: {ex:#?}");
    let got: Vec<(&str, u16, u64, u64)> = ex
        .iter()
        .map(|x| {
            (
                x.event.path.as_str(),
                x.event.status,
                x.event.req_bytes,
                x.event.resp_bytes,
            )
        })
        .collect();
    let want: Vec<(&str, u16, u64, u64)> = vec![
        ("/a", 200, reqs[0].len() as u64, resps[0].len() as u64),
        ("/b", 404, reqs[1].len() as u64, resps[1].len() as u64),
        ("/c", 200, reqs[2].len() as u64, resps[2].len() as u64),
    ];
    assert_eq!(got, want);
}

#[test]
fn pipelined_chunked_responses_in_one_segment() {
    let mut s = Sim::new(Obs::Client);
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n".to_vec();
    s.request(&[get("/1"), get("/2")].concat());
    s.response(&[chunked.clone(), ok(b"x")].concat());
    let ex = s.take();
    assert_eq!(ex.len(), 2, "{ex:#?}");
    assert_eq!(
        ex[0].event.resp_bytes,
        chunked.len() as u64,
        "chunked body walked in the capture"
    );
    assert_eq!(ex[1].event.resp_bytes, ok(b"x").len() as u64);
}

#[test]
fn http10_close_delimited_body_sized_at_close() {
    let mut s = Sim::new(Obs::Server);
    let req = b"GET /old HTTP/1.0\r\nHost: legacy\r\n\r\n";
    let mut resp = b"HTTP/1.0 200 OK\r\nServer: SimpleHTTP/0.6\r\n\r\n".to_vec();
    resp.extend_from_slice(&body(100_000));
    s.request(req);
    s.write(S2C, &resp, 1448);
    assert!(
        s.take().is_empty(),
        "a close-delimited body has no size before close"
    );
    s.close();
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!(
        (e.status, e.req_bytes, e.resp_bytes),
        (200, req.len() as u64, resp.len() as u64)
    );
}

#[test]
fn chunked_response_sized_by_next_message() {
    let mut s = Sim::new(Obs::Server);
    let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(b"1000\r\n");
        chunked.extend_from_slice(&body(4096));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    s.request(&get("/stream"));
    s.write(S2C, &chunked, 1448);
    assert!(
        s.take().is_empty(),
        "the end of the chunked body was not captured"
    );
    s.request(&get("/next"));
    s.response(&ok(b"n"));
    let ex = s.take();
    assert_eq!(ex.len(), 2, "{ex:#?}");
    assert_eq!(
        ex[0].event.resp_bytes,
        chunked.len() as u64,
        "size from the next response's seq"
    );
    assert_eq!(ex[1].event.resp_bytes, ok(b"n").len() as u64);
}

#[test]
fn content_length_bodies_both_directions() {
    let mut s = Sim::new(Obs::Client);
    let payload = body(50_000);
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    req.extend_from_slice(&payload);
    let resp = ok(&body(20_000));
    s.write(C2S, &req, 1448);
    s.write(S2C, &resp, 1448);
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!(
        (e.method.as_str(), e.req_bytes, e.resp_bytes),
        ("POST", req.len() as u64, resp.len() as u64)
    );
    s.request(&get("/after"));
    s.response(&ok(b""));
    assert_eq!(
        s.take().len(),
        1,
        "the next exchange starts where the body ended"
    );
    assert_eq!(
        s.stats().misframed + s.stats().gaps + s.stats().malformed,
        0
    );
}

#[test]
fn request_body_prefix_is_kept_across_segments_and_bounded() {
    use crate::event::BODY_PREFIX;
    let post = |payload: &[u8]| {
        let mut req = format!(
            "POST /orders HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        )
        .into_bytes();
        req.extend_from_slice(payload);
        req
    };
    let payload = body(200);
    // Head and body in one segment; then the same request split into 7-byte segments (body across many).
    let mut s = Sim::new(Obs::Server);
    s.request(&post(&payload));
    s.response(&ok(b""));
    s.write(C2S, &post(&payload), 7);
    s.response(&ok(b""));
    // A short body, a GET (no body), and a chunked body (kept as on the wire, chunk-size lines included).
    s.request(&post(b"{\"n\":1}"));
    s.response(&ok(b""));
    s.request(&get("/x"));
    s.response(&ok(b""));
    let chunked =
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    s.write(C2S, chunked, 50);
    s.response(&ok(b""));
    let ex = s.take();
    assert_eq!(ex.len(), 5, "{ex:#?}");
    assert_eq!(
        ex[0].request.body_prefix.as_slice(),
        &payload[..BODY_PREFIX]
    );
    assert_eq!(
        ex[1].request.body_prefix, ex[0].request.body_prefix,
        "split across segments"
    );
    assert_eq!(ex[2].request.body_prefix.as_slice(), b"{\"n\":1}");
    assert_eq!(ex[3].request.body_prefix.as_slice(), b"");
    assert_eq!(
        ex[4].request.body_prefix.as_slice(),
        b"5\r\nhello\r\n0\r\n\r\n"
    );
    assert_eq!(
        s.stats().misframed + s.stats().gaps + s.stats().malformed,
        0
    );

    // The kernel's per-message copy ends 10 bytes into the body: the prefix is what was copied.
    let head_len = post(&payload).len() - payload.len();
    let cfg = FlowConfig {
        capture_bytes: (head_len + 10) as u32,
        ..FlowConfig::default()
    };
    let mut s = Sim::with_config(Obs::Server, cfg);
    s.write(C2S, &post(&payload), 30);
    s.response(&ok(b""));
    let ex = s.take();
    assert_eq!(one(&ex).request.body_prefix.as_slice(), &payload[..10]);
}

/// The kernel leaves bodies the agent does not read uncopied: the exchanges are the same as with every byte copied,
/// request body prefixes included, for bodies in many segments, pipelined messages, a bodiless response that
/// declares a length, and chunked bodies.
#[test]
fn bodies_left_uncopied_change_no_exchange() {
    let run = |head_scan: bool| {
        let mut s = Sim::new(Obs::Both);
        s.head_scan = head_scan;
        let json = body(5_000);
        let mut post = format!(
            "POST /orders HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            json.len()
        )
        .into_bytes();
        post.extend_from_slice(&json);
        s.write(C2S, &post, 1448);
        s.write(S2C, &ok(&body(3_000)), 1448);
        let mut two = get("/a");
        two.extend(get("/b"));
        s.request(&two);
        let mut both = ok(&body(300));
        both.extend(ok(&body(400)));
        s.response(&both);
        let mut head_then_get = b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        head_then_get.extend(get("/c"));
        s.request(&head_then_get);
        let mut bodiless = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nX-Pad: ".to_vec();
        bodiless.extend(vec![b'p'; 300]);
        bodiless.extend(b"\r\n\r\n");
        bodiless.extend(ok(&body(500)));
        s.response(&bodiless);
        s.request(&get("/chunked"));
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n".to_vec();
        chunked.extend(body(2_000));
        chunked.extend(b"\r\n0\r\n\r\n");
        s.response(&chunked);
        s.request(&get("/after"));
        s.response(&ok(&body(900)));
        let skipped = s
            .log
            .iter()
            .filter(|r| matches!(r, Rec::Data(h, _) if h.cap_len < h.payload_len))
            .count();
        let ex: Vec<_> = s
            .take()
            .into_iter()
            .map(|e| (format!("{:?}", e.event), e.request))
            .collect();
        (ex, skipped, s.stats())
    };
    let (scanned, skipped, stats) = run(true);
    let (whole, none_skipped, _) = run(false);
    assert_eq!(scanned.len(), 7);
    // Copied whole, only the POST's segment where the 4,096-byte cap ends is cut (seen at both ends: twice). Head
    // only, the POST's first segment and the 3,000- and 900-byte responses' are cut, and the POST's later segments
    // leave no record.
    assert_eq!((none_skipped, skipped), (2, 6));
    assert_eq!(scanned, whole);
    assert_eq!(stats.misframed + stats.gaps + stats.malformed, 0);
}

#[test]
fn body_that_looks_like_a_request_is_not_a_message() {
    let mut s = Sim::new(Obs::Server);
    let inner = get("/smuggled");
    let mut req = format!(
        "POST /p HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        inner.len()
    )
    .into_bytes();
    s.request(&req);
    s.request(&inner); // body segment starting with a method token: the kernel flags it START
    s.response(&ok(b""));
    req.extend_from_slice(&inner);
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!((e.path.as_str(), e.req_bytes), ("/p", req.len() as u64));
    assert_eq!(s.stats().misframed, 1);
}

#[test]
fn expect_100_continue() {
    let mut s = Sim::new(Obs::Server);
    let head =
        b"PUT /obj HTTP/1.1\r\nHost: s3\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n";
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    s.request(head);
    s.advance_us(200);
    s.response(interim);
    s.advance_us(200);
    s.write(C2S, &body(5000), 1448);
    s.advance_us(1000);
    let fin = status(201, "Content-Length: 0\r\n");
    s.response(&fin);
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!(e.status, 201, "the interim 100 is not the final response");
    assert_eq!(e.req_bytes, head.len() as u64 + 5000);
    assert_eq!(
        e.resp_bytes,
        (interim.len() + fin.len()) as u64,
        "interim bytes count as response bytes"
    );
    assert!(
        e.duration_us > 1400,
        "duration runs to the final response head: {}",
        e.duration_us
    );
    assert_eq!(s.stats().unmatched_responses, 0);
}

#[test]
fn head_204_304_have_no_body() {
    let mut s = Sim::new(Obs::Server);
    let head_resp = b"HTTP/1.1 200 OK\r\nContent-Length: 123456\r\n\r\n".to_vec();
    s.request(b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\n");
    s.response(&head_resp);
    s.request(&get("/nc"));
    s.response(&status(204, "Content-Length: 99\r\n"));
    s.request(b"GET /cached HTTP/1.1\r\nIf-None-Match: \"x\"\r\n\r\n");
    s.response(&status(304, "ETag: \"x\"\r\nContent-Length: 5000\r\n"));
    s.request(&get("/last"));
    s.response(&ok(b"z"));
    let ex = s.take();
    let got: Vec<(u16, u64)> = ex
        .iter()
        .map(|x| (x.event.status, x.event.resp_bytes))
        .collect();
    assert_eq!(
        got,
        vec![
            (200, head_resp.len() as u64),
            (204, status(204, "Content-Length: 99\r\n").len() as u64),
            (
                304,
                status(304, "ETag: \"x\"\r\nContent-Length: 5000\r\n").len() as u64
            ),
            (200, ok(b"z").len() as u64),
        ]
    );
    assert_eq!(ex[0].event.method, "HEAD");
}

#[test]
fn request_head_split_over_three_segments() {
    let mut s = Sim::new(Obs::Server);
    let req = b"GET /split/path?k=v HTTP/1.1\r\nHost: split.example\r\nUser-Agent: slow/1\r\nX-Long: 0123456789\r\n\r\n";
    s.segment(C2S, &req[..20]);
    s.segment(C2S, &req[20..50]);
    assert!(s.take().is_empty());
    s.segment(C2S, &req[50..]);
    s.response(&ok(b"ok"));
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!(
        (e.host.as_str(), e.path.as_str(), e.user_agent.as_str()),
        ("split.example", "/split/path", "slow/1")
    );
    assert_eq!(e.req_bytes, req.len() as u64);
    assert!(!e.truncated);
}

#[test]
fn reordered_continuation_is_reassembled() {
    let mut s = Sim::new(Obs::Server);
    let req = get("/reordered/abcdefghijklmnopqrstuvwxyz");
    s.segment(C2S, &req[..10]);
    s.segment(C2S, &req[10..30]);
    s.segment(C2S, &req[30..]);
    // Swap the last two records before the engine sees them.
    let mut s2 = Sim::new(Obs::Server);
    let recs = s.log.clone();
    for i in [0, 2, 1] {
        if let Rec::Data(h, p) = &recs[i] {
            s2.eng.on_data(h, p);
        }
    }
    s2.seq = s.seq;
    s2.response(&ok(b""));
    let ex = s2.take();
    assert_eq!(one(&ex).event.path, "/reordered/abcdefghijklmnopqrstuvwxyz");
    assert_eq!(s2.stats().out_of_order, 1);
}

#[test]
fn headers_beyond_the_capture_are_truncated() {
    let cfg = FlowConfig {
        capture_bytes: 256,
        ..FlowConfig::default()
    };
    let mut s = Sim::with_config(Obs::Server, cfg);
    let cookie = "c".repeat(1000);
    let req = format!("GET /t?q=1 HTTP/1.1\r\nHost: trunc.example\r\nCookie: {cookie}\r\nUser-Agent: never-seen\r\n\r\n");
    s.write(C2S, req.as_bytes(), 100);
    s.advance_us(10);
    s.response(&ok(b"fine"));
    s.request(&get("/after"));
    s.response(&ok(b""));
    let ex = s.take();
    assert_eq!(ex.len(), 2, "{ex:#?}");
    let e = &ex[0].event;
    assert!(e.truncated, "headers exceeded the capture");
    assert_eq!(
        (e.host.as_str(), e.path.as_str(), e.user_agent.as_str()),
        ("trunc.example", "/t", "")
    );
    assert_eq!(e.query_keys, vec!["q"]);
    assert_eq!(e.status, 200);
    assert_eq!(
        e.req_bytes,
        req.len() as u64,
        "size from the next request start"
    );
    assert!(!ex[1].event.truncated);
    assert_eq!(s.stats().truncated_heads, 1);
}

#[test]
fn both_sides_local_is_one_event_with_both_identities() {
    let mut s = Sim::new(Obs::Both);
    s.connect();
    for i in 0..3 {
        s.request(&get(&format!("/both/{i}")));
        s.response(&ok(&body(2000)));
    }
    s.close();
    let ex = s.take();
    assert_eq!(ex.len(), 3, "each request exactly once: {ex:#?}");
    for x in &ex {
        let e = &x.event;
        assert_eq!(e.side, Side::Both);
        assert_eq!(
            (e.client_pid, e.client_comm.as_str()),
            (CLIENT_PID + 1, "python3"),
            "client identity from connect()"
        );
        assert_eq!(
            (e.server_pid, e.server_comm.as_str()),
            (SERVER_PID, "nginx")
        );
        assert_eq!(e.client_cgroup, "/user.slice/client.scope");
        assert_eq!(e.server_cgroup, "/system.slice/nginx.service");
        assert_eq!(
            e.conn_id, CLIENT_COOKIE,
            "client cookie when the client is local"
        );
        assert_eq!(e.resp_bytes, ok(&body(2000)).len() as u64);
    }
    let st = s.stats();
    assert_eq!(
        st.duplicates, 6,
        "every segment's second observation merged"
    );
    assert_eq!(st.retransmits, 0);
    assert_eq!(st.sockets, 0, "close frees socket identities");
}

#[test]
fn client_only_observation() {
    let mut s = Sim::new(Obs::Client);
    s.request(&get("/out"));
    s.response(&ok(b"x"));
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!(e.side, Side::Client);
    assert_eq!(
        (e.client_pid, e.client_comm.as_str()),
        (CLIENT_PID, "curl"),
        "from the first egress record"
    );
    assert_eq!(
        (
            e.server_pid,
            e.server_comm.as_str(),
            e.server_cgroup.as_str()
        ),
        (0, "", "")
    );
    assert_eq!(e.conn_id, CLIENT_COOKIE);
    assert_eq!(
        e.src_port, 40000,
        "src is the client even though the server sent the response"
    );
}

#[test]
fn tc_ingress_without_socket() {
    let mut s = Sim::new(Obs::Server);
    let req = get("/tc");
    let hdr = DataHeader {
        kind: EVENT_DATA,
        hook: HOOK_TC_INGRESS,
        ts_ns: T0,
        saddr: s.client.0,
        daddr: s.server.0,
        sport: s.client.1,
        dport: s.server.1,
        seq: 7,
        payload_len: req.len() as u32,
        cap_len: req.len() as u32,
        flags: DATA_FLAG_START,
        ..DataHeader::default()
    };
    s.eng.on_data(&hdr, &req);
    s.eng.finish();
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!((e.side, e.status, e.server_pid), (Side::Server, 0, 0));
    assert!(
        e.conn_id >= 1 << 63,
        "a tuple-derived id when no socket cookie is known"
    );
}

#[test]
fn retransmitted_segments_are_dropped_and_counted() {
    let mut s = Sim::new(Obs::Both);
    let req = get("/rtx");
    s.request(&req);
    // Retransmit the request: same seq, seen again by both hooks.
    s.seq[C2S] = s.seq[C2S].wrapping_sub(req.len() as u32);
    s.request(&req);
    s.response(&ok(b"r"));
    let ex = s.take();
    assert_eq!(one(&ex).event.req_bytes, req.len() as u64);
    let st = s.stats();
    assert_eq!(st.retransmits, 2, "one per hook");
    assert_eq!(st.duplicates, 2, "one per segment");
}

#[test]
fn lost_request_record_keeps_pairing_aligned() {
    let mut s = Sim::new(Obs::Server);
    s.request(&get("/1"));
    s.response(&ok(b"1"));
    // Request 2 and its response happen while the ring buffer is full: only request 2's record is lost.
    let lost = get("/2");
    s.seq[C2S] = s.seq[C2S].wrapping_add(lost.len() as u32);
    s.response(&status(500, "Content-Length: 0\r\n"));
    s.request(&get("/3"));
    s.response(&ok(b"3"));
    let ex = s.take();
    let got: Vec<(&str, u16)> = ex
        .iter()
        .map(|x| (x.event.path.as_str(), x.event.status))
        .collect();
    assert_eq!(
        got,
        vec![("/1", 200), ("/3", 200)],
        "the 500 answered the lost request"
    );
    assert_eq!(s.stats().gaps, 1);
}

#[test]
fn lost_response_record_gives_status_zero() {
    let mut s = Sim::new(Obs::Client);
    s.request(&[get("/1"), get("/2"), get("/3")].concat());
    s.response(&ok(b"1"));
    let lost = ok(b"22");
    s.seq[S2C] = s.seq[S2C].wrapping_add(lost.len() as u32);
    s.response(&ok(b"333"));
    let ex = s.take();
    let got: Vec<(&str, u16, u64)> = ex
        .iter()
        .map(|x| (x.event.path.as_str(), x.event.status, x.event.resp_bytes))
        .collect();
    assert_eq!(
        got,
        vec![
            ("/1", 200, ok(b"1").len() as u64),
            ("/2", 0, lost.len() as u64),
            ("/3", 200, ok(b"333").len() as u64)
        ]
    );
}

#[test]
fn request_without_response_at_close_and_unmatched_response() {
    let mut s = Sim::new(Obs::Server);
    s.response(&ok(b"orphan"));
    assert_eq!(s.stats().unmatched_responses, 1);
    s.request(&get("/unanswered"));
    s.close();
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!(
        (e.path.as_str(), e.status, e.resp_bytes, e.duration_us),
        ("/unanswered", 0, 0, 0)
    );
    assert_eq!(s.stats().no_response, 1);
}

#[test]
fn idle_timeout_finalizes_and_drops() {
    let cfg = FlowConfig {
        idle_timeout_ns: 5_000_000_000,
        ..FlowConfig::default()
    };
    let mut s = Sim::with_config(Obs::Server, cfg);
    s.request(&get("/slow"));
    s.eng.tick(s.now + 1_000_000_000);
    assert!(s.take().is_empty(), "not idle yet");
    s.eng.tick(s.now + 6_000_000_000);
    let ex = s.take();
    assert_eq!(one(&ex).event.status, 0);
    let st = s.stats();
    assert_eq!((st.idle_connections, st.connections), (1, 0));
    // A late response for a dropped connection is unmatched, not a second event.
    s.response(&ok(b""));
    assert!(s.take().is_empty());
}

#[test]
fn undelimited_response_times_out_while_connection_is_busy() {
    let cfg = FlowConfig {
        idle_timeout_ns: 5_000_000_000,
        ..FlowConfig::default()
    };
    let mut s = Sim::with_config(Obs::Server, cfg);
    s.request(&[get("/events"), get("/queued")].concat());
    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    resp.extend_from_slice(b"5\r\nhello\r\n");
    s.response(&resp);
    s.now += 6_000_000_000;
    s.request(&get("/more")); // keeps the connection active
    s.eng.tick(s.now);
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!((e.path.as_str(), e.status), ("/events", 200));
    assert_eq!(
        e.resp_bytes,
        resp.len() as u64,
        "estimated from the bytes seen"
    );
    assert_eq!(s.stats().timed_out, 1);
    assert_eq!(s.stats().connections, 1);
}

#[test]
fn upgrade_stops_parsing() {
    let mut s = Sim::new(Obs::Server);
    s.request(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    s.response(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    s.request(&get("/inside-the-tunnel"));
    s.close();
    let ex = s.take();
    assert_eq!(one(&ex).event.status, 101);
}

#[test]
fn malformed_input_is_counted_not_fatal() {
    let cases: [&[u8]; 6] = [
        b"GET \x00\x01\x02\xff\xfe binary\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 abc Bad\r\n\r\n",
        b"GET / HTTP/7.0\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS on port 80",
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut s = Sim::new(Obs::Server);
        let hdr = DataHeader {
            kind: EVENT_DATA,
            hook: HOOK_CGROUP_INGRESS,
            ts_ns: T0,
            cookie: SERVER_COOKIE,
            saddr: s.client.0,
            daddr: s.server.0,
            sport: s.client.1,
            dport: s.server.1,
            seq: 1,
            payload_len: case.len() as u32,
            cap_len: case.len() as u32,
            flags: DATA_FLAG_START,
            ..DataHeader::default()
        };
        s.eng.on_data(&hdr, case);
        s.response(&ok(b""));
        s.eng.finish();
        let st = s.stats();
        assert!(
            st.malformed >= 1,
            "case {i} ({case:?}) must count as malformed: {st:?}"
        );
        let ex = s.take();
        assert!(
            ex.len() <= 1,
            "case {i}: at most the request itself: {ex:#?}"
        );
    }
}

#[test]
fn input_cut_short_by_close_is_a_truncated_event() {
    let mut s = Sim::new(Obs::Server);
    s.request(b"GET /cut?a=1 HTTP/1.1\r\nHost: cut.example\r\nAcc");
    s.close();
    let ex = s.take();
    let e = &one(&ex).event;
    assert!(e.truncated, "the head never completed");
    assert_eq!(
        (e.path.as_str(), e.host.as_str(), e.status),
        ("/cut", "cut.example", 0)
    );
    // Continuations whose start was never seen (non-HTTP traffic mid-stream): counted, nothing else.
    let mut s = Sim::new(Obs::Server);
    s.cap_left[C2S] = 100;
    s.segment(C2S, b"\x00\x01 not http at all");
    assert_eq!((s.stats().out_of_order, s.stats().connections), (1, 0));
}

#[test]
fn many_fields_are_reported_and_a_malformed_head_is_counted_but_answered() {
    let mut s = Sim::new(Obs::Server);
    let mut req = b"GET /many HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    s.request(&req);
    s.response(&status(201, "Content-Length: 0\r\n"));
    s.request(b"GET /nul\x00 HTTP/1.1\r\n\r\n");
    s.response(&ok(b"")); // answers the unreadable request: must not pair with the next one
    s.request(&get("/next"));
    s.response(&status(202, "Content-Length: 0\r\n"));
    let ex = s.take();
    let got: Vec<(&str, u16)> = ex
        .iter()
        .map(|x| (x.event.path.as_str(), x.event.status))
        .collect();
    assert_eq!(got, vec![("/many", 201), ("/next", 202)]);
    assert_eq!(s.stats().malformed, 1);
}

#[test]
fn invalid_records_are_counted() {
    let mut eng = Engine::new(FlowConfig::default(), resolver());
    let bad_kind = DataHeader {
        kind: 99,
        ..DataHeader::default()
    };
    eng.on_data(&bad_kind, b"GET / HTTP/1.1\r\n\r\n");
    let bad_len = DataHeader {
        kind: EVENT_DATA,
        hook: HOOK_CGROUP_EGRESS,
        payload_len: 2,
        cap_len: 10,
        flags: DATA_FLAG_START,
        ..DataHeader::default()
    };
    eng.on_data(&bad_len, b"GET / HTTP/1.1\r\n\r\n");
    let bad_hook = DataHeader {
        hook: 42,
        cap_len: 2,
        ..bad_len
    };
    eng.on_data(&bad_hook, b"GE");
    eng.on_conn(&ConnEvent {
        op: 77,
        ..ConnEvent::default()
    });
    // Payload shorter than cap_len: use what is there.
    let short = DataHeader {
        hook: HOOK_CGROUP_EGRESS,
        payload_len: 100,
        cap_len: 100,
        ..bad_len
    };
    eng.on_data(&short, b"GET /x");
    assert_eq!(eng.stats().malformed, 4);
}

#[test]
fn connection_table_cap_evicts_oldest() {
    let cfg = FlowConfig {
        max_connections: 2,
        ..FlowConfig::default()
    };
    let mut s = Sim::with_config(Obs::Server, cfg);
    for i in 0..3 {
        s.request(&get(&format!("/c{i}")));
        s.next_conn();
    }
    let st = s.stats();
    assert_eq!((st.evicted_connections, st.connections), (1, 2));
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!(
        (e.path.as_str(), e.status),
        ("/c0", 0),
        "the evicted connection's request is not lost"
    );
    s.eng.finish();
    assert_eq!(s.take().len(), 2);
    assert_eq!(s.stats().exchanges, 3);
}

#[test]
fn pending_cap_evicts_oldest_without_misaligning() {
    let cfg = FlowConfig {
        max_pending_per_connection: 2,
        ..FlowConfig::default()
    };
    let mut s = Sim::with_config(Obs::Server, cfg);
    s.request(&[get("/1"), get("/2"), get("/3")].concat());
    assert_eq!(s.stats().evicted_pending, 1);
    let ex = s.take();
    assert_eq!(
        (one(&ex).event.path.as_str(), one(&ex).event.status),
        ("/1", 0)
    );
    s.response(
        &[
            status(201, "Content-Length: 0\r\n"),
            status(202, "Content-Length: 0\r\n"),
            status(203, "Content-Length: 0\r\n"),
        ]
        .concat(),
    );
    let got: Vec<(String, u16)> = s
        .take()
        .into_iter()
        .map(|x| (x.event.path, x.event.status))
        .collect();
    assert_eq!(
        got,
        vec![("/2".to_string(), 202), ("/3".to_string(), 203)],
        "201 belonged to the evicted /1"
    );
}

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn random_records_never_panic() {
    let seeds: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"POST /x?a=1 HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HEAD / HTTP/1.0\r\n\r\n",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..40 {
        let cfg = FlowConfig {
            capture_bytes: 16 + rng.below(300) as u32,
            max_connections: 1 + rng.below(4) as usize,
            max_pending_per_connection: 1 + rng.below(4) as usize,
            idle_timeout_ns: 1 + rng.below(1_000_000),
            ..FlowConfig::default()
        };
        let mut eng = Engine::new(cfg, resolver());
        let mut out = Exchanges::default();
        for _ in 0..400 {
            let mut payload: Vec<u8> = if rng.below(3) == 0 {
                (0..rng.below(200)).map(|_| rng.next() as u8).collect()
            } else {
                let mut p = seeds[rng.below(seeds.len() as u64) as usize].to_vec();
                for _ in 0..rng.below(4) {
                    let i = rng.below(p.len() as u64) as usize;
                    p[i] = rng.next() as u8;
                }
                p.truncate(rng.below(p.len() as u64 + 1) as usize);
                p
            };
            if rng.below(5) == 0 {
                payload.extend(std::iter::repeat_n(b'x', rng.below(5000) as usize));
            }
            let port = |r: &mut Rng| [80u16, 8080, 40000, 40001][r.below(4) as usize];
            let addr = |r: &mut Rng| v4(10, 0, 0, 1 + r.below(2) as u8);
            let cap_len = payload.len() as u32;
            let hdr = DataHeader {
                kind: if rng.below(50) == 0 { 7 } else { EVENT_DATA },
                hook: 1 + rng.below(5) as u32,
                ts_ns: rng.below(10_000_000),
                cookie: rng.below(4),
                cgroup_id: rng.below(3),
                pid_tgid: rng.next(),
                comm: comm("fuzz"),
                saddr: addr(&mut rng),
                daddr: addr(&mut rng),
                sport: port(&mut rng),
                dport: port(&mut rng),
                seq: if rng.below(2) == 0 {
                    rng.next() as u32
                } else {
                    u32::MAX - rng.below(400) as u32
                },
                payload_len: cap_len
                    + if rng.below(4) == 0 {
                        rng.below(100_000) as u32
                    } else {
                        0
                    },
                cap_len,
                flags: rng.below(8) as u32,
                ack: 0,
            };
            eng.on_data(&hdr, &payload);
            match rng.below(20) {
                0 => eng.on_conn(&ConnEvent {
                    kind: EVENT_CONN,
                    op: rng.below(6) as u32,
                    cookie: rng.below(4),
                    pid_tgid: rng.next(),
                    laddr: addr(&mut rng),
                    raddr: addr(&mut rng),
                    lport: port(&mut rng),
                    rport: port(&mut rng),
                    snd_nxt: rng.next() as u32,
                    rcv_nxt: rng.next() as u32,
                    ..ConnEvent::default()
                }),
                1 => eng.tick(rng.below(20_000_000)),
                _ => {}
            }
            eng.drain(&mut out);
        }
        eng.finish();
        eng.drain(&mut out);
        let st = eng.stats();
        assert_eq!(
            st.exchanges as usize,
            out.len(),
            "round {round}: every exchange counted once"
        );
        assert_eq!(
            (st.connections, st.pending_requests),
            (0, 0),
            "round {round}: finish frees everything"
        );
    }
}

#[test]
fn random_splits_of_a_valid_conversation_give_the_same_events() {
    let mut rng = Rng(42);
    let conversation = [
        (get("/a?x=1"), ok(&body(300))),
        (
            b"POST /b HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody".to_vec(),
            status(204, ""),
        ),
        (
            get("/c"),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n".to_vec(),
        ),
    ];
    for round in 0..30 {
        let obs = [Obs::Client, Obs::Server, Obs::Both][round % 3];
        let mut s = Sim::new(obs);
        for (req, resp) in &conversation {
            // The kernel needs the method token or `HTTP/1.` in the first segment of a message.
            let (m1, m2) = (
                8 + rng.below(req.len() as u64) as usize,
                8 + rng.below(resp.len() as u64) as usize,
            );
            s.write(C2S, req, m1);
            s.write(S2C, resp, m2);
        }
        s.close();
        let ex = s.take();
        let got: Vec<(String, u16, u64, u64)> = ex
            .into_iter()
            .map(|x| {
                (
                    x.event.path,
                    x.event.status,
                    x.event.req_bytes,
                    x.event.resp_bytes,
                )
            })
            .collect();
        let want: Vec<(String, u16, u64, u64)> = conversation
            .iter()
            .zip(["/a", "/b", "/c"])
            .zip([200, 204, 200])
            .map(|(((q, r), p), st)| (p.to_string(), st, q.len() as u64, r.len() as u64))
            .collect();
        assert_eq!(got, want, "round {round} ({obs:?})");
    }
}

#[test]
fn empty_lines_before_a_request_and_a_response_are_skipped() {
    let mut s = Sim::new(Obs::Server);
    let req = b"\r\n\r\nGET /lead HTTP/1.1\r\nHost: lead.example\r\n\r\n";
    s.request(req);
    s.response(b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!(
        (e.path.as_str(), e.host.as_str(), e.status),
        ("/lead", "lead.example", 200)
    );
    assert_eq!(
        e.req_bytes,
        req.len() as u64 - 4,
        "the empty lines are not the request's"
    );
    assert_eq!(s.stats().malformed + s.stats().out_of_order, 0);
}

#[test]
fn registered_and_extension_methods_are_messages() {
    let mut s = Sim::new(Obs::Server);
    let methods = ["PURGE", "M-SEARCH", "QUERY", "PROPFIND", "BASELINE-CONTROL"];
    for m in methods {
        s.request(format!("{m} /m HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        s.response(&ok(b"ok"));
    }
    let ex = s.take();
    let got: Vec<&str> = ex.iter().map(|x| x.event.method.as_str()).collect();
    assert_eq!(got, methods);
}

#[test]
fn a_declared_body_cut_short_counts_the_bytes_sent() {
    let mut s = Sim::new(Obs::Server);
    s.connect();
    let head = b"POST /short HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n";
    let mut req = head.to_vec();
    req.extend_from_slice(b"abc");
    s.request(&req);
    let resp = status(400, "Content-Length: 0\r\nConnection: close\r\n");
    s.response(&resp);
    s.close();
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!((e.path.as_str(), e.status), ("/short", 400));
    assert_eq!(
        e.req_bytes,
        req.len() as u64,
        "the bytes sent, not the 1000 announced"
    );
    assert_eq!(e.resp_bytes, resp.len() as u64);
    assert!(e.incomplete, "the request stopped before its declared end");
    // A body that did go on the wire (acknowledged by the response) is complete.
    let mut s = Sim::new(Obs::Server);
    s.request(head);
    s.write(C2S, &body(1000), 1448);
    s.response(&ok(b""));
    let ex = s.take();
    let e = &one(&ex).event;
    assert_eq!(
        (e.req_bytes, e.incomplete),
        (head.len() as u64 + 1000, false)
    );
}

#[test]
fn a_body_framed_by_a_hidden_field_marks_the_request_it_hides() {
    let mut s = Sim::new(Obs::Server);
    // "Missing CR between headers": Content-Length hides in Dummy's value for a reader that wants CRLF; the
    // lenient reading takes it, and the 23 bytes after the head as a body.
    s.request(
        b"GET /front HTTP/1.1\r\nHost: h\r\nDummy: x\nContent-Length: 23\r\n\r\nGET / HTTP/1.1\r\nDummy: GET /admin HTTP/1.1\r\nHost: h\r\n\r\n",
    );
    s.response(&ok(b"1"));
    s.response(&ok(b"2"));
    let ex = s.take();
    let got: Vec<(&str, Vec<String>)> = ex
        .iter()
        .map(|x| (x.event.path.as_str(), x.event.framing_anomaly.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("/front", vec!["bare_lf".to_string()]),
            ("/admin", vec!["follows_anomaly".to_string()])
        ]
    );
    // bare_lf, cl_and_te, content_length, transfer_encoding, follows_anomaly
    assert_eq!(s.stats().framing_anomalies, [1, 0, 0, 0, 1]);
    // A clean request after it is not marked.
    s.request(&get("/clean"));
    s.response(&ok(b""));
    let ex = s.take();
    assert_eq!(one(&ex).event.path, "/clean");
    assert!(one(&ex).event.framing_anomaly.is_empty());
    assert_eq!(s.stats().framing_anomalies, [1, 0, 0, 0, 1]);
}

#[test]
fn started_notes_name_requests_as_their_exchanges_will_and_learn_the_server_from_its_answer() {
    use super::{Peer, Started};
    let cfg = FlowConfig {
        report_started: true,
        ..FlowConfig::default()
    };
    let mut s = Sim::with_config(Obs::Both, cfg);
    s.connect();
    for _ in 0..2 {
        s.request(b"GET /a HTTP/1.1\r\nHost: a\r\nX-Request-Id: r-1\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n");
        s.advance_us(300);
        s.response(&ok(b"hi"));
        s.advance_us(300);
    }
    let ex = s.take();
    let mut notes = Vec::new();
    s.eng.drain_started(&mut notes);
    assert_eq!(ex.len(), 2);
    assert_eq!(notes.len(), 4, "{notes:#?}");
    let (trace, request_id) = (
        crate::origin::id_hash("4bf92f3577b34da6a3ce929d0e0e4736"),
        crate::origin::id_hash("r-1"),
    );
    for (i, x) in ex.iter().enumerate() {
        let e = &x.event;
        // A fresh server socket's process is known only once it answers; on the kept-alive connection, at once.
        let server_then = if i == 0 {
            Peer::Unknown
        } else {
            Peer::Local(SERVER_PID)
        };
        assert_eq!(
            notes[2 * i],
            Started::Request {
                conn_id: e.conn_id,
                ts: e.ts,
                client_pid: e.client_pid,
                server: server_then,
                trace,
                request_id,
            }
        );
        assert_eq!(
            notes[2 * i + 1],
            Started::Response {
                conn_id: e.conn_id,
                req_ts: e.ts,
                ts: crate::event::Timestamp(e.ts.0 + e.duration_us as i64),
                server: Peer::Local(SERVER_PID),
            }
        );
    }
    // Off by default: nothing is noted.
    let mut quiet = Sim::new(Obs::Both);
    quiet.request(&get("/"));
    quiet.response(&ok(b""));
    quiet.eng.drain_started(&mut notes);
    assert_eq!(notes.len(), 4);
}

/// Both ends local, the connection evicted between the client's record of its request and the server's: the
/// exchange is reported once (at the eviction, without the response still to come), the server's copy is merged
/// as a duplicate and the response skipped, not tracked as a new connection.
#[test]
fn connection_evicted_between_its_two_local_ends_is_reported_once() {
    let cfg = FlowConfig {
        max_connections: 4,
        ..FlowConfig::default()
    };
    let mut s = Sim::with_config(Obs::Both, cfg);
    s.connect();
    let req = get("/a");
    let seq = s.seq[C2S];
    s.seq[C2S] = seq.wrapping_add(req.len() as u32);
    s.record(
        C2S,
        HOOK_CGROUP_EGRESS,
        seq,
        &req,
        DATA_FLAG_START,
        req.len(),
    );
    let (a_client, a_seq) = (s.client, s.seq);
    // Four other connections, each with an answered exchange, evict /a's.
    for i in 0..4 {
        s.next_conn();
        s.advance_us(10);
        s.request(&get(&format!("/o{i}")));
        s.response(&ok(b"o"));
    }
    assert_eq!(s.stats().evicted_connections, 1);
    (s.client, s.seq) = (a_client, a_seq);
    s.advance_us(10);
    s.record(
        C2S,
        HOOK_CGROUP_INGRESS,
        seq,
        &req,
        DATA_FLAG_START,
        req.len(),
    );
    s.response(&ok(b"hello"));
    s.close();
    s.eng.finish();
    let ex = s.take();
    let a: Vec<_> = ex.iter().filter(|e| e.event.path == "/a").collect();
    assert_eq!(a.len(), 1, "reported once: {a:#?}");
    assert_eq!(
        (a[0].event.status, a[0].event.side),
        (0, Side::Client),
        "evicted before its response and before the server's end was seen"
    );
    let st = s.stats();
    assert_eq!(
        (
            st.exchanges,
            st.no_response,
            st.unmatched_responses,
            st.duplicates
        ),
        (5, 1, 0, 10),
        "four others answered, /a once; the server's copy of /a merged (with the 9 second copies of every other \
         segment); its answer skipped: {st:#?}"
    );
    // A new connection on the same endpoints is tracked afresh: its first request is not taken for a copy.
    s.seq = [a_seq[C2S].wrapping_add(1_000_000), a_seq[S2C]];
    s.connect();
    s.request(&get("/again"));
    s.response(&ok(b"x"));
    s.close();
    assert_eq!(one(&s.take()).event.status, 200);
}

/// Evicts the connection `s` is on (max_connections 2, the server's end seen, not closed: its close record was lost
/// or it was opened before the agent started) by two other connections' requests, then puts `s` back on its
/// endpoints, 10 us later (well within the idle timeout). Returns the evicted connection's next sequence numbers.
fn evict_with_two_others(s: &mut Sim) -> [u32; 2] {
    let (client, seq) = (s.client, s.seq);
    for i in 0..2 {
        s.next_conn();
        s.advance_us(10);
        s.request(&get(&format!("/o{i}")));
    }
    assert_eq!(s.stats().evicted_connections, 1);
    (s.client, s.seq, s.cap_left) = (client, seq, [0; 2]);
    s.advance_us(10);
    seq
}

/// A server-side connection evicted with a request unanswered, and, within the idle timeout, a new connection from
/// the same client port (the server socket accepted afresh, a new cookie): the new connection's request and answer
/// are its own, not taken for the evicted one's (whose owed response would swallow the answer).
#[test]
fn new_connection_on_an_evicted_ones_endpoints_is_tracked_afresh() {
    let cfg = FlowConfig {
        max_connections: 2,
        ..FlowConfig::default()
    };
    let mut s = Sim::with_config(Obs::Server, cfg);
    s.request(&get("/a"));
    let seq = evict_with_two_others(&mut s);
    // The client port again, new sequence numbers, a new server socket.
    s.seq = [
        seq[C2S].wrapping_add(7_000_000),
        seq[S2C].wrapping_add(9_000_000),
    ];
    s.cookies[1] = SERVER_COOKIE + 100;
    s.request(&get("/b"));
    s.response(&ok(b"fresh"));
    s.close();
    let ex = s.take();
    let b: Vec<_> = ex.iter().filter(|e| e.event.path == "/b").collect();
    assert_eq!(b.len(), 1, "{ex:#?}");
    assert_eq!(
        (b[0].event.status, b[0].event.resp_bytes, b[0].event.conn_id),
        (200, ok(b"fresh").len() as u64, SERVER_COOKIE + 100),
        "answered on its own connection"
    );
    let a: Vec<_> = ex.iter().filter(|e| e.event.path == "/a").collect();
    assert_eq!((a.len(), a[0].event.status), (1, 0), "{ex:#?}");
    let st = s.stats();
    assert_eq!(
        (st.duplicates, st.unmatched_responses, st.out_of_order),
        (0, 0, 0),
        "{st:#?}"
    );
}

/// The same eviction, then the evicted connection itself goes on (the same server socket): its owed response is
/// skipped as before (reported at the eviction), and its next exchange is merged into it, not tracked afresh.
#[test]
fn evicted_connection_continued_by_its_own_socket_is_merged() {
    let cfg = FlowConfig {
        max_connections: 2,
        ..FlowConfig::default()
    };
    let mut s = Sim::with_config(Obs::Server, cfg);
    s.request(&get("/a"));
    evict_with_two_others(&mut s);
    s.response(&ok(b"late"));
    s.request(&get("/a2"));
    s.response(&ok(b"next"));
    s.close();
    let ex = s.take();
    let a: Vec<_> = ex.iter().filter(|e| e.event.path == "/a").collect();
    assert_eq!((a.len(), a[0].event.status), (1, 0), "{ex:#?}");
    let a2: Vec<_> = ex.iter().filter(|e| e.event.path == "/a2").collect();
    assert_eq!((a2.len(), a2[0].event.status), (1, 200), "{ex:#?}");
    let st = s.stats();
    assert_eq!(
        (st.unmatched_responses, st.out_of_order),
        (0, 0),
        "the late answer is the one owed to /a: {st:#?}"
    );
}

/// What one tracked connection costs (README "Memory bounds"): a connection's inline state, boxed in the table, and
/// the socket and tombstone entries. Growing them is a decision, not an accident.
#[test]
fn per_connection_state_stays_small() {
    use std::mem::size_of;
    assert!(
        size_of::<super::conn::Conn>() <= 640,
        "{}",
        size_of::<super::conn::Conn>()
    );
    assert!(size_of::<super::stream::Stream>() <= 216);
    assert!(size_of::<super::SockInfo>() <= 32);
    // 48 bytes, and 16 for its ends' socket cookies (a later connection on the same endpoints is told apart by them).
    assert!(size_of::<super::evicted::Tombstone>() <= 64);
}

/// An idle keep-alive connection after a completed exchange holds no heap buffer once the engine's next tick has
/// passed: no request queue, stash or head buffer is kept with its capacity once the message it held is done (a
/// request queue keeps its room until that tick, for the connection's next request).
#[test]
fn idle_connection_after_an_exchange_holds_no_heap() {
    let mut s = Sim::new(Obs::Both);
    s.connect();
    // A head split over segments (buffered until complete), then a pipelined pair.
    let req = get("/split");
    s.write(C2S, &req, 20);
    s.response(&ok(b"first"));
    let mut two = get("/a");
    two.extend(get("/b"));
    s.request(&two);
    s.response(&[ok(b"a"), ok(b"b")].concat());
    assert_eq!(s.take().len(), 3);
    assert_eq!(s.eng.conns.len(), 1);
    s.eng.tick(s.now);
    let conn = s
        .eng
        .conns
        .values()
        .next()
        .expect("the connection is tracked");
    assert_eq!(conn.heap_capacity(), 0, "{conn:#?}");
}
