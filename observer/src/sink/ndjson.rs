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

/// Appends `e` as one JSON object (no newline) to `out`.
pub fn write_event(e: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"ts\":\"");
    timestamp(e.ts, out);
    out.extend_from_slice(b"\",\"duration_us\":");
    num(e.duration_us, out);
    out.extend_from_slice(b",\"side\":\"");
    out.extend_from_slice(e.side.as_str().as_bytes());
    out.extend_from_slice(b"\",\"method\":");
    string(&e.method, out);
    out.extend_from_slice(b",\"host\":");
    string(&e.host, out);
    out.extend_from_slice(b",\"path\":");
    string(&e.path, out);
    out.extend_from_slice(b",\"query_keys\":[");
    for (i, k) in e.query_keys.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(k, out);
    }
    out.extend_from_slice(b"],\"status\":");
    num(e.status, out);
    out.extend_from_slice(b",\"req_bytes\":");
    num(e.req_bytes, out);
    out.extend_from_slice(b",\"resp_bytes\":");
    num(e.resp_bytes, out);
    out.extend_from_slice(b",\"src_ip\":\"");
    ip(e.src_ip, out);
    out.extend_from_slice(b"\",\"src_port\":");
    num(e.src_port, out);
    out.extend_from_slice(b",\"dst_ip\":\"");
    ip(e.dst_ip, out);
    out.extend_from_slice(b"\",\"dst_port\":");
    num(e.dst_port, out);
    out.extend_from_slice(b",\"client_pid\":");
    num(e.client_pid, out);
    out.extend_from_slice(b",\"client_comm\":");
    string(&e.client_comm, out);
    out.extend_from_slice(b",\"client_cgroup\":");
    string(&e.client_cgroup, out);
    out.extend_from_slice(b",\"server_pid\":");
    num(e.server_pid, out);
    out.extend_from_slice(b",\"server_comm\":");
    string(&e.server_comm, out);
    out.extend_from_slice(b",\"server_cgroup\":");
    string(&e.server_cgroup, out);
    out.extend_from_slice(b",\"user_agent\":");
    string(&e.user_agent, out);
    out.extend_from_slice(b",\"request_id\":");
    string(&e.request_id, out);
    out.extend_from_slice(if e.truncated {
        b",\"truncated\":true,\"conn_id\":"
    } else {
        b",\"truncated\":false,\"conn_id\":"
    });
    num(e.conn_id, out);
    for (key, v) in [
        (&b",\"api_id\":"[..], &e.api_id),
        (b",\"api_name\":", &e.api_name),
        (b",\"api_owner\":", &e.api_owner),
        (b",\"route\":", &e.route),
        (b",\"app_id\":", &e.app_id),
        (b",\"app_name\":", &e.app_name),
        (b",\"app_team\":", &e.app_team),
        (b",\"line_of_business\":", &e.line_of_business),
        (b",\"key_fingerprint\":", &e.key_fingerprint),
        (b",\"key_suffix\":", &e.key_suffix),
    ] {
        out.extend_from_slice(key);
        string(v, out);
    }
    out.extend_from_slice(b",\"key_state\":\"");
    out.extend_from_slice(e.key_state.as_str().as_bytes());
    out.extend_from_slice(b"\",\"attributed_by\":\"");
    out.extend_from_slice(e.attributed_by.as_str().as_bytes());
    out.extend_from_slice(b"\"}");
}

fn num(n: impl itoa::Integer, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn ip(a: IpAddr, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{a}");
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
    out.push(b'"');
    let bytes = s.as_bytes();
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
        let sides = [Side::Client, Side::Server, Side::Both];
        let states = [
            KeyState::Valid,
            KeyState::Unknown,
            KeyState::NotGrantedForApi,
            KeyState::Expired,
            KeyState::Revoked,
            KeyState::NotYetValid,
            KeyState::None,
        ];
        let by = [
            AttributedBy::Key,
            AttributedBy::Workload,
            AttributedBy::None,
        ];
        let times = [
            0,
            1,
            999_999,
            253_402_300_799_999_999,
            -1,
            i64::MIN,
            i64::MAX,
        ];
        for (i, state) in states.into_iter().enumerate() {
            same_as_serde(&Event {
                side: sides[i % 3],
                key_state: state,
                attributed_by: by[i % 3],
                ts: Timestamp(times[i % times.len()]),
                ..full.clone()
            });
        }
    }
}
