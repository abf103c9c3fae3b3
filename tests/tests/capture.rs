//! End to end: real servers and clients on loopback and across network namespaces, the real agent, and the events
//! that reach its NDJSON sink, checked field by field and counted.
#![forbid(unsafe_code)]
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::{Duration, SystemTime},
};

use observer_tests::*;
use serde_json::Value;

fn by_path(events: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in events {
        m.entry(format!(
            "{} {}",
            e["method"].as_str().unwrap_or(""),
            e["path"].as_str().unwrap_or("")
        ))
        .or_default()
        .push(e.clone());
    }
    m
}

fn one<'a>(m: &'a BTreeMap<String, Vec<Value>>, key: &str, all: &[Value]) -> &'a Value {
    let v = m
        .get(key)
        .unwrap_or_else(|| panic!("no event for {key}; events:\n{}", brief(all)));
    assert_eq!(
        v.len(),
        1,
        "{key} must appear exactly once; events:\n{}",
        brief(all)
    );
    &v[0]
}

fn assert_local_both(e: &Value, client_comm: &str, server_comm: &str) {
    assert_eq!(e["side"], "both", "both ends are local sockets: {e}");
    assert_eq!(e["client_comm"], client_comm, "{e}");
    assert_eq!(e["server_comm"], server_comm, "{e}");
    assert!(e["client_pid"].as_u64().unwrap_or(0) > 0, "client pid: {e}");
    assert!(e["server_pid"].as_u64().unwrap_or(0) > 0, "server pid: {e}");
    assert!(e["conn_id"].as_u64().unwrap_or(0) > 0, "conn_id: {e}");
    assert!(
        e["ts"]
            .as_str()
            .is_some_and(|t| t.len() == 27 && t.ends_with('Z')),
        "ts RFC 3339 with µs: {e}"
    );
}

/// Every event's `ts` (its request's start) lies between `from` and `to`, and so does its response's end: the kernel's
/// times (TCP's departure stamp on egress, the clock elsewhere) are CLOCK_MONOTONIC and turned into wall time right.
/// A stamp from another clock (REALTIME, TAI) would be off by years or by leap seconds.
fn assert_times_within(events: &[Value], from: SystemTime, to: SystemTime) {
    // The agent turns monotonic times into wall time with an offset it reads: some slack for that reading.
    let (from, to) = (
        from - Duration::from_millis(50),
        to + Duration::from_millis(50),
    );
    for e in events {
        let ts = e["ts"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .unwrap_or_else(|| panic!("ts RFC 3339: {e}"));
        let end = ts + Duration::from_micros(e["duration_us"].as_u64().unwrap_or(0));
        assert!(
            from <= ts && end <= to,
            "request at {ts:?} and its response by {end:?} lie within the traffic's window {from:?} to {to:?}: {e}"
        );
    }
}

#[test]
fn loopback_every_framing_case_once_with_both_identities() {
    require_root();
    let dir = scratch("framing");
    let port = 18301;
    let _server = python_server(&dir, None, "127.0.0.1", port);
    let obs = Observer::start(&dir, &["--ports", &port.to_string()]);
    let from = SystemTime::now();
    let base = format!("http://127.0.0.1:{port}");
    // One keep-alive connection, four framings.
    curl(
        None,
        &[
            &format!("{base}/cl/100"),
            "-o",
            "/dev/null",
            &format!("{base}/chunked/5000"),
            "-o",
            "/dev/null",
            &format!("{base}/nothing"),
            "-o",
            "/dev/null",
            &format!("{base}/notmod"),
            "-o",
            "/dev/null",
        ],
    );
    curl(None, &["-I", &format!("{base}/cl/50")]);
    curl(
        None,
        &["-0", "-o", "/dev/null", &format!("{base}/close/3000")],
    );
    let body = dir.join("body.bin");
    std::fs::write(&body, vec![b'b'; 2000]).expect("body");
    curl(
        None,
        &[
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &format!("@{}", body.display()),
            &format!("{base}/upload"),
        ],
    );
    curl(
        None,
        &[
            "-H",
            "X-Request-Id: req-abc-123",
            "-H",
            "User-Agent: e2e-agent/1",
            &format!("{base}/cl/10?user=1&token=2&user=3"),
        ],
    );
    curl(
        None,
        &[
            "-H",
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            &format!("{base}/cl/1"),
        ],
    );
    // Request headers in two TCP segments, 150 ms apart (TCP_NODELAY): continuation capture and reassembly.
    sh(Command::new("python3").args([
        "-c",
        &format!(
            "import socket, time\n\
             s = socket.create_connection(('127.0.0.1', {port}))\n\
             s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)\n\
             s.sendall(b'GET /cl/7 HTTP/1.1\\r\\nHost: split.example\\r\\n')\n\
             time.sleep(0.15)\n\
             s.sendall(b'X-Part: two\\r\\nConnection: close\\r\\n\\r\\n')\n\
             data = b''\n\
             while True:\n\
             \x20   b = s.recv(4096)\n\
             \x20   if not b: break\n\
             \x20   data += b\n\
             assert data.startswith(b'HTTP/1.') and data.endswith(b'x' * 7), data\n"
        ),
    ]));
    let to = SystemTime::now();
    std::thread::sleep(Duration::from_millis(300));
    let all = obs.stop();
    let events = on_port(&all, port);
    assert_eq!(
        events.len(),
        10,
        "10 requests sent, each exactly once:\n{}",
        brief(&events)
    );
    let m = by_path(&events);

    let e = &m["GET /cl/100"][0];
    assert_local_both(e, "curl", "python3");
    assert_eq!(e["status"], 200);
    assert_eq!(e["host"], format!("127.0.0.1:{port}"));
    assert_eq!(e["src_ip"], "127.0.0.1");
    assert_eq!(e["dst_ip"], "127.0.0.1");
    assert_eq!(e["dst_port"], port);
    let resp = e["resp_bytes"].as_u64().expect("resp_bytes");
    assert!(resp > 100 && resp < 400, "headers + 100 body bytes: {e}");
    let conn = e["conn_id"].clone();
    for key in ["GET /chunked/5000", "GET /nothing", "GET /notmod"] {
        assert_eq!(
            one(&m, key, &events)["conn_id"],
            conn,
            "{key} reused curl's keep-alive connection"
        );
    }
    let chunked = one(&m, "GET /chunked/5000", &events);
    assert_eq!(chunked["status"], 200);
    assert!(
        chunked["resp_bytes"].as_u64().unwrap() > 5000,
        "chunked body counted: {chunked}"
    );
    assert_eq!(one(&m, "GET /nothing", &events)["status"], 204);
    assert_eq!(one(&m, "GET /notmod", &events)["status"], 304);
    let head = one(&m, "HEAD /cl/50", &events);
    assert_eq!(head["status"], 200);
    assert!(
        head["resp_bytes"].as_u64().unwrap() < 200,
        "HEAD has no body: {head}"
    );
    let close = one(&m, "GET /close/3000", &events);
    assert_eq!(close["status"], 200);
    let cb = close["resp_bytes"].as_u64().unwrap();
    assert!(
        (3000..3400).contains(&cb),
        "close-delimited body counted from the connection close: {close}"
    );
    let post = one(&m, "POST /upload", &events);
    assert_eq!(
        post["status"], 201,
        "final status, not the interim 100: {post}"
    );
    assert!(
        post["req_bytes"].as_u64().unwrap() >= 2000,
        "request body counted: {post}"
    );
    let q = one(&m, "GET /cl/10", &events);
    assert_eq!(
        q["query_keys"],
        serde_json::json!(["user", "token"]),
        "names only, deduplicated: {q}"
    );
    assert_eq!(q["request_id"], "req-abc-123");
    assert_eq!(q["user_agent"], "e2e-agent/1");
    assert!(
        !q.to_string().contains("token=2"),
        "query values never leave the agent: {q}"
    );
    assert_eq!(
        one(&m, "GET /cl/1", &events)["request_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let split = one(&m, "GET /cl/7", &events);
    assert_eq!(
        (split["host"].as_str(), split["status"].as_u64()),
        (Some("split.example"), Some(200)),
        "headers split over two segments: {split}"
    );
    assert_local_both(split, "python3", "python3");
    assert!(
        split["duration_us"].as_u64().unwrap() >= 150_000,
        "duration from the first segment of the request: {split}"
    );
    for e in &events {
        assert!(e["duration_us"].as_u64().is_some(), "{e}");
        assert_eq!(e["truncated"], false, "{e}");
    }
    assert_times_within(&events, from, to);
}

#[test]
fn nginx_under_wrk_every_request_exactly_once() {
    require_root();
    let dir = scratch("wrk");
    let port = 18302;
    let _nginx = nginx(&dir, None, "127.0.0.1", port);
    // Waits of 5 s between drains unless the kernel wakes the reader: the ring fills in well under a second of
    // this load, so a wake-up that does not come loses records.
    let obs = Observer::start(
        &dir,
        &["--ports", &port.to_string(), "--poll-interval", "5s"],
    );
    // A quiet spell first: the reader backs off to its longest wait, and the load below begins as a burst the
    // kernel has to wake it for.
    std::thread::sleep(Duration::from_millis(1500));
    // Then load until the ring buffer has gone round at least twice (bounded: ten seconds of wrk), so records that
    // straddle its end are read too. Every other second the requests carry an 8 KiB cookie: records of 4 KiB,
    // reserved by both CPUs at once (wrk's requests and nginx's responses), which is where a wake-up decided by
    // the record that passes the mark was lost.
    let wrapped = 2.0 * f64::from(observer_common::RING_BYTES);
    let cookie = format!("Cookie: c={}", "x".repeat(8192));
    let from = SystemTime::now();
    for i in 0..10 {
        let url = format!("http://127.0.0.1:{port}/index.html");
        let mut args = vec!["-t1", "-c8", "-d1s", url.as_str()];
        if i % 2 == 1 {
            args.extend(["-H", cookie.as_str()]);
        }
        sh(Command::new("wrk").args(&args));
        std::thread::sleep(Duration::from_millis(300));
        if obs.metric("observer_ringbuf_bytes_total") >= wrapped {
            break;
        }
    }
    curl(
        None,
        &[
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{port}/big.bin"),
        ],
    );
    let to = SystemTime::now();
    std::thread::sleep(Duration::from_millis(500));
    let metrics = obs.metrics_text();
    assert_eq!(
        obs.metric("observer_kernel_ringbuf_full_total"),
        0.0,
        "no record lost to a full ring after the quiet spell (the kernel woke the reader)"
    );
    // Exported. It also counts waits that records already waiting ended at once, so it proves no wake-up: the
    // full-ring count above is the test of those.
    let _ = obs.metric("observer_ringbuf_early_wakeups_total");
    let ring_bytes = obs.metric("observer_ringbuf_bytes_total");
    assert!(
        ring_bytes >= wrapped,
        "ten seconds of wrk put only {ring_bytes} bytes through the {} byte ring buffer",
        observer_common::RING_BYTES
    );
    let all = obs.stop();
    let events = on_port(&all, port);
    let served = access_log(&dir);
    assert!(
        served.len() > 1000,
        "wrk made a real load: {} requests",
        served.len()
    );
    assert_eq!(
        events.len(),
        served.len(),
        "nginx answered {} requests; the observer reported {}",
        served.len(),
        events.len()
    );
    let big: Vec<&Value> = events.iter().filter(|e| e["path"] == "/big.bin").collect();
    assert_eq!(big.len(), 1);
    assert!(
        big[0]["resp_bytes"].as_u64().unwrap() > 300_000,
        "large body counted: {}",
        big[0]
    );
    assert!(
        events
            .iter()
            .all(|e| e["status"] == 200 && e["server_comm"] == "nginx"),
        "{}",
        brief(&events[..5])
    );
    assert!(
        metrics.contains("observer_kernel_ringbuf_full_total"),
        "kernel counters exported:\n{metrics}"
    );
    assert!(metrics.contains("observer_exchanges_total"), "{metrics}");
    assert_times_within(&events, from, to);
}

#[test]
fn a_reused_four_tuple_is_a_new_connection_with_its_own_identities() {
    require_root();
    let dir = scratch("reuse");
    let port = 18304;
    let client_port = 18305;
    let _server = python_server(&dir, None, "127.0.0.1", port);
    let obs = Observer::start(&dir, &["--ports", &port.to_string()]);
    // Two connections from the same client port: the server closes first (Connection: close), so its side holds
    // the TIME_WAIT and the client may bind the port again; the second SYN reuses the 4-tuple.
    let client = format!(
        "import socket\n\
         for i in range(2):\n\
         \x20   s = socket.socket()\n\
         \x20   s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         \x20   s.bind(('127.0.0.1', {client_port}))\n\
         \x20   s.connect(('127.0.0.1', {port}))\n\
         \x20   s.sendall(b'GET /cl/10?conn=%d HTTP/1.1\\r\\nHost: reuse\\r\\nConnection: close\\r\\n\\r\\n' % i)\n\
         \x20   while s.recv(65536):\n\
         \x20       pass\n\
         \x20   s.close()\n"
    );
    sh(Command::new("python3").args(["-c", &client]));
    std::thread::sleep(Duration::from_millis(500));
    let all = obs.stop();
    let events = on_port(&all, port);
    assert_eq!(events.len(), 2, "{}", brief(&events));
    assert!(
        events.iter().all(|e| e["src_port"] == client_port),
        "both from port {client_port}: {}",
        brief(&events)
    );
    assert_ne!(
        events[0]["conn_id"], events[1]["conn_id"],
        "two connections, not one"
    );
    for e in &events {
        // State the kernel kept for the first connection must not stand in for the second's: each carries both
        // processes, learned from its own sockets.
        assert_local_both(e, "python3", "python3");
        assert_ne!(e["client_pid"], e["server_pid"], "{e}");
        assert_eq!(e["status"], 200, "{e}");
    }
}

#[test]
fn pipelined_requests_in_one_segment() {
    require_root();
    let dir = scratch("pipeline");
    let port = 18303;
    let _nginx = nginx(&dir, None, "127.0.0.1", port);
    let obs = Observer::start(&dir, &["--ports", &port.to_string()]);
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut req = String::new();
    for p in ["/index.html?a=1", "/nothing", "/missing"] {
        req.push_str(&format!("GET {p} HTTP/1.1\r\nHost: pipe.test\r\n\r\n"));
    }
    req.push_str("GET /index.html HTTP/1.1\r\nHost: pipe.test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read");
    drop(s);
    std::thread::sleep(Duration::from_millis(300));
    let events = on_port(&obs.stop(), port);
    let got: Vec<(String, u64)> = events
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("/index.html".into(), 200),
            ("/nothing".into(), 204),
            ("/missing".into(), 404),
            ("/index.html".into(), 200)
        ],
        "pipelined requests paired in order:\n{}",
        brief(&events)
    );
    assert!(
        events
            .iter()
            .all(|e| e["host"] == "pipe.test" && e["client_comm"] != ""),
        "{}",
        brief(&events)
    );
}

#[test]
fn across_network_namespaces_over_veth() {
    require_root();
    let dir = scratch("netns");
    let port = 18304;
    let pair = NetnsPair::new("n", 41);
    let _nginx = nginx(&dir, Some(&pair.a), &pair.ip_a, port);
    let obs = Observer::start(&dir, &["--ports", &port.to_string()]);
    let url = format!("http://{}:{port}/index.html", pair.ip_a);
    for _ in 0..5 {
        curl(Some(&pair.b), &["-o", "/dev/null", &url]);
    }
    curl(
        Some(&pair.b),
        &[
            "-o",
            "/dev/null",
            &format!("http://{}:{port}/big.bin", pair.ip_a),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let events = on_port(&obs.stop(), port);
    assert_eq!(events.len(), 6, "{}", brief(&events));
    assert_eq!(access_log(&dir).len(), 6);
    for e in &events {
        assert_local_both(e, "curl", "nginx");
        assert_eq!(e["src_ip"], pair.ip_b.as_str());
        assert_eq!(e["dst_ip"], pair.ip_a.as_str());
        assert_eq!(e["status"], 200);
    }
    let big = events
        .iter()
        .find(|e| e["path"] == "/big.bin")
        .expect("big.bin");
    assert!(
        big["resp_bytes"].as_u64().unwrap() > 300_000,
        "segmented veth response counted: {big}"
    );
}

#[test]
fn tc_on_an_interface_without_socket_hooks() {
    require_root();
    let dir = scratch("tc");
    let port = 18305;
    // The agent runs inside the server's namespace with its socket hooks on an empty cgroup, so everything it
    // reports comes through TC on the namespace's veth: the path for traffic no local socket owns.
    let pair = NetnsPair::new("t", 42);
    let _server = python_server(&dir, Some(&pair.a), &pair.ip_a, port);
    let (obs, _cgroup) = Observer::start_tc_only(&pair, &dir, port);
    for i in 0..3 {
        curl(
            Some(&pair.b),
            &[
                "-o",
                "/dev/null",
                &format!("http://{}:{port}/cl/{i}", pair.ip_a),
            ],
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let events = on_port(&obs.stop(), port);
    assert_eq!(events.len(), 3, "{}", brief(&events));
    for e in &events {
        assert_eq!(e["src_ip"], pair.ip_b.as_str());
        assert_eq!(e["status"], 200);
        assert_eq!(
            e["client_pid"], 0,
            "no local socket identity through TC alone: {e}"
        );
    }
}

#[test]
fn clean_exit_detaches_everything_and_bad_input_is_named() {
    require_root();
    let dir = scratch("exit");
    let obs = Observer::start(&dir, &["--ports", "18306"]);
    let bpftool = |args: &[&str]| {
        String::from_utf8_lossy(&sh(Command::new("bpftool").args(args)).stdout).into_owned()
    };
    let progs = bpftool(&["prog", "show"]);
    assert!(
        progs.contains("observer_cg_"),
        "programs loaded while running:\n{progs}"
    );
    let _ = obs.stop();
    let progs = bpftool(&["prog", "show"]);
    assert!(
        !progs.contains("observer_cg_") && !progs.contains("observer_sockops"),
        "left behind:\n{progs}"
    );

    // --for stops by itself with exit 0.
    let st = Command::new(observer_bin())
        .args([
            "run",
            "--for",
            "1s",
            "--sink",
            &format!("ndjson:{}", dir.join("for.ndjson").display()),
        ])
        .args([
            "--key-secret-file",
            &dir.join("secret").display().to_string(),
        ])
        .status()
        .expect("observer --for");
    assert!(st.success(), "--for 1s exits 0: {st}");

    let fail = |args: &[&str], needle: &str| {
        let out = Command::new(observer_bin())
            .args(args)
            .output()
            .expect("observer");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            err.contains(needle),
            "{args:?}: stderr should name the problem ({needle:?}):\n{err}"
        );
    };
    fail(
        &["run", "--iface", "nosuch0", "--sink", "stdout"],
        "interface \"nosuch0\" not found",
    );
    fail(
        &["run", "--sink", "ndjson:/proc/nope/events.ndjson"],
        "/proc/nope/events.ndjson",
    );
    fail(
        &["run", "--cgroup", "/nonexistent/cg", "--sink", "stdout"],
        "/nonexistent/cg",
    );
    fail(&["run", "--ports", "http"], "invalid port");
}

/// Sends `bytes` as they are on a new connection to the raw server, ends the sending side and reads until the
/// server closes.
fn raw_exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(bytes).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut resp = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.read_to_end(&mut resp).expect("read");
    resp
}

#[test]
fn real_world_messages_every_method_empty_lines_userinfo_short_bodies_and_ambiguous_framing() {
    require_root();
    let dir = scratch("shapes");
    let port = 18321;
    let _server = raw_server(&dir, "127.0.0.1", port);
    let obs = Observer::start(&dir, &["--ports", &port.to_string()]);
    let base = format!("http://127.0.0.1:{port}");
    // Registered methods the kernel used to miss, and extension methods recognised by their request line.
    let methods = [
        "PURGE",
        "QUERY",
        "REPORT",
        "SEARCH",
        "LINK",
        "UNLINK",
        "M-SEARCH",
        "PROPFIND",
        "MKCOL",
        "BASELINE-CONTROL",
    ];
    for m in methods {
        curl(None, &["-X", m, &format!("{base}/m/{m}")]);
    }
    // Extension methods no registry knows, by the shape of the request line (the kernel's `extension_start`).
    let extensions = ["BREW", "NOTREGISTERED", "X-Custom_1.v2"];
    let long = format!("/long/{}", "a".repeat(300));
    for m in extensions {
        curl(None, &["-X", m, &format!("{base}/ext/{m}{long}")]);
    }
    // A method token longer than the kernel's bounded check: not captured, and counted.
    curl(
        None,
        &["-X", "FIFTEENCHARSXYZ", &format!("{base}/too-long-method")],
    );
    // Empty lines before a request, and before a response.
    raw_exchange(
        port,
        b"\r\n\r\nGET /lead-crlf HTTP/1.1\r\nHost: lead.test\r\n\r\n",
    );
    raw_exchange(port, b"GET /crlf-first HTTP/1.1\r\nHost: lead.test\r\n\r\n");
    // Absolute form with an empty path, and with credentials.
    raw_exchange(port, b"GET http://abs.test?x=1 HTTP/1.1\r\n\r\n");
    raw_exchange(
        port,
        b"GET http://alice:s3cret-pw@creds.test:1234/creds HTTP/1.1\r\n\r\n",
    );
    // A declared body that never goes on the wire.
    let short = raw_exchange(
        port,
        b"POST /short-body HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\nabc",
    );
    assert!(short.starts_with(b"HTTP/1.1 400"), "{short:?}");
    // Ambiguous framing, read leniently and marked.
    raw_exchange(port, b"GET /bare-lf HTTP/1.1\nHost: h\n\n");
    raw_exchange(
        port,
        b"POST /cl-te HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    raw_exchange(
        port,
        b"POST /cl-spaces HTTP/1.1\r\nHost: h\r\nContent-Length: 1 0\r\n\r\n",
    );
    // "Missing CR between headers": under the lenient reading the hidden field frames a body and a second request.
    let smuggle = b"GET /front HTTP/1.1\r\nHost: h\r\nDummy: x\nContent-Length: 23\r\n\r\nGET / HTTP/1.1\r\nDummy: GET /admin HTTP/1.1\r\nHost: h\r\n\r\n";
    raw_exchange(port, smuggle);
    let counted = |name: &str| {
        eventually(Duration::from_secs(5), || {
            obs.metrics_text()
                .lines()
                .any(|l| l.starts_with(name) && !l.ends_with(" 0"))
        })
    };
    // Every kernel decision off the common path is counted: the extension starts, and the request whose method is
    // too long for the check (its first segment starts no message and belongs to none).
    assert!(
        eventually(Duration::from_secs(5), || {
            let text = obs.metrics_text();
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            value("observer_kernel_start_extension_method_total") >= extensions.len() as u64
                && value("observer_kernel_not_start_no_token_total") >= 1
        }),
        "{}",
        obs.metrics_text()
    );
    for reason in ["bare_lf", "cl_and_te", "content_length", "follows_anomaly"] {
        assert!(
            counted(&format!(
                "observer_flow_framing_anomalies_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {}",
            obs.metrics_text()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = obs.log();
    let all = obs.stop();
    let events = on_port(&all, port);
    let m = by_path(&events);
    for method in methods {
        let e = one(&m, &format!("{method} /m/{method}"), &events);
        assert_eq!(e["status"], 200, "{e}");
        assert_eq!(e["framing_anomaly"], serde_json::json!([]), "{e}");
        assert_eq!(e["incomplete"], false, "{e}");
    }
    for method in extensions {
        let e = one(&m, &format!("{method} /ext/{method}{long}"), &events);
        assert_eq!(e["status"], 200, "{e}");
    }
    assert!(
        !events.iter().any(|e| e["method"] == "FIFTEENCHARSXYZ"),
        "{}",
        brief(&events)
    );
    let e = one(&m, "GET /lead-crlf", &events);
    assert_eq!(
        (&e["host"], &e["status"]),
        (&"lead.test".into(), &200.into()),
        "{e}"
    );
    let e = one(&m, "GET /crlf-first", &events);
    assert_eq!(
        e["status"], 200,
        "a response after an empty line is paired: {e}"
    );
    let e = one(&m, "GET /", &events);
    assert_eq!(
        (&e["host"], &e["query_keys"]),
        (&"abs.test".into(), &serde_json::json!(["x"])),
        "{e}"
    );
    let e = one(&m, "GET /creds", &events);
    assert_eq!(e["host"], "creds.test:1234", "{e}");
    let written = std::fs::read_to_string(dir.join("events.ndjson")).expect("events");
    assert!(
        !written.contains("s3cret"),
        "credentials written: {written}"
    );
    assert!(!log.contains("s3cret"), "credentials logged: {log}");
    let e = one(&m, "POST /short-body", &events);
    let head = b"POST /short-body HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n".len();
    assert_eq!(e["req_bytes"], head + 3, "only the bytes sent: {e}");
    assert_eq!(e["incomplete"], true, "{e}");
    assert_eq!(e["status"], 400, "{e}");
    let anomaly = |key: &str| one(&m, key, &events)["framing_anomaly"].clone();
    assert_eq!(anomaly("GET /bare-lf"), serde_json::json!(["bare_lf"]));
    assert_eq!(anomaly("POST /cl-te"), serde_json::json!(["cl_and_te"]));
    assert_eq!(
        anomaly("POST /cl-spaces"),
        serde_json::json!(["content_length"])
    );
    assert_eq!(anomaly("GET /front"), serde_json::json!(["bare_lf"]));
    assert_eq!(
        anomaly("GET /admin"),
        serde_json::json!(["follows_anomaly"]),
        "the smuggled request is marked:\n{}",
        brief(&events)
    );
}
