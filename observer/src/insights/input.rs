//! The small record the detectors consume, built from an agent `Event` or read from an NDJSON line of any version
//! (fields added since, such as `request_hash`, may be absent; detectors then do without them).
use std::borrow::Cow;

use serde::{Deserialize, Deserializer};

use crate::event::{AttributedBy, Event, KeyState, Timestamp};

/// One exchange as the detectors see it. Strings borrow from the line or event they came from.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Input<'a> {
    #[serde(deserialize_with = "de_ts")]
    pub ts: Timestamp,
    #[serde(borrow)]
    pub method: Cow<'a, str>,
    #[serde(borrow)]
    pub host: Cow<'a, str>,
    #[serde(borrow)]
    pub path: Cow<'a, str>,
    #[serde(borrow)]
    pub query_keys: Vec<Cow<'a, str>>,
    pub status: u16,
    #[serde(borrow)]
    pub src_ip: Cow<'a, str>,
    #[serde(borrow)]
    pub client_comm: Cow<'a, str>,
    #[serde(borrow)]
    pub client_cgroup: Cow<'a, str>,
    #[serde(borrow)]
    pub user_agent: Cow<'a, str>,
    #[serde(borrow)]
    pub api_id: Cow<'a, str>,
    #[serde(borrow)]
    pub route: Cow<'a, str>,
    #[serde(borrow)]
    pub app_id: Cow<'a, str>,
    #[serde(borrow)]
    pub key_fingerprint: Cow<'a, str>,
    pub key_state: KeyState,
    pub attributed_by: AttributedBy,
    /// Keyed hash of the request (method, host, target with query values, body prefix), when the event has one.
    #[serde(deserialize_with = "de_hash")]
    pub request_hash: Option<u64>,
}

impl<'a> Input<'a> {
    /// The detectors' view of an agent event (borrows its strings).
    pub fn from_event(e: &'a Event) -> Self {
        Input {
            ts: e.ts,
            method: Cow::Borrowed(&e.method),
            host: Cow::Borrowed(&e.host),
            path: Cow::Borrowed(&e.path),
            query_keys: e
                .query_keys
                .iter()
                .map(|k| Cow::Borrowed(k.as_str()))
                .collect(),
            status: e.status,
            src_ip: Cow::Owned(e.src_ip.to_string()),
            client_comm: Cow::Borrowed(e.client_comm.as_str()),
            client_cgroup: Cow::Borrowed(e.client_cgroup.as_str()),
            user_agent: Cow::Borrowed(&e.user_agent),
            api_id: Cow::Borrowed(&e.api_id),
            route: Cow::Borrowed(&e.route),
            app_id: Cow::Borrowed(&e.app_id),
            key_fingerprint: Cow::Borrowed(&e.key_fingerprint),
            key_state: e.key_state,
            attributed_by: e.attributed_by,
            request_hash: (e.request_hash != 0).then_some(e.request_hash),
        }
    }

    /// The part of `e` that [`Input::from_event`] reads, as an event of its own: what the agent hands to its insights
    /// engine's thread. Strings the event shares are shared (a pinned one is a pointer copy), so only the path and the
    /// query keys are copied; copying every string the detectors read, as owned text, made up to 13 allocations per
    /// event on the capture thread (BENCHMARKS.md, "Stop 23").
    pub fn part_of(e: &Event) -> Event {
        Event {
            ts: e.ts,
            method: e.method.clone(),
            host: e.host.clone(),
            path: e.path.clone(),
            query_keys: e.query_keys.clone(),
            status: e.status,
            src_ip: e.src_ip,
            client_comm: e.client_comm.clone(),
            client_cgroup: e.client_cgroup.clone(),
            user_agent: e.user_agent.clone(),
            api_id: e.api_id.clone(),
            route: e.route.clone(),
            app_id: e.app_id.clone(),
            key_fingerprint: e.key_fingerprint.clone(),
            key_state: e.key_state,
            attributed_by: e.attributed_by,
            request_hash: e.request_hash,
            ..Event::default()
        }
    }

    /// Parses one NDJSON line of the agent's event format.
    pub fn from_json(line: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }

    /// The local client workload (`comm cgroup`), or "" for a remote client.
    pub fn workload(&self) -> String {
        if self.client_comm.is_empty() && self.client_cgroup.is_empty() {
            String::new()
        } else {
            format!("{} {}", self.client_comm, self.client_cgroup)
        }
    }

    /// Identity of the sending client: its local workload, else its address.
    pub fn source_hash(&self) -> u64 {
        if self.client_comm.is_empty() && self.client_cgroup.is_empty() {
            fnv64([self.src_ip.as_bytes()])
        } else {
            fnv64([
                self.client_comm.as_bytes(),
                b" ",
                self.client_cgroup.as_bytes(),
            ])
        }
    }

    /// What makes two requests "the same": the event's `request_hash`, else method, host, path and query names.
    pub fn request_identity(&self) -> u64 {
        if let Some(h) = self.request_hash {
            return h;
        }
        let mut h = fnv64([
            self.method.as_bytes(),
            b" ",
            self.host.as_bytes(),
            self.path.as_bytes(),
        ]);
        for k in &self.query_keys {
            h = fnv_more(h, k.as_bytes());
        }
        h
    }

    pub fn is_error(&self) -> bool {
        self.status >= 500 || self.status == 0
    }

    pub fn is_4xx(&self) -> bool {
        (400..500).contains(&self.status)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv_more(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a over the concatenated parts: stable across runs and versions (hashes are persisted in the state).
pub fn fnv64<'b>(parts: impl IntoIterator<Item = &'b [u8]>) -> u64 {
    parts.into_iter().fold(FNV_OFFSET, fnv_more)
}

fn de_ts<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
    let s: Cow<'de, str> = Deserialize::deserialize(d)?;
    parse_ts(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid RFC 3339 time {s:?}")))
}

/// `request_hash` as a hex/text string or a number.
fn de_hash<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum H<'x> {
        N(u64),
        #[serde(borrow)]
        S(Cow<'x, str>),
    }
    Ok(match Option::<H>::deserialize(d)? {
        None | Some(H::N(0)) => None,
        Some(H::N(n)) => Some(n),
        Some(H::S(s)) => hash_from_text(&s),
    })
}

/// `request_hash` written as text: its first 16 hex digits, else a hash of the text; "" is none.
pub(super) fn hash_from_text(s: &str) -> Option<u64> {
    (!s.is_empty()).then(|| {
        u64::from_str_radix(s.get(..16).unwrap_or(s), 16).unwrap_or_else(|_| fnv64([s.as_bytes()]))
    })
}

/// Parses the sink's `YYYY-MM-DDTHH:MM:SS.ffffffZ` without a general parser, else any RFC 3339 time.
pub fn parse_ts(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    let fixed = b.len() == 27
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[26] == b'Z';
    if fixed {
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            b[r].iter().try_fold(0i64, |acc, &c| {
                c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as i64)
            })
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
        if (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && sec < 61 {
            let days = days_from_civil(y, mo, d);
            return Some(Timestamp(
                ((days * 24 + h) * 60 + mi) * 60_000_000 + sec * 1_000_000 + us,
            ));
        }
    }
    Timestamp::parse_rfc3339(s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_line_without_newer_fields_parses_and_a_full_event_round_trips() {
        let old = r#"{"ts":"2026-03-02T09:30:00.000001Z","method":"GET","path":"/x","status":503}"#;
        let i = Input::from_json(old).unwrap();
        assert_eq!(
            i.ts,
            Timestamp::parse_rfc3339("2026-03-02T09:30:00.000001Z").unwrap()
        );
        assert!(i.is_error());
        assert_eq!(i.request_hash, None);
        assert_eq!(i.key_state, KeyState::None);

        let e = Event {
            ts: Timestamp(1_772_443_800_123_456),
            method: "POST".into(),
            api_id: "payments-api".into(),
            key_state: KeyState::Revoked,
            client_comm: "curl".into(),
            query_keys: vec!["a".into()],
            ..Event::default()
        };
        let mut line = Vec::new();
        crate::sink::ndjson::write_event(&e, &mut line);
        let text = String::from_utf8(line).unwrap();
        let parsed = Input::from_json(text.trim_end()).unwrap();
        assert_eq!(parsed, Input::from_event(&e));
        assert_eq!(parsed.workload(), "curl ");
    }

    #[test]
    fn the_part_of_an_event_handed_to_the_engine_reads_as_the_event_does() {
        // Every field set, those the detectors do not read too.
        let mut e = Event {
            ts: Timestamp(1_772_443_800_123_456),
            method: "POST".into(),
            host: "api.example.com".into(),
            path: "/v1/payments/42".into(),
            query_keys: vec!["page".into(), "size".into()],
            status: 201,
            src_ip: "10.1.2.3".parse().unwrap(),
            client_comm: "curl".into(),
            client_cgroup: "/system.slice/x.service".into(),
            user_agent: "curl/8".into(),
            api_id: "payments-api".into(),
            route: "/v1/payments/{id}".into(),
            app_id: "checkout".into(),
            key_fingerprint: "ab12".into(),
            key_state: KeyState::Revoked,
            attributed_by: AttributedBy::Key,
            request_hash: 7,
            request_id: "req-1".into(),
            duration_us: 1_500,
            ..Event::default()
        };
        e.framing_anomaly = vec!["bare_lf".into()];
        let part = Input::part_of(&e);
        assert_eq!(Input::from_event(&part), Input::from_event(&e));
        assert_eq!(
            part.request_id, "",
            "what the detectors do not read is not copied"
        );
        assert_eq!(part.duration_us, 0);
    }

    #[test]
    fn request_hash_is_read_as_hex_text_or_number_and_time_parsing_agrees_with_rfc3339() {
        let i = Input::from_json(r#"{"request_hash":"00000000000000ff"}"#).unwrap();
        assert_eq!(i.request_hash, Some(255));
        let i = Input::from_json(r#"{"request_hash":42}"#).unwrap();
        assert_eq!(i.request_hash, Some(42));
        let i = Input::from_json(r#"{"request_hash":0,"path":"/a"}"#).unwrap();
        assert_eq!(i.request_hash, None, "0: the agent had no hash");
        let e = Event {
            request_hash: 7,
            ..Event::default()
        };
        assert_eq!(Input::from_event(&e).request_identity(), 7);
        assert_ne!(
            Input::from_json(r#"{"path":"/a"}"#)
                .unwrap()
                .request_identity(),
            Input::from_json(r#"{"path":"/b"}"#)
                .unwrap()
                .request_identity()
        );
        for s in [
            "1999-12-31T23:59:59.999999Z",
            "2026-02-28T00:00:00.000000Z",
            "2028-02-29T12:34:56.000007Z",
        ] {
            assert_eq!(parse_ts(s), Timestamp::parse_rfc3339(s), "{s}");
        }
        assert_eq!(
            parse_ts("2026-03-02T09:30:00+01:00"),
            Timestamp::parse_rfc3339("2026-03-02T09:30:00+01:00")
        );
        assert!(Input::from_json(r#"{"ts":"yesterday"}"#)
            .unwrap_err()
            .to_string()
            .contains("yesterday"));
    }
}
