//! The NDJSON file sink and its encoding of an [`Event`], generated from [`crate::event_fields!`]: byte for byte what
//! `serde_json::to_writer` writes for the derived `Serialize`, at a fraction of the cost.
//!
//! Through serde every one of an event's keys and string values goes through the general escaper, and the
//! timestamp through a format description; under load that was a fifth of the agent's per-event CPU. Here keys are
//! constants, values are escaped only when a byte needs it, numbers go through `itoa`. The tests compare the output
//! with serde_json's for events that exercise every escape and variant.
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::queue::QueueRx;
use super::{SinkError, SinkMetrics};
use crate::courtesy::Courtesy;
use crate::event::{
    AttributedBy, Event, KeyState, OriginBy, SharedStr, Side, StoredEnum, Timestamp,
};

/// A field type's JSON form (what serde_json writes for it). A new field type needs an impl here.
pub trait JsonValue {
    fn write_json(&self, out: &mut Vec<u8>);
}

macro_rules! json_writer {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty => $ch:expr, $codec:literal, $since:literal; )*) => {
        /// Appends `e` as one JSON object (no newline) to `out`, fields in `Event`'s order.
        pub fn write_event(e: &Event, out: &mut Vec<u8>) {
            // Keys are field names: plain ASCII, never escaped.
            let mut sep = b'{';
            $(
                out.push(sep);
                sep = b',';
                out.extend_from_slice(concat!("\"", stringify!($name), "\":").as_bytes());
                JsonValue::write_json(&e.$name, out);
            )*
            let _ = sep;
            out.push(b'}');
        }
    };
}

crate::event_fields!(json_writer);

macro_rules! integer {
    ($($t:ty),*) => {
        $(impl JsonValue for $t {
            #[inline]
            fn write_json(&self, out: &mut Vec<u8>) {
                int(*self, out);
            }
        })*
    };
}

integer!(u16, u32, u64);

impl JsonValue for bool {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

impl JsonValue for String {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        string(self, out);
    }
}

impl JsonValue for SharedStr {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        string(self, out);
    }
}

impl JsonValue for Vec<String> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, k) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(k, out);
        }
        out.push(b']');
    }
}

impl JsonValue for Timestamp {
    #[inline]
    fn write_json(&self, out: &mut Vec<u8>) {
        quoted(out, |out| timestamp(*self, out));
    }
}

impl JsonValue for IpAddr {
    fn write_json(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        quoted(out, |out| match self {
            // Dotted quad by hand: `Display` goes through the formatting machinery, a few percent of the
            // agent's CPU per event for two addresses.
            IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    int(o, out);
                }
            }
            IpAddr::V6(_) => {
                let _ = write!(out, "{self}");
            }
        })
    }
}

/// An enum's name (`snake_case` ASCII: nothing to escape).
macro_rules! enum_name {
    ($($t:ty),*) => {
        $(impl JsonValue for $t {
            #[inline]
            fn write_json(&self, out: &mut Vec<u8>) {
                quoted(out, |out| out.extend_from_slice(StoredEnum::as_str(*self).as_bytes()));
            }
        })*
    };
}

enum_name!(Side, KeyState, AttributedBy, OriginBy);

/// `n` in decimal.
fn int(n: impl itoa::Integer, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `inner` between double quotes, for values that need no escaping.
fn quoted(out: &mut Vec<u8>, inner: impl FnOnce(&mut Vec<u8>)) {
    out.push(b'"');
    inner(out);
    out.push(b'"');
}

/// `ts` as `Timestamp`'s RFC 3339 form (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), without a format description.
///
/// The text up to the seconds is kept from the last call and reused while the second is the same (nearly every event
/// of a drain), and the fraction is written without a loop: the timestamp took about 950 instructions per event
/// (callgrind, replay bench), a seventh of the NDJSON encoding, most of them in a loop over each number's digits.
fn timestamp(ts: Timestamp, out: &mut Vec<u8>) {
    thread_local! {
        /// The last second written and its text (`YYYY-MM-DDTHH:MM:SS.`); `i64::MIN` before the first.
        static SECOND: std::cell::Cell<(i64, [u8; 20])> = const { std::cell::Cell::new((i64::MIN, [0; 20])) };
    }
    let (secs, micros) = (
        ts.0.div_euclid(1_000_000),
        ts.0.rem_euclid(1_000_000) as u32,
    );
    // The fraction, six digits and the `Z`, by constant divisors (a loop over a digit count was 200 instructions).
    let fraction = |out: &mut Vec<u8>| {
        let d = |div: u32| b'0' + (micros / div % 10) as u8;
        out.extend_from_slice(&[d(100_000), d(10_000), d(1_000), d(100), d(10), d(1), b'Z']);
    };
    let (last, text) = SECOND.with(|c| c.get());
    if secs == last {
        out.extend_from_slice(&text);
        fraction(out);
        return;
    }
    let Ok(dt) = time::OffsetDateTime::from_unix_timestamp(secs) else {
        out.extend_from_slice(ts.to_rfc3339().as_bytes());
        return;
    };
    let year = dt.year();
    if !(0..=9999).contains(&year) {
        out.extend_from_slice(ts.to_rfc3339().as_bytes());
        return;
    }
    let mut text = Vec::with_capacity(20);
    digits(&mut text, year as u32, 4, b'-');
    digits(&mut text, u8::from(dt.month()).into(), 2, b'-');
    digits(&mut text, dt.day().into(), 2, b'T');
    digits(&mut text, dt.hour().into(), 2, b':');
    digits(&mut text, dt.minute().into(), 2, b':');
    digits(&mut text, dt.second().into(), 2, b'.');
    if let Ok(text) = <[u8; 20]>::try_from(text.as_slice()) {
        SECOND.with(|c| c.set((secs, text)));
    }
    out.extend_from_slice(&text);
    fraction(out);
}

/// The last `n` (at most 4) decimal digits of `v`, zero-padded, then `sep`.
fn digits(out: &mut Vec<u8>, v: u32, n: usize, sep: u8) {
    let mut buf = [b'0'; 4];
    let mut v = v;
    for d in buf[..n].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&buf[..n]);
    out.push(sep);
}

/// `s` as a JSON string, escaped as serde_json escapes: `"` and `\`, the control characters (`\b \f \n \r \t` by
/// name, the rest as `\u00xx`); everything else, non-ASCII included, as it is.
fn string(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Nearly every value needs no escaping: checked eight bytes at a time, then copied at once.
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Whether `bytes` holds a byte JSON escapes: a control character, `"` or `\`. Eight bytes at a time within a word
/// (SWAR): a byte-by-byte check was 950 instructions per event (callgrind, replay bench), about an eighth of the
/// NDJSON encoding.
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    // The high bit of a byte below 0x20, or equal to `"` or `\`. A borrow can set it in a byte above a flagged one,
    // never in a word without one, so "any" is exact. Bytes from 0x80 up are not flagged (`!w` clears them).
    let flagged = |w: u64| {
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        ((w.wrapping_sub(ONES * 0x20) & !w)
            | (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash))
            & HIGH
    };
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    if bytes.len() < 8 {
        // Short values (methods, names, empty fields) one byte at a time: no word to fill.
        return bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    }
    // Whole words, then the last eight bytes (overlapping the words before): no remainder to pad.
    let mut any = flagged(word(&bytes[bytes.len() - 8..]));
    for w in bytes.chunks_exact(8) {
        any |= flagged(word(w));
    }
    any != 0
}

/// Events encoded and written with one `write(2)`: a batch is written in such pieces, the core offered back between
/// them ([`Courtesy`]). One write per batch of 2,048 made bursts of 1 ms and more on the sink's thread.
const WRITE_EVENTS: usize = 256;

/// The NDJSON file sink, on a thread of its own: each batch is encoded and written at once, a few `write(2)`s of
/// [`WRITE_EVENTS`] lines, so lines reach the file as soon as their drain was processed and nothing waits in a
/// buffer for a flush. Plain blocking writes, not tokio's file type: that one copies every write into its own
/// buffer and hands it to yet another thread, a second hand-over per batch.
pub(super) fn run_ndjson(
    mut rx: QueueRx,
    mut file: std::fs::File,
    path: PathBuf,
    metrics: Arc<SinkMetrics>,
) -> Result<(), SinkError> {
    use std::io::Write;
    let werr = |source| SinkError::NdjsonWrite {
        path: path.clone(),
        source,
    };
    let mut line = Vec::with_capacity(256 * 1024);
    let mut courtesy = Courtesy::new();
    while let Some(batch) = rx.blocking_recv() {
        courtesy.begin();
        for (i, piece) in courtesy.pieces(&batch, WRITE_EVENTS).enumerate() {
            line.clear();
            for ev in piece {
                write_event(ev, &mut line);
                line.push(b'\n');
            }
            if let Err(e) = file.write_all(&line) {
                let written = i * WRITE_EVENTS;
                metrics.ndjson_lines.inc_by(written as u64);
                metrics
                    .dropped_write_error
                    .inc_by((batch.len() - written) as u64);
                return Err(werr(e));
            }
        }
        metrics.ndjson_lines.inc_by(batch.len() as u64);
        rx.recycle(batch);
    }
    file.sync_data().map_err(werr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_as_serde(e: &Event) {
        let mut ours = Vec::new();
        write_event(e, &mut ours);
        let theirs = serde_json::to_vec(e).expect("serde_json");
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
    }

    /// Every byte value at every place of strings up to 19 bytes long, among bytes that need nothing and among
    /// others that do: the word-at-a-time check says what a byte-by-byte one says.
    /// Runs the sink over one batch of `n` default events written to `file`.
    fn write_batch(
        n: usize,
        file: std::fs::File,
        path: &str,
    ) -> (Result<(), SinkError>, Arc<SinkMetrics>) {
        let (tx, rx) = super::super::queue::queue(n, Arc::default());
        assert_eq!(tx.send(vec![Event::default(); n]).0, n);
        drop(tx);
        let metrics = Arc::new(SinkMetrics::default());
        let res = run_ndjson(rx, file, path.into(), metrics.clone());
        (res, metrics)
    }

    #[test]
    fn a_batch_is_written_in_pieces_and_every_line_reaches_the_file() {
        let n = 2 * WRITE_EVENTS + 7;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let file = std::fs::File::create(&path).unwrap();
        let (res, metrics) = write_batch(n, file, path.to_str().unwrap());
        res.unwrap();
        assert_eq!(metrics.ndjson_lines.get(), n as u64);
        assert_eq!(metrics.dropped_write_error.get(), 0);
        let mut one = Vec::new();
        write_event(&Event::default(), &mut one);
        one.push(b'\n');
        assert_eq!(std::fs::read(&path).unwrap(), one.repeat(n));
    }

    #[test]
    fn a_failed_write_names_the_file_and_counts_the_lines_lost() {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let (res, metrics) = write_batch(WRITE_EVENTS + 1, file, "/dev/full");
        let err = res.unwrap_err().to_string();
        assert!(err.contains("/dev/full"), "{err}");
        assert_eq!(metrics.ndjson_lines.get(), 0);
        assert_eq!(metrics.dropped_write_error.get(), WRITE_EVENTS as u64 + 1);
    }

    #[test]
    fn needs_escape_agrees_with_each_byte() {
        let byte_wise = |b: &[u8]| b.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        for len in 0..20 {
            for fill in [b'a', 0xff, 0x20, 0x7f] {
                let base = vec![fill; len];
                assert_eq!(needs_escape(&base), byte_wise(&base));
                for at in 0..len {
                    for b in 0..=255u8 {
                        let mut s = base.clone();
                        s[at] = b;
                        assert_eq!(needs_escape(&s), byte_wise(&s), "{s:?}");
                    }
                }
            }
        }
    }

    /// The second's text is reused only within that second: each timestamp reads as serde_json writes it, whatever
    /// came before.
    #[test]
    fn timestamps_across_seconds() {
        let mut out = Vec::new();
        for t in [
            "2026-11-25T21:07:01.000042Z",
            "2026-11-25T21:07:01.999999Z",
            "2026-11-25T21:07:02.000000Z",
            "2026-11-25T21:07:01.500000Z",
            "1970-01-01T00:00:00.000001Z",
            "2026-12-31T23:59:59.999999Z",
            "2027-01-01T00:00:00.000000Z",
        ] {
            let ts = Timestamp::parse_rfc3339(t).expect("time");
            out.clear();
            timestamp(ts, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), t);
            assert_eq!(
                serde_json::to_string(&ts).expect("json"),
                format!("\"{t}\"")
            );
        }
    }

    #[test]
    fn byte_for_byte_what_serde_json_writes() {
        same_as_serde(&Event::default());
        let every_escape: String = (0u8..0x20)
            .map(char::from)
            .chain("\"\\/é中\u{7f}😀 end".chars())
            .collect();
        let full = Event {
            ts: Timestamp::parse_rfc3339("2026-11-25T21:07:01.000042Z").expect("time"),
            duration_us: 1_234_567,
            side: Side::Both,
            method: "GET".into(),
            host: "api.example.com:8443".into(),
            path: every_escape.clone(),
            query_keys: vec!["a".into(), "b\"c".into(), String::new()],
            status: 503,
            req_bytes: u64::MAX,
            resp_bytes: 0,
            src_ip: "10.1.2.3".parse().expect("ip"),
            src_port: 65535,
            dst_ip: "2001:db8::ff00:42:8329".parse().expect("ip"),
            dst_port: 1,
            client_pid: u32::MAX,
            client_comm: "curl".into(),
            client_cgroup: "/kubepods.slice/pod\\x2d1".into(),
            server_pid: 7,
            server_comm: "nginx: worker".into(),
            server_cgroup: "/".into(),
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) \"quoted\"".into(),
            request_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            truncated: true,
            conn_id: 1 << 60,
            incomplete: true,
            framing_anomaly: vec!["bare_lf".into(), "follows_anomaly".into()],
            api_id: "payments-api".into(),
            api_name: "Payments\tAPI".into(),
            api_owner: "team-payments".into(),
            route: "/v1/payments/{id}".into(),
            app_id: "mobile-checkout".into(),
            app_name: "Mobile checkout".into(),
            app_team: "checkout".into(),
            line_of_business: "Retail".into(),
            key_fingerprint: "ab".repeat(32).into(),
            key_suffix: "3f9a".into(),
            key_state: KeyState::NotGrantedForApi,
            attributed_by: AttributedBy::Workload,
            client_pod: "checkout-7d9f8b6c5d-x2x9z".into(),
            client_namespace: "shop".into(),
            client_workload: "Deployment/checkout".into(),
            client_labels: vec!["app=checkout".into(), "team=pay\"ments".into()],
            server_pod: "db-0".into(),
            server_namespace: "shop".into(),
            server_workload: "StatefulSet/db".into(),
            server_labels: Vec::new(),
            request_hash: u64::MAX,
            origin_app_id: "mobile-checkout".into(),
            origin_key_fingerprint: "cd".repeat(32).into(),
            origin_api_id: "payments-api".into(),
            parent_conn_id: u64::MAX,
            parent_ts: Timestamp(1_764_104_821_000_001),
            hop: 3,
            origin_by: OriginBy::RequestId,
            trace_id_hash: u64::MAX,
            request_id_hash: 1,
        };
        same_as_serde(&full);
        // Every variant of every enum, and timestamps at the edges of what the fast path formats.
        let times = [
            0,
            1,
            999_999,
            253_402_300_799_999_999,
            -1,
            i64::MIN,
            i64::MAX,
        ];
        for (i, state) in KeyState::ALL.into_iter().enumerate() {
            same_as_serde(&Event {
                side: Side::ALL[i % Side::ALL.len()],
                key_state: state,
                attributed_by: AttributedBy::ALL[i % AttributedBy::ALL.len()],
                origin_by: OriginBy::ALL[i % OriginBy::ALL.len()],
                ts: Timestamp(times[i % times.len()]),
                ..full.clone()
            });
        }
        // Addresses with one-, two- and three-digit octets, and mapped IPv6.
        for (src, dst) in [
            ("0.0.0.0", "255.255.255.255"),
            ("127.0.0.1", "192.168.10.99"),
            ("::", "::ffff:10.0.0.1"),
        ] {
            same_as_serde(&Event {
                src_ip: src.parse().expect("ip"),
                dst_ip: dst.parse().expect("ip"),
                ..full.clone()
            });
        }
    }
}
