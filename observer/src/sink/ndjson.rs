//! NDJSON encoding of an [`Event`], written by hand: byte for byte what `serde_json::to_writer` writes for the
//! derived `Serialize`, at a fraction of the cost.
//!
//! Through serde every one of an event's 37 keys and string values goes through the general escaper, and the
//! timestamp through a format description; under load that was a fifth of the agent's per-event CPU. Here keys are
//! constants, values are escaped only when a byte needs it, numbers go through `itoa`. The tests compare the output
//! with serde_json's for events that exercise every field, escape and variant, so a field added to `Event` and
//! not here fails them.
use std::net::IpAddr;

use crate::event::{Event, Timestamp};

/// Appends `e` as one JSON object (no newline) to `out`, fields in `Event`'s order.
pub fn write_event(e: &Event, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut o = Fields { out, first: true };
    o.field("ts", |out| quoted(out, |out| timestamp(e.ts, out)));
    o.num("duration_us", e.duration_us);
    o.name("side", e.side.as_str());
    o.str("method", &e.method);
    o.str("host", &e.host);
    o.str("path", &e.path);
    o.field("query_keys", |out| {
        out.push(b'[');
        for (i, k) in e.query_keys.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(k, out);
        }
        out.push(b']');
    });
    o.num("status", e.status);
    o.num("req_bytes", e.req_bytes);
    o.num("resp_bytes", e.resp_bytes);
    o.ip("src_ip", e.src_ip);
    o.num("src_port", e.src_port);
    o.ip("dst_ip", e.dst_ip);
    o.num("dst_port", e.dst_port);
    o.num("client_pid", e.client_pid);
    o.str("client_comm", &e.client_comm);
    o.str("client_cgroup", &e.client_cgroup);
    o.num("server_pid", e.server_pid);
    o.str("server_comm", &e.server_comm);
    o.str("server_cgroup", &e.server_cgroup);
    o.str("user_agent", &e.user_agent);
    o.str("request_id", &e.request_id);
    o.field("truncated", |out| {
        out.extend_from_slice(if e.truncated { b"true" } else { b"false" })
    });
    o.num("conn_id", e.conn_id);
    o.str("api_id", &e.api_id);
    o.str("api_name", &e.api_name);
    o.str("api_owner", &e.api_owner);
    o.str("route", &e.route);
    o.str("app_id", &e.app_id);
    o.str("app_name", &e.app_name);
    o.str("app_team", &e.app_team);
    o.str("line_of_business", &e.line_of_business);
    o.str("key_fingerprint", &e.key_fingerprint);
    o.str("key_suffix", &e.key_suffix);
    o.name("key_state", e.key_state.as_str());
    o.name("attributed_by", e.attributed_by.as_str());
    out.push(b'}');
}

/// Writes `"key":value` pairs, comma-separated. Keys are field names: plain ASCII, never escaped.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    fn field(&mut self, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        value(self.out);
    }

    fn str(&mut self, key: &str, v: &str) {
        self.field(key, |out| string(v, out));
    }

    fn num(&mut self, key: &str, n: impl itoa::Integer) {
        self.field(key, |out| int(n, out));
    }

    /// An enum's name (`snake_case` ASCII: nothing to escape).
    fn name(&mut self, key: &str, v: &'static str) {
        self.field(key, |out| {
            quoted(out, |out| out.extend_from_slice(v.as_bytes()))
        });
    }

    fn ip(&mut self, key: &str, a: IpAddr) {
        use std::io::Write;
        self.field(key, |out| {
            quoted(out, |out| match a {
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
                    let _ = write!(out, "{a}");
                }
            })
        });
    }
}

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
fn timestamp(ts: Timestamp, out: &mut Vec<u8>) {
    let Ok(dt) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts.0) * 1000) else {
        out.extend_from_slice(ts.to_rfc3339().as_bytes());
        return;
    };
    let year = dt.year();
    if !(0..=9999).contains(&year) {
        out.extend_from_slice(ts.to_rfc3339().as_bytes());
        return;
    }
    let mut digits = |v: u32, n: usize, sep: u8| {
        let mut buf = [b'0'; 6];
        let mut v = v;
        for d in buf[..n].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..n]);
        out.push(sep);
    };
    digits(year as u32, 4, b'-');
    digits(u8::from(dt.month()).into(), 2, b'-');
    digits(dt.day().into(), 2, b'T');
    digits(dt.hour().into(), 2, b':');
    digits(dt.minute().into(), 2, b':');
    digits(dt.second().into(), 2, b'.');
    digits(dt.microsecond(), 6, b'Z');
}

/// `s` as a JSON string, escaped as serde_json escapes: `"` and `\`, the control characters (`\b \f \n \r \t` by
/// name, the rest as `\u00xx`); everything else, non-ASCII included, as it is.
fn string(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Nearly every value needs no escaping: checked 16 bytes at a time without a branch per byte (the compiler
    // vectorises it), then copied at once.
    let clean = bytes.chunks(16).all(|c| {
        !c.iter().fold(false, |bad, &b| {
            bad | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    });
    if clean {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttributedBy, KeyState, Side};

    fn same_as_serde(e: &Event) {
        let mut ours = Vec::new();
        write_event(e, &mut ours);
        let theirs = serde_json::to_vec(e).expect("serde_json");
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs)
        );
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
            api_id: "payments-api".into(),
            api_name: "Payments\tAPI".into(),
            api_owner: "team-payments".into(),
            route: "/v1/payments/{id}".into(),
            app_id: "mobile-checkout".into(),
            app_name: "Mobile checkout".into(),
            app_team: "checkout".into(),
            line_of_business: "Retail".into(),
            key_fingerprint: "ab".repeat(32),
            key_suffix: "3f9a".into(),
            key_state: KeyState::NotGrantedForApi,
            attributed_by: AttributedBy::Workload,
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
