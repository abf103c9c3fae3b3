//! Pure HTTP/1.x parsing: request/response heads with `httparse`, body framing rules and an incremental chunk walker.
//!
//! Nothing here knows about TCP or sockets: callers hand in the bytes of a message start and get back a parsed head
//! (with its length on the wire), `Partial` when more bytes are needed, or a [`ParseError`]. Body bytes are never
//! stored; [`BodyLength`] says how far the message extends and [`ChunkedDecoder`] walks chunked framing byte by byte
//! across segment boundaries.
//!
//! This file holds the heads (request and status lines, header fields); `plain` reads the common plain heads without
//! httparse; `framing` what the fields say about the body and where another reader could disagree, `chunked`
//! the chunk walker, `query` query strings.
mod chunked;
mod framing;
mod plain;
mod query;
#[cfg(test)]
mod tests;

use std::mem::MaybeUninit;

use observer_common::{is_tchar, MAX_METHOD_LEN};

pub use self::chunked::{ChunkStep, ChunkedDecoder};
use self::framing::{has_bare_lf, has_token};
pub use self::framing::{Anomalies, BodyLength, Framing};
pub use self::query::{form_decoded, query_keys};

/// `a == b` ignoring ASCII case, as `eq_ignore_ascii_case`, but without a branch per byte: header names are compared
/// several times per exchange, and the standard one, which stops at the first difference, branches on every byte
/// (callgrind: the replay's instructions per event fell by 5% with this and two other changes, 7682253).
#[inline]
pub fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).fold(0u8, |d, (x, y)| {
            d | (x.to_ascii_lowercase() ^ y.to_ascii_lowercase())
        }) == 0
}

/// Header fields parsed without allocating; a head with more is parsed again with room for one field per line of
/// the bytes given (bounded by them: the caller's buffer is bounded by the capture), so no field count is refused.
pub const MAX_HEADERS: usize = 64;

/// Why a head could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
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
        ParseError::Malformed(e.to_string())
    }
}

/// Result of parsing a prefix of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    Complete(T),
    /// The head is not complete in the bytes given.
    Partial,
}

/// Header fields of one message in two allocations, not two per field: names and values sit in one string, and
/// `fields` says where each name and each value lies. Requests carry a dozen fields or more, and they are parsed for
/// every exchange. A plain head's fields are that string as they were on the wire, copied once ([`Headers::from_wire`]);
/// fields pushed one by one sit back to back. A request's method and target come first in the same string (its
/// [`Headers::prefix`]): two allocations per request fewer than strings of their own.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    text: String,
    /// Per field: where its name and its value lie in `text`.
    fields: Vec<FieldAt>,
    /// Bytes of `text` before the first field (the prefix).
    start: u32,
}

/// Where one field's name and value lie (`start..end` each) in a head or in [`Headers`]' text.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FieldAt {
    pub(crate) name: (u32, u32),
    pub(crate) value: (u32, u32),
}

/// The text at `start..end` of `text` ("" for a place that is not in it): a field's name or value, in a head or in
/// [`Headers`].
pub(super) fn text_at(text: &str, (start, end): (u32, u32)) -> &str {
    text.get(start as usize..end as usize).unwrap_or("")
}

impl FieldAt {
    fn shifted(self, from: u32, to: u32) -> FieldAt {
        let at = |(a, b): (u32, u32)| (a - from + to, b - from + to);
        FieldAt {
            name: at(self.name),
            value: at(self.value),
        }
    }
}

/// Headers are equal when their prefixes and fields are, however their text is laid out.
impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.prefix() == other.prefix() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl Headers {
    /// `prefix` back to back, then room for `fields` fields of `bytes` bytes in all.
    pub fn with_prefix(prefix: &[&str], fields: usize, bytes: usize) -> Self {
        let len: usize = prefix.iter().map(|p| p.len()).sum();
        let mut text = String::with_capacity(len + bytes);
        for p in prefix {
            text.push_str(p);
        }
        Headers {
            start: text.len() as u32,
            text,
            fields: Vec::with_capacity(fields),
        }
    }

    /// `prefix`, then the fields of a head as they were on the wire: `wire`, which starts at `offset` in that head,
    /// with each field where `at` says in the head. One copy of the fields' text, not one per name and value.
    pub(crate) fn from_wire(prefix: &[&str], wire: &str, offset: u32, at: &[FieldAt]) -> Self {
        let mut out = Self::with_prefix(prefix, at.len(), wire.len());
        out.text.push_str(wire);
        let start = out.start;
        out.fields
            .extend(at.iter().map(|f| f.shifted(offset, start)));
        out
    }

    /// What was put before the fields ([`Headers::with_prefix`]).
    pub fn prefix(&self) -> &str {
        self.text.get(..self.start as usize).unwrap_or("")
    }

    /// The same fields after a new `prefix`.
    pub fn with_new_prefix(&self, prefix: &[&str]) -> Self {
        let fields = self.text.get(self.start as usize..).unwrap_or("");
        let mut out = Self::with_prefix(prefix, 0, fields.len());
        out.text.push_str(fields);
        let (from, to) = (self.start, out.start);
        out.fields = self.fields.iter().map(|f| f.shifted(from, to)).collect();
        out
    }

    pub fn push(&mut self, name: &str, value: &str) {
        let at = |text: &String| text.len() as u32;
        let name_at = at(&self.text);
        self.text.push_str(name);
        let value_at = at(&self.text);
        self.text.push_str(value);
        self.fields.push(FieldAt {
            name: (name_at, value_at),
            value: (value_at, at(&self.text)),
        });
    }

    fn slice(&self, at: (u32, u32)) -> &str {
        text_at(&self.text, at)
    }

    /// Every (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.fields
            .iter()
            .map(|f| (self.slice(f.name), self.slice(f.value)))
    }

    /// Every value of the fields named `name` (case-insensitive), in order.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The first value of `name` (case-insensitive). Several lookups run per exchange: names of another length are
    /// passed over without being read or sliced.
    pub fn get<'a>(&'a self, name: &str) -> Option<&'a str> {
        self.find(name).map(|at| self.value_at(at))
    }

    /// Where the first value of `name` (case-insensitive) lies in these fields, for [`Headers::value_at`]: a value
    /// looked up once and read again later costs no second lookup.
    pub fn find(&self, name: &str) -> Option<ValueAt> {
        let text = self.text.as_bytes();
        self.fields
            .iter()
            .find(|f| {
                let (start, end) = (f.name.0 as usize, f.name.1 as usize);
                end - start == name.len()
                    && text
                        .get(start..end)
                        .is_some_and(|n| eq_ignore_case(n, name.as_bytes()))
            })
            .map(|f| ValueAt(f.value.0, f.value.1))
    }

    /// The value [`Headers::find`] found in these fields ("" for a place that is not one of theirs).
    pub fn value_at(&self, ValueAt(start, end): ValueAt) -> &str {
        self.slice((start, end))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn clear(&mut self) {
        self.text.clear();
        self.fields.clear();
        self.start = 0;
    }
}

/// Where a value lies in the [`Headers`] that [`Headers::find`] found it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueAt(u32, u32);

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
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// The header fields, after the method and the target (see [`RequestHead::method`]).
    pub headers: Headers,
    /// Bytes of the method at the start of the headers' prefix; the target follows.
    method_len: u32,
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

    fn set_head_len(&mut self, n: usize) {
        match self {
            Head::Request(r) => r.head_len = n,
            Head::Response(r) => r.head_len = n,
        }
    }
}

impl RequestHead {
    /// A request of `method` for `target` with the fields `headers` will hold (room for `fields` of `bytes` in all).
    pub fn new(method: &str, target: &str, fields: usize, bytes: usize) -> Self {
        RequestHead {
            headers: Headers::with_prefix(&[method, target], fields, bytes),
            method_len: method.len() as u32,
            ..RequestHead::default()
        }
    }

    pub fn method(&self) -> &str {
        self.headers
            .prefix()
            .get(..self.method_len as usize)
            .unwrap_or("")
    }

    /// Request target as sent (origin-form `/p?q`, absolute-form, authority-form or `*`).
    pub fn target(&self) -> &str {
        self.headers
            .prefix()
            .get(self.method_len as usize..)
            .unwrap_or("")
    }

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
        let t = origin_part(self.target());
        // memchr2: `str::find` with a set of chars decodes and compares char by char through a searcher.
        match memchr::memchr2(b'?', b'#', t.as_bytes()) {
            Some(0) => "/",
            Some(i) => &t[..i],
            None => t,
        }
    }

    /// Raw query string without the leading `?` (and without any fragment), "" when absent.
    pub fn query(&self) -> &str {
        let t = origin_part(self.target());
        let Some(i) = memchr::memchr(b'?', t.as_bytes()) else {
            return "";
        };
        let q = &t[i + 1..];
        match memchr::memchr(b'#', q.as_bytes()) {
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
        if let Some(rest) = self.target().split_once("://").map(|(_, r)| r) {
            return without_userinfo(rest.split(['/', '?', '#']).next().unwrap_or(""));
        }
        if self.method().eq_ignore_ascii_case("CONNECT") {
            return without_userinfo(self.target());
        }
        ""
    }
}

/// An authority without its userinfo: `user:pass@host:1234` gives `host:1234` (userinfo cannot hold `@`).
fn without_userinfo(authority: &str) -> &str {
    memchr::memrchr(b'@', authority.as_bytes()).map_or(authority, |at| &authority[at + 1..])
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

/// The fields as [`Headers`], and what they say about framing. `head` is the head they were parsed from.
fn collect_headers<'a>(
    head: &'a [u8],
    mut out: RequestHead,
    headers: impl Iterator<Item = &'a httparse::Header<'a>> + Clone,
) -> RequestHead {
    let mut framing = Framing::default();
    // An ASCII head (nearly every one) is checked once, not value by value: its values are slices of that text, and
    // need no trim (httparse leaves no ASCII whitespace at either end of a value, and admits no other control byte).
    let ascii = std::str::from_utf8(head).ok().filter(|t| t.is_ascii());
    for h in headers {
        let mut take = |v: &str| {
            framing.add(h.name, v);
            out.headers.push(h.name, v)
        };
        match ascii.and_then(|text| slice_of(text, head, h.value)) {
            Some(v) => take(v),
            None => with_text(h.value, take),
        }
    }
    out.framing = framing;
    out
}

/// `part` (a slice of `head`) as the same bytes of `text` (`head` as text); None when it is not within `head`.
fn slice_of<'t>(text: &'t str, head: &[u8], part: &[u8]) -> Option<&'t str> {
    let at = (part.as_ptr() as usize).checked_sub(head.as_ptr() as usize)?;
    text.get(at..at.checked_add(part.len())?)
}

/// Hands `f` a header value as text, trimmed. Values are almost always ASCII: checked as UTF-8 first, which is much
/// cheaper than a lossy copy.
fn with_text(raw: &[u8], f: impl FnOnce(&str)) {
    match std::str::from_utf8(raw) {
        Ok(v) => f(v.trim()),
        Err(_) => f(String::from_utf8_lossy(raw).trim()),
    }
}

/// Runs `parse` with [`MAX_HEADERS`] header slots on the stack, and when the head has more fields, again with one
/// slot per line of `buf` (a field takes at least one line, so that is always enough). The slots are left
/// uninitialised (httparse writes each before it hands it out): filling 64 empty headers was 2 KiB of stores per
/// head, two heads per exchange.
fn with_header_slots<'b, T>(
    buf: &'b [u8],
    mut parse: impl FnMut(&mut [MaybeUninit<httparse::Header<'b>>]) -> Result<T, httparse::Error>,
) -> Result<T, ParseError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    match parse(&mut headers) {
        Err(httparse::Error::TooManyHeaders) => {
            let lines = buf.iter().filter(|b| **b == b'\n').count() + 1;
            let mut headers: Vec<_> = std::iter::repeat_with(MaybeUninit::uninit)
                .take(lines)
                .collect();
            Ok(parse(&mut headers)?)
        }
        r => Ok(r?),
    }
}

/// Parses a request head at the start of `buf`: a plain head (nearly every one) by hand in `plain`, any other by
/// httparse.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<RequestHead>, ParseError> {
    match plain::request(buf) {
        Some(head) => Ok(Parsed::Complete(head)),
        None => parse_request_httparse(buf),
    }
}

/// [`parse_request`] by httparse alone: what the hand-written path must agree with (the `http_head` fuzz target and
/// the tests compare them).
pub fn parse_request_httparse(buf: &[u8]) -> Result<Parsed<RequestHead>, ParseError> {
    let err = match parse_request_utf8(buf) {
        Err(e) => e,
        ok => return ok,
    };
    // httparse takes the target only as UTF-8 text, where servers take any byte above 0x7f there: parse a copy with
    // those bytes of the request line after the method replaced (same length), and give the target as the original
    // bytes read lossily. The method stays as sent: a non-token byte in it is malformed however the line goes on
    // (replacing it too made the verdict depend on bytes after it, caught by the http_head fuzz target).
    let line = &buf[..buf.iter().position(|b| *b == b'\n').unwrap_or(buf.len())];
    if std::str::from_utf8(line).is_ok() {
        return Err(err);
    }
    let method_end = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
    let mut ascii = buf.to_vec();
    for b in ascii[method_end..line.len()]
        .iter_mut()
        .filter(|b| **b >= 0x80)
    {
        *b = b'_';
    }
    let mut parsed = parse_request_utf8(&ascii)?;
    if let Parsed::Complete(r) = &mut parsed {
        let at = r.method().len() + 1;
        let target = String::from_utf8_lossy(&buf[at..at + r.target().len()]);
        r.headers = r.headers.with_new_prefix(&[r.method(), &target]);
    }
    Ok(parsed)
}

/// [`parse_request`] of a head whose request line is UTF-8.
fn parse_request_utf8(buf: &[u8]) -> Result<Parsed<RequestHead>, ParseError> {
    with_header_slots(buf, |headers| {
        let mut req = httparse::Request::new(&mut []);
        let status = req.parse_with_uninit_headers(buf, headers)?;
        Ok(request_head(buf, &req, status))
    })
}

fn request_head(
    buf: &[u8],
    req: &httparse::Request<'_, '_>,
    status: httparse::Status<usize>,
) -> Parsed<RequestHead> {
    match status {
        httparse::Status::Partial => Parsed::Partial,
        httparse::Status::Complete(head_len) => {
            let (fields, bytes) = req.headers.iter().fold((0, 0), |(f, b), h| {
                (f + 1, b + h.name.len() + h.value.len())
            });
            let head = RequestHead::new(
                req.method.unwrap_or_default(),
                req.path.unwrap_or_default(),
                fields,
                bytes,
            );
            let mut r = collect_headers(&buf[..head_len], head, req.headers.iter());
            r.anomalies = r.framing.anomalies(true);
            if has_bare_lf(&buf[..head_len]) {
                r.anomalies.insert(Anomalies::BARE_LF);
            }
            r.minor_version = req.version.unwrap_or(1);
            r.head_len = head_len;
            Parsed::Complete(r)
        }
    }
}

/// Parses a response head at the start of `buf`: a plain head (nearly every one) by hand in `plain`, any other by
/// httparse.
pub fn parse_response(buf: &[u8]) -> Result<Parsed<ResponseHead>, ParseError> {
    match plain::response(buf) {
        Some(head) => Ok(Parsed::Complete(head)),
        None => parse_response_httparse(buf),
    }
}

/// [`parse_response`] by httparse alone: what the hand-written path must agree with (the `http_head` fuzz target
/// and the tests compare them).
pub fn parse_response_httparse(buf: &[u8]) -> Result<Parsed<ResponseHead>, ParseError> {
    with_header_slots(buf, |headers| {
        let mut resp = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, headers)?;
        Ok(response_head(buf, &resp, status))
    })
}

fn response_head(
    buf: &[u8],
    resp: &httparse::Response<'_, '_>,
    status: httparse::Status<usize>,
) -> Parsed<ResponseHead> {
    match status {
        httparse::Status::Partial => Parsed::Partial,
        httparse::Status::Complete(head_len) => {
            let mut framing = Framing::default();
            // A response's other fields are not reported: only framing fields are read as text.
            for h in resp
                .headers
                .iter()
                .filter(|h| Framing::is_framing_field(h.name))
            {
                with_text(h.value, |v| framing.add(h.name, v));
            }
            let mut anomalies = framing.anomalies(false);
            if has_bare_lf(&buf[..head_len]) {
                anomalies.insert(Anomalies::BARE_LF);
            }
            Parsed::Complete(ResponseHead {
                minor_version: resp.version.unwrap_or(1),
                status: resp.code.unwrap_or(0),
                framing,
                head_len,
                anomalies,
            })
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
    let token_len = method_len(buf);
    (1..=MAX_METHOD_LEN).contains(&token_len) && buf.get(token_len) == Some(&b' ')
}

/// The token characters `buf` starts with, counted up to one past [`MAX_METHOD_LEN`] (a longer token is no method).
fn method_len(buf: &[u8]) -> usize {
    buf.iter()
        .take(MAX_METHOD_LEN + 1)
        .take_while(|b| is_tchar(**b))
        .count()
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
    // A request starts with a method token no longer than any the kernel's classifier starts a message with (and
    // `looks_like_request` pairs): longer ones are not read as a method, whatever follows (the flow fuzz target
    // delivered a 99-byte one as a message start and saw it reported).
    let method = method_len(buf);
    if method == 0 || method > MAX_METHOD_LEN {
        return Err(ParseError::NotHttp);
    }
    Ok(match parse_request(buf)? {
        Parsed::Complete(r) => Parsed::Complete(Head::Request(r)),
        Parsed::Partial => Parsed::Partial,
    })
}

/// What the bytes of a head that end where the capture stopped hold.
#[derive(Debug)]
pub enum CutHead {
    /// The whole head, as [`parse_head`] reads it.
    Complete(Head),
    /// The head as far as its complete lines go ([`parse_truncated_head`]).
    Truncated(Head),
    Malformed(ParseError),
}

/// Parses a head whose bytes end where the capture stopped. The complete lines are parsed once, with an end of head
/// put after them, so the line the capture cut is never scanned: when the head ends inside the bytes, that parse
/// stops at its real end and reads it exactly as [`parse_head`] would; otherwise it ends at the one put there, and
/// the head is truncated. Parsing the whole buffer first (the plain reader, then httparse, to learn it was
/// partial) was a third of the agent's CPU under `wrk` with 8 KiB cookies cut at 4 KiB.
pub fn parse_cut_head(buf: &[u8]) -> CutHead {
    // A bare LF ends a line too (httparse takes it).
    if let Some(end) = memchr::memrchr(b'\n', buf).map(|i| i + 1) {
        let mut fixed = Vec::with_capacity(end + 2);
        fixed.extend_from_slice(&buf[..end]);
        fixed.extend_from_slice(b"\r\n");
        match parse_head(&fixed) {
            Ok(Parsed::Complete(head)) if head.head_len() <= end => return CutHead::Complete(head),
            Ok(Parsed::Complete(mut head)) => {
                head.set_head_len(buf.len());
                return CutHead::Truncated(head);
            }
            Ok(Parsed::Partial) => {}
            Err(e) => return CutHead::Malformed(e),
        }
    }
    start_line_head(buf).map_or(CutHead::Malformed(ParseError::NotHttp), CutHead::Truncated)
}

/// Best-effort parse of a head cut short (by the capture cap, or by the kernel moving on): the complete lines seen
/// are parsed as if the head ended there; a request line cut in the middle still gives the method and the beginning
/// of the target. `head_len` of the result is the number of bytes given (the real length is unknown). `None` when
/// nothing usable is there.
pub fn parse_truncated_head(buf: &[u8]) -> Option<Head> {
    match parse_cut_head(buf) {
        CutHead::Complete(mut head) | CutHead::Truncated(mut head) => {
            head.set_head_len(buf.len());
            Some(head)
        }
        CutHead::Malformed(_) => start_line_head(buf),
    }
}

/// The head a start line gives on its own, complete or cut: a response's status, or a request's method and (the
/// beginning of) its target.
fn start_line_head(buf: &[u8]) -> Option<Head> {
    let line_end = memchr::memmem::find(buf, b"\r\n").unwrap_or(buf.len());
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
    let target = parts.next()?;
    Some(Head::Request(RequestHead {
        minor_version: 1,
        head_len: buf.len(),
        ..RequestHead::new(first, target, 0, 0)
    }))
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
