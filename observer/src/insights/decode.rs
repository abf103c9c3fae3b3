//! Reading NDJSON event lines for `observer insights replay`: one reused line buffer, and a decoder that reads the
//! ~18 fields the detectors use out of the sink's ~60 and skips the others with `memchr`, borrowing every string
//! that has no escape. serde's derived decoder spent most of replay's time building and dropping what the engine
//! never reads (callgrind: 5 instructions of decoding per instruction of detection). Anything the scanner does not
//! expect (an escaped key, a `null`, a repeated field, a number where a string belongs) sends the line to serde
//! ([`Input::from_json`]), so a line decodes to what serde gives and a bad line gets serde's error. The scanner
//! does not re-validate the inside of fields it skips (serde would refuse a raw control character there).
use std::borrow::Cow;
use std::io::BufRead;

use memchr::memchr2;

use super::input::{hash_from_text, parse_ts};
use super::{Engine, Finding, Input};
use crate::event::StoredEnum;

/// One line of the sink's format: the scanner's result, else serde's.
pub fn decode_line(line: &str) -> Result<Input<'_>, serde_json::Error> {
    match scan(line) {
        Some(i) => Ok(i),
        None => Input::from_json(line),
    }
}

/// What a replay read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplayCount {
    pub lines: u64,
    pub bad: u64,
}

/// Feeds every event line of `reader` to `engine` in file order and hands each finding version to `emit` as it
/// is raised; the last minute is judged at the end. A line that is not UTF-8 or not an event is passed to `bad`
/// with its line number and skipped.
pub fn replay<R: BufRead>(
    engine: &mut Engine,
    mut reader: R,
    mut bad: impl FnMut(u64, &dyn std::fmt::Display),
    mut emit: impl FnMut(&Finding) -> std::io::Result<()>,
) -> std::io::Result<ReplayCount> {
    let mut line = Vec::with_capacity(4096);
    let mut found = Vec::new();
    let mut count = ReplayCount::default();
    let mut last = None;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        count.lines += 1;
        let text = match std::str::from_utf8(&line) {
            Ok(t) => t.trim_end(),
            Err(e) => {
                count.bad += 1;
                bad(count.lines, &e);
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        match decode_line(text) {
            Ok(i) => {
                last = Some(i.ts);
                engine.ingest(&i);
            }
            Err(e) => {
                count.bad += 1;
                bad(count.lines, &e);
            }
        }
        engine.drain(&mut found);
        for f in found.drain(..) {
            emit(&f)?;
        }
    }
    if let Some(t) = last {
        // The last minute is judged too.
        engine.advance(crate::event::Timestamp(t.0 + 60_000_000));
    }
    engine.drain(&mut found);
    for f in found.drain(..) {
        emit(&f)?;
    }
    Ok(count)
}

/// The fields the scanner reads; a bit each, to send a repeated one to serde (which refuses it).
const FIELDS: &[&str] = &[
    "ts",
    "method",
    "host",
    "path",
    "query_keys",
    "status",
    "src_ip",
    "client_comm",
    "client_cgroup",
    "user_agent",
    "api_id",
    "route",
    "app_id",
    "key_fingerprint",
    "key_state",
    "attributed_by",
    "request_hash",
];

fn scan(line: &str) -> Option<Input<'_>> {
    let mut sc = Scanner {
        s: line,
        b: line.as_bytes(),
        i: 0,
    };
    let mut i = Input::default();
    let mut seen = 0u32;
    sc.eat(b'{')?;
    if sc.peek()? == b'}' {
        sc.i += 1;
    } else {
        loop {
            let key = sc.key()?;
            sc.eat(b':')?;
            match FIELDS.iter().position(|f| *f == key) {
                Some(n) => {
                    if seen & (1 << n) != 0 {
                        return None;
                    }
                    seen |= 1 << n;
                    match key {
                        "ts" => i.ts = parse_ts(&sc.string()?)?,
                        "method" => i.method = sc.string()?,
                        "host" => i.host = sc.string()?,
                        "path" => i.path = sc.string()?,
                        "query_keys" => i.query_keys = sc.strings()?,
                        "status" => i.status = u16::try_from(sc.uint()?).ok()?,
                        "src_ip" => i.src_ip = sc.string()?,
                        "client_comm" => i.client_comm = sc.string()?,
                        "client_cgroup" => i.client_cgroup = sc.string()?,
                        "user_agent" => i.user_agent = sc.string()?,
                        "api_id" => i.api_id = sc.string()?,
                        "route" => i.route = sc.string()?,
                        "app_id" => i.app_id = sc.string()?,
                        "key_fingerprint" => i.key_fingerprint = sc.string()?,
                        "key_state" => i.key_state = named(&sc.string()?)?,
                        "attributed_by" => i.attributed_by = named(&sc.string()?)?,
                        _ => {
                            i.request_hash = match sc.peek()? {
                                b'"' => hash_from_text(&sc.string()?),
                                _ => Some(sc.uint()?).filter(|&h| h != 0),
                            }
                        }
                    }
                }
                None => sc.skip_value()?,
            }
            match sc.peek()? {
                b',' => sc.i += 1,
                b'}' => {
                    sc.i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    sc.ws();
    (sc.i == sc.b.len()).then_some(i)
}

fn named<T: StoredEnum>(s: &str) -> Option<T> {
    T::ALL.iter().copied().find(|v| v.as_str() == s)
}

/// A cursor over one line; every method returns `None` on anything it does not expect.
struct Scanner<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while self
            .b
            .get(self.i)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// An object key without escapes (the sink's keys are field names).
    fn key(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let end = start + memchr2(b'"', b'\\', &self.b[start..])?;
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        Some(&self.s[start..end])
    }

    /// A string value: borrowed from the line unless it has escapes.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        let start = self.i;
        let at = start + memchr2(b'"', b'\\', &self.b[start..])?;
        if self.b[at] == b'"' {
            self.i = at + 1;
            return Some(Cow::Borrowed(&self.s[start..at]));
        }
        self.i = at;
        self.skip_string_rest()?;
        let quoted = &self.s[start - 1..self.i];
        serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
    }

    /// `["a","b"]`.
    fn strings(&mut self) -> Option<Vec<Cow<'a, str>>> {
        self.eat(b'[')?;
        let mut out = Vec::new();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(out);
        }
        loop {
            out.push(self.string()?);
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(out);
                }
                _ => return None,
            }
        }
    }

    /// Digits only (what the sink writes for unsigned numbers).
    fn uint(&mut self) -> Option<u64> {
        self.ws();
        let start = self.i;
        let mut n = 0u64;
        while let Some(d) = self.b.get(self.i).filter(|c| c.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.i += 1;
        }
        let ends = self
            .b
            .get(self.i)
            .is_none_or(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n'));
        (self.i > start && ends).then_some(n)
    }

    /// Past the closing quote of a string whose opening quote is behind the cursor.
    fn skip_string_rest(&mut self) -> Option<()> {
        loop {
            let at = self.i + memchr2(b'"', b'\\', &self.b[self.i..])?;
            if self.b[at] == b'"' {
                self.i = at + 1;
                return Some(());
            }
            // An escape: the next byte is escaped (`\uXXXX`'s digits hold no quote or backslash).
            self.i = at + 2;
            if self.i > self.b.len() {
                return None;
            }
        }
    }

    /// Past any value: a string, an array or object (strings inside included), or a number or literal.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.skip_string_rest()
            }
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.b.get(self.i)? {
                        b'"' => {
                            self.i += 1;
                            self.skip_string_rest()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while self.b.get(self.i).is_some_and(|c| {
                    !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
                }) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttributedBy, Event, KeyState, Timestamp};

    fn line(e: &Event) -> String {
        let mut b = Vec::new();
        crate::sink::ndjson::write_event(e, &mut b);
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn the_scanner_reads_what_serde_reads_from_the_sinks_lines() {
        let e = Event {
            ts: Timestamp(1_772_000_000_123_456),
            method: "POST".into(),
            host: "pay.example.com".into(),
            path: "/v1/pay/\"q\"\\x/é".into(),
            query_keys: vec!["a".into(), "b\"c".into(), String::new()],
            status: 503,
            client_comm: "checkout".into(),
            client_cgroup: "/kubepods/pod-1".into(),
            user_agent: "ua/1.0 \u{1}".into(),
            api_id: "payments-api".into(),
            route: "/v1/pay/{id}".into(),
            app_id: "checkout-v2".into(),
            key_fingerprint: "ab12".into(),
            key_state: KeyState::NotGrantedForApi,
            attributed_by: AttributedBy::Workload,
            request_hash: u64::MAX - 3,
            framing_anomaly: vec!["x]}\"".into()],
            ..Event::default()
        };
        let text = line(&e);
        let fast = scan(&text).expect("the sink's line is the scanner's case");
        assert_eq!(fast, Input::from_json(&text).unwrap());
        assert_eq!(fast, Input::from_event(&e));
        assert!(matches!(fast.host, Cow::Borrowed(_)), "no escape: borrowed");
        assert!(matches!(fast.path, Cow::Owned(_)), "escapes: decoded");
        let empty = line(&Event::default());
        assert_eq!(scan(&empty).unwrap(), Input::from_json(&empty).unwrap());
    }

    #[test]
    fn unusual_lines_go_to_serde_and_keep_its_results_and_errors() {
        for text in [
            // Older files: fields absent, hash as text, whitespace, a nested unknown value.
            r#"{"ts":"2026-03-01T00:00:00.000000Z","path":"/a"}"#,
            r#" { "ts" : "2026-03-01T00:00:00Z" , "request_hash" : "00000000000000ff", "x": {"y":[1,{"z":"]"}]} } "#,
            r#"{"status":200,"request_hash":0,"other":-1.5e3,"t":true,"n":null}"#,
        ] {
            assert_eq!(
                decode_line(text).unwrap(),
                Input::from_json(text).unwrap(),
                "{text}"
            );
            assert!(scan(text).is_some(), "{text}");
        }
        // Not the scanner's case: serde decides.
        for text in [
            r#"{"path":null}"#,
            r#"{"path":"/a","path":"/b"}"#,
            r#"{"status":200.0}"#,
            r#"{"status":-1}"#,
            r#"{"key_state":"bogus"}"#,
            r#"{"ts":"yesterday"}"#,
            r#"{"path":"/a"} trailing"#,
            r#"{"path":"/a""#,
            r#"{"p\u0061th":"/a"}"#,
            r#"["not an object"]"#,
        ] {
            assert!(scan(text).is_none(), "{text}");
            assert_eq!(
                decode_line(text).map_err(|e| e.to_string()),
                Input::from_json(text).map_err(|e| e.to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn replay_skips_bad_lines_with_their_numbers_and_keeps_the_rest() {
        let e = Event {
            ts: Timestamp(1_772_000_000_000_000),
            api_id: "a".into(),
            ..Event::default()
        };
        let mut text = line(&e).into_bytes();
        text.extend_from_slice(b"\n\n{\"ts\":\"nope\"}\n\xff\xfe\n");
        text.extend_from_slice(line(&e).as_bytes());
        let mut engine = Engine::new(Default::default(), Default::default());
        let mut bad = Vec::new();
        let n = replay(&mut engine, &text[..], |n, _| bad.push(n), |_| Ok(())).unwrap();
        assert_eq!(n, ReplayCount { lines: 5, bad: 2 });
        assert_eq!(bad, vec![3, 4]);
    }
}
