//! The fuzz targets' bodies: each takes arbitrary bytes, drives one parser or state machine that reads untrusted
//! input, and checks a property beyond "does not panic". They live in a library so a stable `cargo test
//! --manifest-path fuzz/Cargo.toml` can also replay the corpus and every saved crash as ordinary tests (`cargo xtask
//! fuzz` and `cargo xtask test` fuzz them; each libFuzzer run first replays the same corpus).
#![forbid(unsafe_code)]
use std::collections::HashMap;
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use observer::cgroups::MapResolver;
use observer::flow::{Engine, FlowConfig};
use observer::http::{self, ChunkStep, ChunkedDecoder, Head, Parsed};
use observer::registry::{self, KeySecret};
use observer::sink::clickhouse::spool::SpooledBatch;
use observer_common::{
    ConnEvent, DataHeader, CONN_CLOSE, DATA_FLAG_CONTINUATION, DATA_FLAG_START,
    DATA_FLAG_TRUNCATED, EVENT_CONN, EVENT_DATA, HOOK_CGROUP_EGRESS, HOOK_CGROUP_INGRESS,
};

/// HTTP heads: whichever head starts the bytes. A complete head's accessors must not panic, and no proper prefix
/// of a complete head may parse as complete or fail: the flow engine relies on `Partial` when a head is split
/// across segments. Heads read by hand must read as httparse reads them.
pub fn http_head(data: &[u8]) {
    // The hand-written reading of plain heads agrees with httparse on every input, taken or not.
    assert_eq!(
        http::parse_response(data),
        http::parse_response_httparse(data),
        "response head {:?}",
        String::from_utf8_lossy(data)
    );
    assert_eq!(
        http::parse_request(data),
        http::parse_request_httparse(data),
        "request head {:?}",
        String::from_utf8_lossy(data)
    );
    let Ok(Parsed::Complete(head)) = http::parse_head(data) else {
        return;
    };
    let n = head.head_len();
    assert!(
        n > 0 && n <= data.len(),
        "head_len {n} of {} bytes",
        data.len()
    );
    match &head {
        Head::Request(r) => {
            let _ = (
                r.path(),
                r.query(),
                r.host(),
                r.keep_alive(),
                r.expects_continue(),
            );
            let _ = r.body_length();
        }
        Head::Response(r) => {
            for m in ["GET", "HEAD", "CONNECT"] {
                let _ = r.body_length(m);
                let _ = r.starts_tunnel(m);
            }
            let _ = (r.is_interim(), r.keep_alive());
        }
    }
    for cut in [n - 1, n / 2, n.min(8)] {
        if cut == 0 || cut >= n {
            continue;
        }
        match http::parse_head(&data[..cut]) {
            Ok(Parsed::Partial) => {}
            other => panic!("prefix of {cut} bytes of a {n}-byte head gave {other:?}"),
        }
    }
}

/// The chunk walker: fed in any split it must end the body at the same place (or fail) as fed at once.
pub fn chunked(data: &[u8]) {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let whole = walk(body, &[body.len()]);
    let at = usize::from(split) % (body.len() + 1);
    let pieces = walk(body, &[at, body.len()]);
    assert_eq!(whole, pieces, "split at {at} changed the outcome");
    let bytewise: Vec<usize> = (1..=body.len()).collect();
    assert_eq!(
        whole,
        walk(body, &bytewise),
        "byte by byte changed the outcome"
    );
}

/// Where the body ends (absolute offset), `None` if it continues, `Err` if the framing is bad.
fn walk(body: &[u8], cuts: &[usize]) -> Result<Option<usize>, ()> {
    let mut dec = ChunkedDecoder::new();
    let mut from = 0;
    for &to in cuts {
        match dec.feed(&body[from..to]).map_err(|_| ())? {
            ChunkStep::Done(k) => return Ok(Some(from + k)),
            ChunkStep::NeedMore => from = to,
        }
    }
    Ok(None)
}

/// Message fragments the flow fuzzer stitches into segments, so it reaches past "not HTTP" quickly.
const PIECES: &[&[u8]] = &[
    b"GET /v1/orders/1?x=1 HTTP/1.1\r\nHost: api.example.com\r\nX-Api-Key: k\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"PUT /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
];

/// One step of a connection's life as the kernel would report it.
#[derive(Arbitrary, Debug)]
enum Step {
    Segment {
        /// Server to client when set.
        response: bool,
        ingress: bool,
        /// Added to the direction's next sequence number: 0 in order, else a gap, overlap or reorder.
        seq_jump: i16,
        payload: Payload,
        /// Copy only this many bytes, as the kernel does beyond its capture size.
        truncate_to: Option<u8>,
        continuation: bool,
        ack: u32,
        ms: u8,
        /// Deliver it after the next segment: the two arrive swapped.
        hold: bool,
    },
    /// The record delivered `back` records ago, again (a retransmission: same sequence number, same bytes).
    Replay {
        back: u8,
    },
    Close {
        ms: u16,
    },
    Tick {
        secs: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Raw(Vec<u8>),
    Piece(u8),
    /// A piece cut at a byte offset: the first or second part.
    Part {
        piece: u8,
        at: u8,
        second: bool,
    },
}

impl Payload {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Payload::Raw(b) => b.clone(),
            Payload::Piece(i) => PIECES[usize::from(*i) % PIECES.len()].to_vec(),
            Payload::Part { piece, at, second } => {
                let p = PIECES[usize::from(*piece) % PIECES.len()];
                let at = usize::from(*at) % (p.len() + 1);
                if *second {
                    p[at..].to_vec()
                } else {
                    p[..at].to_vec()
                }
            }
        }
    }
}

fn v4(last: u8) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[10] = 0xff;
    x[11] = 0xff;
    x[12..].copy_from_slice(&[127, 0, 0, last]);
    x
}

/// A data record as the reader hands it to the engine.
type Record = (DataHeader, Vec<u8>);

fn deliver(engine: &mut Engine, rec: Record, delivered: &mut Vec<Record>) {
    engine.on_data(&rec.0, &rec.1);
    delivered.push(rec);
}

/// The flow engine fed arbitrary record sequences of one connection (segments split anywhere, swapped, retransmitted
/// with duplicate sequence numbers, sequence gaps and overlaps, truncation, closes and idle ticks): it must not panic,
/// and every exchange it reports must be consistent.
pub fn flow(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(steps) = Vec::<Step>::arbitrary(&mut u) else {
        return;
    };
    let resolver = MapResolver(HashMap::from([(7, "/user.slice/fuzz.scope".to_string())]));
    let cfg = FlowConfig {
        capture_bytes: 256,
        max_pending_per_connection: 4,
        ..FlowConfig::default()
    };
    let mut engine = Engine::new(cfg, Box::new(resolver));
    let mut seq = [1_000u32, 5_000_000u32];
    let mut now: u64 = 1_000_000_000;
    let mut out = observer::event::Exchanges::default();
    let mut delivered: Vec<Record> = Vec::new();
    let mut held: Option<Record> = None;
    for step in steps.iter().take(64) {
        match step {
            Step::Segment {
                response,
                ingress,
                seq_jump,
                payload,
                truncate_to,
                continuation,
                ack,
                ms,
                hold,
            } => {
                now += u64::from(*ms) * 1_000_000;
                let dir = usize::from(*response);
                let bytes = payload.bytes();
                let cap = truncate_to.map_or(bytes.len(), |t| bytes.len().min(usize::from(t)));
                seq[dir] = seq[dir].wrapping_add(*seq_jump as i32 as u32);
                let (src, sport, dst, dport) = if *response {
                    (v4(2), 8080, v4(1), 40000)
                } else {
                    (v4(1), 40000, v4(2), 8080)
                };
                let mut flags = if *continuation {
                    DATA_FLAG_CONTINUATION
                } else {
                    DATA_FLAG_START
                };
                if cap < bytes.len() {
                    flags |= DATA_FLAG_TRUNCATED;
                }
                let hdr = DataHeader {
                    kind: EVENT_DATA,
                    hook: if *ingress {
                        HOOK_CGROUP_INGRESS
                    } else {
                        HOOK_CGROUP_EGRESS
                    },
                    ts_ns: now,
                    cookie: if *response { 2 } else { 1 },
                    cgroup_id: 7,
                    saddr: src,
                    daddr: dst,
                    sport,
                    dport,
                    seq: seq[dir],
                    payload_len: bytes.len() as u32,
                    cap_len: cap as u32,
                    flags,
                    ack: *ack,
                    ..DataHeader::default()
                };
                seq[dir] = seq[dir].wrapping_add(bytes.len() as u32);
                let rec = (hdr, bytes[..cap].to_vec());
                if *hold && held.is_none() {
                    held = Some(rec);
                } else {
                    deliver(&mut engine, rec, &mut delivered);
                    if let Some(h) = held.take() {
                        deliver(&mut engine, h, &mut delivered);
                    }
                }
            }
            Step::Replay { back } => {
                if !delivered.is_empty() {
                    let i = delivered.len() - 1 - usize::from(*back) % delivered.len();
                    let (mut hdr, bytes) = delivered[i].clone();
                    hdr.ts_ns = now;
                    deliver(&mut engine, (hdr, bytes), &mut delivered);
                }
            }
            Step::Close { ms } => {
                now += u64::from(*ms) * 1_000_000;
                if let Some(h) = held.take() {
                    deliver(&mut engine, h, &mut delivered);
                }
                for (cookie, local, remote, lport, rport, snd, rcv) in [
                    (1, v4(1), v4(2), 40000, 8080, seq[0], seq[1]),
                    (2, v4(2), v4(1), 8080, 40000, seq[1], seq[0]),
                ] {
                    engine.on_conn(&ConnEvent {
                        kind: EVENT_CONN,
                        op: CONN_CLOSE,
                        ts_ns: now,
                        cookie,
                        cgroup_id: 7,
                        laddr: local,
                        raddr: remote,
                        lport,
                        rport,
                        snd_nxt: snd,
                        rcv_nxt: rcv,
                        ..ConnEvent::default()
                    });
                }
            }
            Step::Tick { secs } => {
                now += u64::from(*secs) * 1_000_000_000;
                engine.tick(now);
            }
        }
        engine.drain(&mut out);
    }
    if let Some(h) = held.take() {
        deliver(&mut engine, h, &mut delivered);
    }
    engine.finish();
    engine.drain(&mut out);
    for e in out.events() {
        assert!(
            e.method.len() <= observer_common::MAX_METHOD_LEN,
            "method of {} bytes",
            e.method.len()
        );
        assert!(e.status <= 999, "status {}", e.status);
    }
}

fn secret() -> KeySecret {
    KeySecret::from_bytes(b"fuzz-secret-0123456789abcdef0123")
}

/// The registry loader (bounded YAML, validation): any text gets a registry or problems with lines, never a panic
/// (files and variables from `OperatorEnv`, so the outcome does not depend on the machine).
pub fn registry(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = registry::load_with(&text, Path::new("/nonexistent"), &secret(), &OperatorEnv);
}

/// Where an imported registry is loaded: no files, and every environment variable set (an importer emits
/// `key_env: VAR` for a credential given as `$VAR` and notes that VAR must be set where the registry is loaded), each
/// to a value of its own, as distinct variables hold distinct keys.
struct OperatorEnv;

impl registry::Source for OperatorEnv {
    fn read_file(&self, _: &Path) -> std::io::Result<String> {
        Err(std::io::ErrorKind::NotFound.into())
    }

    fn env_var(&self, name: &str) -> Option<String> {
        Some(format!("fuzz-env-{name}-value"))
    }
}

/// The loader on an importer's output, in the environment its notes ask for.
fn load_imported(yaml: &str) -> Result<registry::Loaded, Vec<registry::Problem>> {
    registry::load_with(yaml, Path::new("/nonexistent"), &secret(), &OperatorEnv)
}

/// The Kong importer: whatever it accepts, it must turn into a registry the loader accepts.
pub fn kong(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok((yaml, _notes)) =
        registry::import_kong_text(&text, "fuzz.yaml", &secret(), "2026-11-27")
    {
        if let Err(problems) = load_imported(&yaml) {
            panic!("the Kong importer wrote a registry the loader rejects: {problems:?}\n{yaml}");
        }
    }
}

/// The OpenAPI importer: whatever spec it accepts, it must turn into a registry the loader accepts.
pub fn openapi(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(spec) = registry::parse_openapi(&text) {
        let yaml = registry::openapi_registry_yaml(&spec, "fuzz.yaml");
        if let Err(problems) = load_imported(&yaml) {
            panic!(
                "the OpenAPI importer wrote a registry the loader rejects: {problems:?}\n{yaml}"
            );
        }
    }
}

/// The spool file reader, past its checksum (appended here): a file it accepts encodes back to the same bytes.
pub fn spool(data: &[u8]) {
    let mut file = data.to_vec();
    file.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    if let Ok(batch) = SpooledBatch::decode(&file) {
        assert_eq!(batch.encode(), file, "decode then encode changed the file");
    }
}

/// The targets by name, for the corpus replay.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("http_head", http_head),
    ("chunked", chunked),
    ("flow", flow),
    ("registry", registry),
    ("kong", kong),
    ("openapi", openapi),
    ("spool", spool),
];

#[cfg(test)]
mod tests {
    use super::TARGETS;

    /// Every seed and every saved crash input replayed through its target: the fast regression check CI runs
    /// (`cargo xtask fuzz` does the fuzzing itself).
    #[test]
    fn corpus_replays_clean() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            for entry in entries {
                let path = entry.expect("corpus entry").path();
                let data =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                target(&data);
                replayed += 1;
            }
        }
        assert!(
            replayed >= TARGETS.len(),
            "every target has at least one seed"
        );
    }
}
