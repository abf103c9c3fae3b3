//! Pure HTTP/1.x parsing: request/response heads with `httparse`, body framing rules and an incremental chunk walker.
//!
//! Nothing here knows about TCP or sockets: callers hand in the bytes of a message start and get back a parsed head
//! (with its length on the wire), `Partial` when more bytes are needed, or a [`ParseError`]. Body bytes are never
//! stored; [`BodyLength`] says how far the message extends and [`ChunkedDecoder`] walks chunked framing byte by byte
//! across segment boundaries.

use observer_common::{is_tchar, MAX_METHOD_LEN};

/// Headers kept per message; a head with more is malformed (and counted by the caller).
pub const MAX_HEADERS: usize = 64;

/// Why a head could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("not an HTTP/1.x message")]
    NotHttp,
    #[error("malformed HTTP head: {0}")]
    Malformed(String),
    #[error("invalid Content-Length {0:?}")]
    BadContentLength(String),
    #[error("invalid chunked framing")]
    BadChunk,
}

impl From<httparse::Error> for ParseError {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
            other => ParseError::Malformed(other.to_string()),
        }
    }
}

/// Result of parsing a prefix of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    Complete(T),
    /// The head is not complete in the bytes given.
    Partial,
}

/// Framing a server and a proxy may read differently (request smuggling, response splitting), as a set of reasons.
/// The message is still read the lenient way (as most servers do); the set says where another reading was possible.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Anomalies(u8);

impl Anomalies {
    /// A line of the head ends in a bare LF: a reader that wants CRLF sees one line where this one sees two (how a
    /// header hidden in another's value, "missing CR between headers", becomes a body length).
    pub const BARE_LF: Anomalies = Anomalies(1);
    /// Both Content-Length and Transfer-Encoding: chunked framing was used, a reader that trusts the length is off.
    pub const CL_AND_TE: Anomalies = Anomalies(2);
    /// Content-Length other than one plain number: spaces inside, a list, several fields, a sign, no digits.
    pub const CONTENT_LENGTH: Anomalies = Anomalies(4);
    /// A request's Transfer-Encoding whose final coding is not chunked: its length is unknowable.
    pub const TRANSFER_ENCODING: Anomalies = Anomalies(8);
    /// The message starts where an anomalous message before it on the same stream was read to end: under another
    /// reading these bytes were part of that message (the smuggled request).
    pub const FOLLOWS_ANOMALY: Anomalies = Anomalies(16);

    /// Every reason with its name (stable: event values and metric labels), in bit order.
    pub const ALL: [(Anomalies, &'static str); 5] = [
        (Anomalies::BARE_LF, "bare_lf"),
        (Anomalies::CL_AND_TE, "cl_and_te"),
        (Anomalies::CONTENT_LENGTH, "content_length"),
        (Anomalies::TRANSFER_ENCODING, "transfer_encoding"),
        (Anomalies::FOLLOWS_ANOMALY, "follows_anomaly"),
    ];

    pub const NONE: Anomalies = Anomalies(0);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Anomalies) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn insert(&mut self, other: Anomalies) {
        self.0 |= other.0;
    }

    /// The names of the reasons present, in [`Anomalies::ALL`] order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Anomalies::ALL
            .into_iter()
            .filter(move |(a, _)| self.contains(*a))
            .map(|(_, n)| n)
    }
}

impl std::ops::BitOr for Anomalies {
    type Output = Anomalies;
    fn bitor(self, rhs: Anomalies) -> Anomalies {
        Anomalies(self.0 | rhs.0)
    }
}

/// Whether a line of `head` ends in LF without CR.
fn has_bare_lf(head: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// Header fields of one message in two allocations, not two per field: names and values sit back to back in one
/// string, `ends` marks where each name and each value ends. Requests carry a dozen fields or more, and they are
/// parsed for every exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    /// Per field: (end of the name, end of the value) in `text`.
    ends: Vec<(u32, u32)>,
}

impl Headers {
    /// Room for `fields` fields of `bytes` bytes in all.
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Headers {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(fields),
        }
    }

    pub fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        let n = self.text.len() as u32;
        self.text.push_str(value);
        self.ends.push((n, self.text.len() as u32));
    }

    /// Every (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&(n, v)| {
            let (n, v) = (n as usize, v as usize);
            let field = (&self.text[start..n], &self.text[n..v]);
            start = v;
            field
        })
    }

    /// Every value of the fields named `name` (case-insensitive), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of `name` (case-insensitive).
    pub fn get<'a>(&'a self, name: &str) -> Option<&'a str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut h = Headers::default();
        for (n, v) in iter {
            h.push(n.as_ref(), v.as_ref());
        }
        h
    }
}

/// A parsed request line and header block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestHead {
    pub method: String,
    /// Request target as sent (origin-form `/p?q`, absolute-form, authority-form or `*`).
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Headers,
    /// What the header fields say about framing, read while they were collected.
    pub framing: Framing,
    /// Bytes of the head on the wire, including the final empty line.
    pub head_len: usize,
    /// Where the head's framing allows another reading.
    pub anomalies: Anomalies,
}

/// A parsed status line and header block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseHead {
    pub minor_version: u8,
    pub status: u16,
    /// What the header fields say about framing: nothing else of a response is reported, and copying its header
    /// fields would cost on the per-event path.
    pub framing: Framing,
    /// Bytes of the head on the wire, including the final empty line.
    pub head_len: usize,
    /// Where the head's framing allows another reading.
    pub anomalies: Anomalies,
}

/// Either kind of head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    Request(RequestHead),
    Response(ResponseHead),
}

impl Head {
    pub fn head_len(&self) -> usize {
        match self {
            Head::Request(r) => r.head_len,
            Head::Response(r) => r.head_len,
        }
    }
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body: the message ends with its head.
    Empty,
    /// Exactly this many body bytes follow the head.
    Length(u64),
    /// Chunked transfer coding: walk it with [`ChunkedDecoder`].
    Chunked,
    /// The body runs until the connection closes (responses only).
    UntilClose,
}

fn has_token(headers: &Headers, name: &str, token: &str) -> bool {
    headers
        .all(name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What a head's header fields say about its body's framing and the connection, read field by field in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    /// The last Transfer-Encoding coding, when there is one: true when it is chunked.
    chunked_last: Option<bool>,
    /// Content-Length, tolerating repeated identical values (`5, 5`); differing or non-numeric values are an
    /// error naming the field's value.
    content_length: Result<Option<u64>, String>,
    /// A Content-Length field was there, and one was not a single plain number (see [`Anomalies::CONTENT_LENGTH`]).
    content_length_seen: bool,
    content_length_odd: bool,
    close: bool,
    keep_alive: bool,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            chunked_last: None,
            content_length: Ok(None),
            content_length_seen: false,
            content_length_odd: false,
            close: false,
            keep_alive: false,
        }
    }
}

impl Framing {
    /// Framing of these (name, value) fields; values trimmed.
    pub fn of<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Framing {
        let mut f = Framing::default();
        for (name, value) in fields {
            f.add(name, value);
        }
        f
    }

    /// Takes one header field into account (value trimmed).
    pub fn add(&mut self, name: &str, value: &str) {
        let tokens = || value.split(',').map(str::trim);
        if name.eq_ignore_ascii_case("transfer-encoding") {
            if let Some(last) = tokens().rfind(|t| !t.is_empty()) {
                self.chunked_last = Some(last.eq_ignore_ascii_case("chunked"));
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            self.content_length_odd |= self.content_length_seen
                || value.is_empty()
                || !value.bytes().all(|b| b.is_ascii_digit());
            self.content_length_seen = true;
            let Ok(found) = &self.content_length else {
                return; // the first bad value is the one reported
            };
            self.content_length = tokens()
                .try_fold(*found, |found, part| {
                    // Digits only: `parse` would also take a sign.
                    let n = part
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| part.parse().ok());
                    match (n.flatten(), found) {
                        (Some(n), Some(prev)) if prev != n => Err(()),
                        (Some(n), _) => Ok(Some(n)),
                        (None, _) => Err(()),
                    }
                })
                .map_err(|()| value.to_string());
        } else if name.eq_ignore_ascii_case("connection") {
            for t in tokens() {
                self.close |= t.eq_ignore_ascii_case("close");
                self.keep_alive |= t.eq_ignore_ascii_case("keep-alive");
            }
        }
    }

    /// What in these fields allows another reading of the framing; `request` adds the request-only rules.
    fn anomalies(&self, request: bool) -> Anomalies {
        let mut a = Anomalies::NONE;
        if self.content_length_seen && self.chunked_last.is_some() {
            a.insert(Anomalies::CL_AND_TE);
        }
        if self.content_length_odd {
            a.insert(Anomalies::CONTENT_LENGTH);
        }
        if request && self.chunked_last == Some(false) {
            a.insert(Anomalies::TRANSFER_ENCODING);
        }
        a
    }

    fn content_length(&self) -> Result<Option<u64>, ParseError> {
        self.content_length
            .clone()
            .map_err(ParseError::BadContentLength)
    }

    /// Whether the connection stays open after the message, for HTTP/1.`minor_version`.
    fn keep_alive(&self, minor_version: u8) -> bool {
        !self.close && (minor_version >= 1 || self.keep_alive)
    }
}

impl RequestHead {
    /// First value of a header, case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// Body framing of the request (RFC 9112 §6.3): chunked wins over Content-Length; neither means no body.
    pub fn body_length(&self) -> Result<BodyLength, ParseError> {
        let framing = &self.framing;
        match framing.chunked_last {
            Some(true) => return Ok(BodyLength::Chunked),
            Some(false) => {
                return Err(ParseError::Malformed(
                    "request transfer coding without chunked".into(),
                ))
            }
            None => {}
        }
        Ok(match framing.content_length()? {
            Some(0) | None => BodyLength::Empty,
            Some(n) => BodyLength::Length(n),
        })
    }

    /// `Expect: 100-continue`: interim 100 responses may precede the final one.
    pub fn expects_continue(&self) -> bool {
        has_token(&self.headers, "expect", "100-continue")
    }

    /// Whether the client asks to keep the connection open after this exchange.
    pub fn keep_alive(&self) -> bool {
        self.framing.keep_alive(self.minor_version)
    }

    /// Path of the target without query string (absolute-form targets are reduced to their path, `/` when it is
    /// empty: RFC 9112 §3.2.2).
    pub fn path(&self) -> &str {
        let t = origin_part(&self.target);
        match t.find(['?', '#']) {
            Some(0) => "/",
            Some(i) => &t[..i],
            None => t,
        }
    }

    /// Raw query string without the leading `?` (and without any fragment), "" when absent.
    pub fn query(&self) -> &str {
        let t = origin_part(&self.target);
        let Some(i) = t.find('?') else { return "" };
        let q = &t[i + 1..];
        match q.find('#') {
            Some(j) => &q[..j],
            None => q,
        }
    }

    /// Host header, else the authority of an absolute-form or authority-form target; any userinfo
    /// (`user:password@`) is left out, so credentials never reach an event.
    pub fn host(&self) -> &str {
        if let Some(h) = self.header("host") {
            return without_userinfo(h.trim());
        }
        if let Some(rest) = self.target.split_once("://").map(|(_, r)| r) {
            return without_userinfo(rest.split(['/', '?', '#']).next().unwrap_or(""));
        }
        if self.method.eq_ignore_ascii_case("CONNECT") {
            return without_userinfo(&self.target);
        }
        ""
    }
}

/// An authority without its userinfo: `user:pass@host:1234` gives `host:1234` (userinfo cannot hold `@`).
fn without_userinfo(authority: &str) -> &str {
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// The origin-form part of a target: absolute-form `http://h/p?q` gives `/p?q`; `*` and origin-form are unchanged.
fn origin_part(target: &str) -> &str {
    if target.starts_with('/') {
        // Origin form, nearly every request: no scheme to look for.
        return target;
    }
    match target.split_once("://") {
        Some((_, rest)) => match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
            Some(i) => &rest[i..],
            None => "/",
        },
        None => target,
    }
}

impl ResponseHead {
    /// 1xx other than 101: an interim response that precedes the final one (e.g. `100 Continue`).
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// After this response the connection stops carrying HTTP (101 upgrade, 2xx to CONNECT).
    pub fn starts_tunnel(&self, request_method: &str) -> bool {
        self.status == 101
            || (request_method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&self.status))
    }

    /// Body framing of the response to a request with `request_method` (RFC 9112 §6.3).
    pub fn body_length(&self, request_method: &str) -> Result<BodyLength, ParseError> {
        if request_method.eq_ignore_ascii_case("HEAD")
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
            || self.starts_tunnel(request_method)
        {
            return Ok(BodyLength::Empty);
        }
        match self.framing.chunked_last {
            Some(true) => return Ok(BodyLength::Chunked),
            Some(false) => return Ok(BodyLength::UntilClose),
            None => {}
        }
        Ok(match self.framing.content_length()? {
            Some(0) => BodyLength::Empty,
            Some(n) => BodyLength::Length(n),
            None => BodyLength::UntilClose,
        })
    }

    /// Whether the server keeps the connection open after this response.
    pub fn keep_alive(&self) -> bool {
        self.framing.keep_alive(self.minor_version)
    }
}

/// The fields as [`Headers`], and what they say about framing.
fn collect_headers<'a>(
    headers: impl Iterator<Item = &'a httparse::Header<'a>> + Clone,
) -> (Headers, Framing) {
    let (fields, bytes) = headers.clone().fold((0, 0), |(f, b), h| {
        (f + 1, b + h.name.len() + h.value.len())
    });
    let mut out = Headers::with_capacity(fields, bytes);
    let mut framing = Framing::default();
    for h in headers {
        with_text(h.value, |v| {
            framing.add(h.name, v);
            out.push(h.name, v)
        });
    }
    (out, framing)
}

/// Hands `f` a header value as text, trimmed. Values are almost always ASCII: checked as UTF-8 first, which is much
/// cheaper than a lossy copy.
fn with_text(raw: &[u8], f: impl FnOnce(&str)) {
    match std::str::from_utf8(raw) {
        Ok(v) => f(v.trim()),
        Err(_) => f(String::from_utf8_lossy(raw).trim()),
    }
}

/// Parses a request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<RequestHead>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf)? {
        httparse::Status::Partial => Ok(Parsed::Partial),
        httparse::Status::Complete(head_len) => {
            let (headers, framing) = collect_headers(req.headers.iter());
            let mut anomalies = framing.anomalies(true);
            if has_bare_lf(&buf[..head_len]) {
                anomalies.insert(Anomalies::BARE_LF);
            }
            Ok(Parsed::Complete(RequestHead {
                method: req.method.unwrap_or_default().to_string(),
                target: req.path.unwrap_or_default().to_string(),
                minor_version: req.version.unwrap_or(1),
                headers,
                framing,
                head_len,
                anomalies,
            }))
        }
    }
}

/// Parses a response head at the start of `buf`.
pub fn parse_response(buf: &[u8]) -> Result<Parsed<ResponseHead>, ParseError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf)? {
        httparse::Status::Partial => Ok(Parsed::Partial),
        httparse::Status::Complete(head_len) => {
            let mut framing = Framing::default();
            for h in resp.headers.iter() {
                with_text(h.value, |v| framing.add(h.name, v));
            }
            let mut anomalies = framing.anomalies(false);
            if has_bare_lf(&buf[..head_len]) {
                anomalies.insert(Anomalies::BARE_LF);
            }
            Ok(Parsed::Complete(ResponseHead {
                minor_version: resp.version.unwrap_or(1),
                status: resp.code.unwrap_or(0),
                framing,
                head_len,
                anomalies,
            }))
        }
    }
}

/// The bytes start like a response (`HTTP/`), or could still become one.
fn is_response_prefix(buf: &[u8]) -> bool {
    let n = buf.len().min(5);
    buf[..n] == b"HTTP/"[..n]
}

/// The bytes start with a method token (token characters, then a space), as the kernel classifier requires.
pub fn looks_like_request(buf: &[u8]) -> bool {
    let token_len = buf
        .iter()
        .take(MAX_METHOD_LEN + 1)
        .take_while(|b| is_tchar(**b))
        .count();
    (1..=MAX_METHOD_LEN).contains(&token_len) && buf.get(token_len) == Some(&b' ')
}

/// Parses whichever head starts `buf`: a response if it begins with `HTTP/`, else a request.
pub fn parse_head(buf: &[u8]) -> Result<Parsed<Head>, ParseError> {
    if buf.is_empty() {
        return Ok(Parsed::Partial);
    }
    if is_response_prefix(buf) {
        if buf.len() < 5 {
            return Ok(Parsed::Partial);
        }
        return Ok(match parse_response(buf)? {
            Parsed::Complete(r) => Parsed::Complete(Head::Response(r)),
            Parsed::Partial => Parsed::Partial,
        });
    }
    if !is_tchar(buf[0]) {
        return Err(ParseError::NotHttp);
    }
    Ok(match parse_request(buf)? {
        Parsed::Complete(r) => Parsed::Complete(Head::Request(r)),
        Parsed::Partial => Parsed::Partial,
    })
}

/// Best-effort parse of a head cut short by the capture cap: the complete lines seen are parsed as if the head ended
/// there; a request line cut in the middle still gives the method and the beginning of the target. `head_len` of
/// the result is the number of bytes given (the real length is unknown). `None` when nothing usable is there.
pub fn parse_truncated_head(buf: &[u8]) -> Option<Head> {
    let last_line_end = buf.windows(2).rposition(|w| w == b"\r\n").map(|i| i + 2);
    if let Some(end) = last_line_end {
        let mut fixed = Vec::with_capacity(end + 2);
        fixed.extend_from_slice(&buf[..end]);
        fixed.extend_from_slice(b"\r\n");
        if let Ok(Parsed::Complete(mut head)) = parse_head(&fixed) {
            match &mut head {
                Head::Request(r) => r.head_len = buf.len(),
                Head::Response(r) => r.head_len = buf.len(),
            }
            return Some(head);
        }
    }
    // The start line itself is cut: take what it holds.
    let line_end = buf
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let mut parts = line.splitn(3, ' ');
    let first = parts.next()?;
    if first.starts_with("HTTP/1.") {
        let status: u16 = parts.next()?.get(..3)?.parse().ok()?;
        return Some(Head::Response(ResponseHead {
            minor_version: u8::from(first.ends_with(".1")),
            status,
            head_len: buf.len(),
            ..ResponseHead::default()
        }));
    }
    if !looks_like_request(buf) {
        return None;
    }
    let target = parts.next()?.to_string();
    Some(Head::Request(RequestHead {
        method: first.to_string(),
        target,
        minor_version: 1,
        head_len: buf.len(),
        ..RequestHead::default()
    }))
}

/// Query parameter names in order of first appearance, percent-decoded, without values; empty names skipped.
pub fn query_keys(query: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for pair in query.split(['&', ';']) {
        let name = pair.split('=').next().unwrap_or("");
        if name.is_empty() {
            continue;
        }
        let name = percent_decode(name);
        if !name.is_empty() && !keys.contains(&name) {
            keys.push(name);
        }
    }
    keys
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed and not all zeros.
pub fn traceparent_trace_id(value: &str) -> Option<&str> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || version == "ff" || !hex(parent_id, 16) || !hex(flags, 2) {
        return None;
    }
    if !hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
        return None;
    }
    Some(trace_id)
}

/// Progress of a [`ChunkedDecoder`] over one input slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStep {
    /// The body (last chunk and trailers) ended after this many bytes of the input.
    Done(usize),
    /// All input consumed, the body continues.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// Walks chunked framing incrementally without storing data; counts nothing but where the body ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    size_digits: u8,
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    fn after_size(&mut self) -> ChunkState {
        let size = std::mem::take(&mut self.size);
        self.size_digits = 0;
        if size == 0 {
            ChunkState::TrailerLineStart
        } else {
            ChunkState::Data(size)
        }
    }

    /// Consumes the next bytes of the body.
    pub fn feed(&mut self, input: &[u8]) -> Result<ChunkStep, ParseError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                ChunkState::Done => return Ok(ChunkStep::Done(i)),
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.size_digits >= 15 {
                            return Err(ParseError::BadChunk);
                        }
                        self.size_digits += 1;
                        self.size =
                            self.size * 16 + u64::from((b as char).to_digit(16).unwrap_or(0));
                        ChunkState::Size
                    }
                    b';' | b' ' | b'\t' if self.size_digits > 0 => ChunkState::Ext,
                    b'\r' if self.size_digits > 0 => ChunkState::SizeLf,
                    b'\n' if self.size_digits > 0 => self.after_size(),
                    _ => return Err(ParseError::BadChunk),
                },
                ChunkState::Ext => match b {
                    b'\r' => ChunkState::SizeLf,
                    b'\n' => self.after_size(),
                    _ => ChunkState::Ext,
                },
                ChunkState::SizeLf => match b {
                    b'\n' => self.after_size(),
                    _ => return Err(ParseError::BadChunk),
                },
                ChunkState::Data(n) => {
                    let take = n.min((input.len() - i) as u64);
                    i += take as usize;
                    let left = n - take;
                    self.state = if left == 0 {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(left)
                    };
                    continue;
                }
                ChunkState::DataCr => match b {
                    b'\r' => ChunkState::DataLf,
                    b'\n' => ChunkState::Size,
                    _ => return Err(ParseError::BadChunk),
                },
                ChunkState::DataLf => match b {
                    b'\n' => ChunkState::Size,
                    _ => return Err(ParseError::BadChunk),
                },
                ChunkState::TrailerLineStart => match b {
                    b'\r' => ChunkState::EndLf,
                    b'\n' => ChunkState::Done,
                    _ => ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => match b {
                    b'\r' => ChunkState::TrailerLf,
                    b'\n' => ChunkState::TrailerLineStart,
                    _ => ChunkState::TrailerLine,
                },
                ChunkState::TrailerLf => match b {
                    b'\n' => ChunkState::TrailerLineStart,
                    _ => return Err(ParseError::BadChunk),
                },
                ChunkState::EndLf => match b {
                    b'\n' => ChunkState::Done,
                    _ => return Err(ParseError::BadChunk),
                },
            };
            i += 1;
        }
        if self.state == ChunkState::Done {
            return Ok(ChunkStep::Done(i));
        }
        Ok(ChunkStep::NeedMore)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_and_find_names_case_insensitively() {
        let h: Headers = [
            ("Host", "a.example"),
            ("X-Empty", ""),
            ("Accept", "text/html"),
            ("accept", "application/json"),
        ]
        .into_iter()
        .collect();
        assert_eq!(h.len(), 4);
        assert_eq!(
            h.iter().collect::<Vec<_>>(),
            [
                ("Host", "a.example"),
                ("X-Empty", ""),
                ("Accept", "text/html"),
                ("accept", "application/json")
            ]
        );
        assert_eq!(h.get("HOST"), Some("a.example"));
        assert_eq!(h.get("x-empty"), Some(""));
        assert_eq!(h.get("missing"), None);
        assert_eq!(
            h.all("ACCEPT").collect::<Vec<_>>(),
            ["text/html", "application/json"]
        );
        let mut h = h;
        h.clear();
        assert!(h.is_empty() && h.iter().next().is_none());
    }

    #[test]
    fn parsed_request_headers_are_trimmed_and_lossy_utf8() {
        let Ok(Parsed::Complete(r)) =
            parse_request(b"GET / HTTP/1.1\r\nHost:  h  \r\nX-Bin: a\xffb\r\nX-Last: z\r\n\r\n")
        else {
            panic!("complete request expected")
        };
        assert_eq!(
            r.headers.iter().collect::<Vec<_>>(),
            [("Host", "h"), ("X-Bin", "a\u{fffd}b"), ("X-Last", "z")]
        );
    }

    fn req(buf: &[u8]) -> RequestHead {
        match parse_request(buf) {
            Ok(Parsed::Complete(r)) => r,
            other => panic!("expected a complete request from {buf:?}, got {other:?}"),
        }
    }

    fn resp(buf: &[u8]) -> ResponseHead {
        match parse_response(buf) {
            Ok(Parsed::Complete(r)) => r,
            other => panic!("expected a complete response from {buf:?}, got {other:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let raw =
            b"GET /a/b?x=1&y=2&x=3 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\n\r\nrest";
        let r = req(raw);
        assert_eq!(r.method, "GET");
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.query(), "x=1&y=2&x=3");
        assert_eq!(r.host(), "example.com");
        assert_eq!(r.header("user-agent"), Some("curl/8"));
        assert_eq!(r.head_len, raw.len() - 4, "head length excludes the body");
        assert_eq!(r.body_length(), Ok(BodyLength::Empty));
        assert!(r.keep_alive(), "HTTP/1.1 defaults to keep-alive");
    }

    #[test]
    fn partial_and_errors() {
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Ok(Parsed::Partial)
        );
        assert_eq!(parse_head(b"HTT"), Ok(Parsed::Partial));
        assert_eq!(parse_head(b""), Ok(Parsed::Partial));
        assert_eq!(parse_head(b"\x00\x01binary"), Err(ParseError::NotHttp));
        assert!(
            matches!(
                parse_head(b"GET / HTTP/9.9\r\n\r\n"),
                Err(ParseError::Malformed(_))
            ),
            "bad version must be malformed"
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many), Err(ParseError::TooManyHeaders));
    }

    #[test]
    fn request_framing() {
        let r = req(b"POST /u HTTP/1.1\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(r.body_length(), Ok(BodyLength::Length(10)));
        let r = req(
            b"POST /u HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(r.body_length(), Ok(BodyLength::Chunked), "chunked wins");
        let r = req(b"POST /u HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n");
        assert_eq!(r.body_length(), Ok(BodyLength::Length(4)));
        let r = req(b"POST /u HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n");
        assert!(
            r.body_length().is_err(),
            "conflicting lengths are malformed"
        );
        let r = req(b"POST /u HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
        assert!(r.body_length().is_err(), "negative length is malformed");
        let r = req(b"PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
        assert!(r.expects_continue());
    }

    #[test]
    fn response_framing() {
        let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.body_length("GET"), Ok(BodyLength::Length(5)));
        assert_eq!(
            r.body_length("HEAD"),
            Ok(BodyLength::Empty),
            "HEAD has no body"
        );
        let r = resp(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.body_length("GET"), Ok(BodyLength::Empty));
        let r = resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(r.body_length("GET"), Ok(BodyLength::Empty));
        let r = resp(b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(r.is_interim());
        assert_eq!(r.body_length("POST"), Ok(BodyLength::Empty));
        let r = resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
        assert!(!r.is_interim(), "101 is final");
        assert!(r.starts_tunnel("GET"));
        let r = resp(b"HTTP/1.0 200 OK\r\n\r\n");
        assert_eq!(r.body_length("GET"), Ok(BodyLength::UntilClose));
        assert!(!r.keep_alive(), "HTTP/1.0 defaults to close");
        let r = resp(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(r.keep_alive());
        assert_eq!(r.body_length("GET"), Ok(BodyLength::Empty));
        let r = resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(r.body_length("GET"), Ok(BodyLength::Chunked));
        let r = resp(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n");
        assert!(!r.keep_alive());
        let r = resp(b"HTTP/1.1 200 Connection established\r\n\r\n");
        assert!(r.starts_tunnel("CONNECT"));
        assert_eq!(r.body_length("CONNECT"), Ok(BodyLength::Empty));
        // Framing is read from the fields as parsed, without keeping them.
        let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n");
        assert_eq!(r.body_length("GET"), Ok(BodyLength::Length(7)));
        let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8, 9\r\nContent-Length: x\r\n\r\n");
        assert_eq!(
            r.body_length("GET"),
            Err(ParseError::BadContentLength("8, 9".into())),
            "the first bad field is named"
        );
        for bad in [&b""[..], b"+3", b"99999999999999999999", b"1\xff"] {
            let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: ".to_vec();
            head.extend_from_slice(bad);
            head.extend_from_slice(b"\r\n\r\n");
            assert!(resp(&head).body_length("GET").is_err(), "{bad:?}");
        }
        let r = resp(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(
            r.body_length("GET"),
            Ok(BodyLength::UntilClose),
            "a final coding other than chunked runs to the close"
        );
        let r =
            resp(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n");
        assert!(!r.keep_alive(), "close wins");
    }

    #[test]
    fn targets() {
        let r = req(b"GET http://h.example:8080/p/q?a=1#f HTTP/1.1\r\n\r\n");
        assert_eq!(r.path(), "/p/q");
        assert_eq!(r.query(), "a=1");
        assert_eq!(r.host(), "h.example:8080");
        let r = req(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.path(), "*");
        let r = req(b"CONNECT db:5432 HTTP/1.1\r\n\r\n");
        assert_eq!(r.host(), "db:5432");
        let r = req(b"GET http://h?z=1 HTTP/1.1\r\n\r\n");
        assert_eq!(r.path(), "/", "an empty absolute-form path is /");
        assert_eq!(r.query(), "z=1");
        let r = req(b"GET http://h#f HTTP/1.1\r\n\r\n");
        assert_eq!(r.path(), "/");
        // An origin-form target whose query holds a URL is not mistaken for absolute form.
        let r = req(b"GET /login?next=https://x.example/home HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(r.path(), "/login");
        assert_eq!(r.query(), "next=https://x.example/home");
    }

    #[test]
    fn userinfo_never_reaches_the_host() {
        let r = req(b"GET http://user:pass@h.example:1234/p HTTP/1.1\r\n\r\n");
        assert_eq!((r.host(), r.path()), ("h.example:1234", "/p"));
        let r = req(b"GET http://a%40b:p%40ss@h?x=1 HTTP/1.1\r\n\r\n");
        assert_eq!((r.host(), r.path(), r.query()), ("h", "/", "x=1"));
        let r = req(b"GET / HTTP/1.1\r\nHost: user:pw@h.example\r\n\r\n");
        assert_eq!(r.host(), "h.example");
        let r = req(b"CONNECT user:pw@db:5432 HTTP/1.1\r\n\r\n");
        assert_eq!(r.host(), "db:5432");
        let r = req(b"GET /a@b HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(
            (r.host(), r.path()),
            ("h", "/a@b"),
            "an @ in the path is not userinfo"
        );
    }

    #[test]
    fn methods_by_shape() {
        for line in [
            &b"PURGE /x HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"M-SEARCH * HTTP/1.1\r\nHost: h\r\n\r\n",
            b"QUERY /q HTTP/1.1\r\nHost: h\r\n\r\n",
            b"VERSION-CONTROL /v HTTP/1.1\r\n\r\n",
            b"x-custom.1 /v HTTP/1.1\r\n\r\n",
        ] {
            let method = line.split(|b| *b == b' ').next().unwrap_or_default();
            assert!(looks_like_request(line), "{line:?}");
            match parse_head(line) {
                Ok(Parsed::Complete(Head::Request(r))) => assert_eq!(r.method.as_bytes(), method),
                other => panic!("{line:?}: {other:?}"),
            }
        }
        assert!(!looks_like_request(b"{\"a\": 1}"));
        assert!(!looks_like_request(b"Host: x"));
    }

    #[test]
    fn framing_anomalies_are_named() {
        let names = |a: Anomalies| a.names().collect::<Vec<_>>();
        let r = req(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n");
        assert!(r.anomalies.is_empty(), "{:?}", names(r.anomalies));
        let r = req(b"GET / HTTP/1.1\nHost: h\n\n");
        assert_eq!(names(r.anomalies), ["bare_lf"]);
        // "Missing CR between headers": the smuggling reading takes the hidden field as the body length.
        let r = req(b"GET / HTTP/1.1\r\nDummy: x\nContent-Length: 23\r\n\r\n");
        assert_eq!(names(r.anomalies), ["bare_lf"]);
        assert_eq!(
            r.body_length(),
            Ok(BodyLength::Length(23)),
            "read the lenient way"
        );
        let r = req(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(names(r.anomalies), ["cl_and_te"]);
        assert_eq!(r.body_length(), Ok(BodyLength::Chunked));
        let r = req(b"POST / HTTP/1.1\r\nContent-Length: 1 0\r\n\r\n");
        assert_eq!(names(r.anomalies), ["content_length"]);
        let r = req(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(names(r.anomalies), ["content_length"]);
        assert_eq!(r.body_length(), Ok(BodyLength::Length(5)));
        let r = req(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(names(r.anomalies), ["content_length"]);
        let r = req(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(names(r.anomalies), ["transfer_encoding"]);
        let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\n\r\n");
        assert_eq!(names(r.anomalies), ["bare_lf", "cl_and_te"]);
        let r = resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert!(r.anomalies.is_empty(), "a response may run until the close");
    }

    #[test]
    fn query_key_extraction() {
        assert_eq!(query_keys("b=1&a=2&b=3&&=x&c"), vec!["b", "a", "c"]);
        assert_eq!(
            query_keys("na%6De=1&x+y=2&bad%zz=3&tail%"),
            vec!["name", "x y", "bad%zz", "tail%"]
        );
        assert!(query_keys("").is_empty());
    }

    #[test]
    fn traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            traceparent_trace_id(tp),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            traceparent_trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(traceparent_trace_id("garbage"), None);
        assert_eq!(
            traceparent_trace_id("00-4bf92f35-00f067aa0ba902b7-01"),
            None
        );
    }

    #[test]
    fn truncated_heads() {
        let cut = b"GET /long?k=v HTTP/1.1\r\nHost: a\r\nCookie: xxxxxxxx";
        let Some(Head::Request(r)) = parse_truncated_head(cut) else {
            panic!("a request cut after its host line must still parse");
        };
        assert_eq!(
            (r.method.as_str(), r.path(), r.host()),
            ("GET", "/long", "a")
        );
        assert_eq!(r.head_len, cut.len());
        let Some(Head::Request(r)) = parse_truncated_head(b"GET /very/long/path/aaaa") else {
            panic!("a request cut inside its request line must still give the method");
        };
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("GET", "/very/long/path/aaaa")
        );
        let Some(Head::Response(r)) = parse_truncated_head(b"HTTP/1.1 404 Not Found\r\nX-A: aaaa")
        else {
            panic!("a cut response must give its status");
        };
        assert_eq!(r.status, 404);
        assert_eq!(parse_truncated_head(b"\x01\x02\x03"), None);
    }

    #[test]
    fn chunked_walk() {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(body), Ok(ChunkStep::Done(body.len() - 4)));

        // Byte by byte gives the same end.
        let mut d = ChunkedDecoder::new();
        let mut done = None;
        for (i, b) in body.iter().enumerate() {
            if let ChunkStep::Done(n) = d.feed(std::slice::from_ref(b)).expect("valid chunking") {
                assert_eq!(n, 1, "the final byte ends the body");
                done = Some(i + 1);
                break;
            }
        }
        assert_eq!(done, Some(body.len() - 4));

        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"10\r\n0123456789"), Ok(ChunkStep::NeedMore));
        assert_eq!(d.feed(b"abcdef\r\n0\r\n\r\n"), Ok(ChunkStep::Done(13)));

        let mut d = ChunkedDecoder::new();
        assert_eq!(d.feed(b"zz\r\n"), Err(ParseError::BadChunk));
        let mut d = ChunkedDecoder::new();
        assert_eq!(
            d.feed(b"ffffffffffffffff\r\n"),
            Err(ParseError::BadChunk),
            "size overflow"
        );
    }
}
