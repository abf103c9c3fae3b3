//! Body framing: what a head's fields say about where its body ends ([`Framing`], [`BodyLength`]) and where another
//! reader (a proxy, a server) could take the framing differently ([`Anomalies`]).
use super::{Headers, ParseError};

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

/// Whether a line of `head` ends in LF without CR. One branch-free pass over byte pairs (the compiler vectorizes it):
/// a head holds a dozen LFs, and finding them one `memchr` call at a time cost more than reading every byte.
pub(super) fn has_bare_lf(head: &[u8]) -> bool {
    head.first() == Some(&b'\n')
        || head
            .iter()
            .zip(head.iter().skip(1))
            .fold(false, |bare, (&prev, &b)| {
                bare | ((b == b'\n') & (prev != b'\r'))
            })
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

pub(super) fn has_token(headers: &Headers, name: &str, token: &str) -> bool {
    headers
        .all(name)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The header fields that say something about framing.
#[derive(Clone, Copy)]
enum FramingField {
    Connection,
    ContentLength,
    TransferEncoding,
}

/// What a head's header fields say about its body's framing and the connection, read field by field in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    /// The last Transfer-Encoding coding, when there is one: true when it is chunked.
    pub(super) chunked_last: Option<bool>,
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

    /// Which framing field `name` is, if any. Compares lengths first: a head's other fields are told apart without
    /// reading their names.
    #[inline]
    fn field(name: &[u8]) -> Option<FramingField> {
        let (field, text) = match name.len() {
            10 => (FramingField::Connection, "connection"),
            14 => (FramingField::ContentLength, "content-length"),
            17 => (FramingField::TransferEncoding, "transfer-encoding"),
            _ => return None,
        };
        super::eq_ignore_case(name, text.as_bytes()).then_some(field)
    }

    /// Whether a field named `name` says anything about framing (so [`Framing::add`] would take it into account).
    #[inline]
    pub fn is_framing_field(name: &str) -> bool {
        Framing::field(name.as_bytes()).is_some()
    }

    /// [`Framing::is_framing_field`] of a name not yet read as text.
    #[inline]
    pub(super) fn is_framing_name(name: &[u8]) -> bool {
        Framing::field(name).is_some()
    }

    /// Takes one header field into account (value trimmed).
    pub fn add(&mut self, name: &str, value: &str) {
        let Some(field) = Framing::field(name.as_bytes()) else {
            return;
        };
        let tokens = || value.split(',').map(str::trim);
        match field {
            FramingField::TransferEncoding => {
                if let Some(last) = tokens().rfind(|t| !t.is_empty()) {
                    self.chunked_last = Some(last.eq_ignore_ascii_case("chunked"));
                }
            }
            FramingField::ContentLength => {
                let plain = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
                self.content_length_odd |= self.content_length_seen || !plain;
                self.content_length_seen = true;
                let Ok(found) = &self.content_length else {
                    return; // the first bad value is the one reported
                };
                if let (true, Ok(n)) = (plain, value.parse::<u64>()) {
                    // One plain number, nearly every message: no list to walk.
                    self.content_length = match found {
                        Some(prev) if *prev != n => Err(value.to_string()),
                        _ => Ok(Some(n)),
                    };
                    return;
                }
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
            }
            FramingField::Connection => {
                let mut take = |t: &str| {
                    self.close |= super::eq_ignore_case(t.as_bytes(), b"close");
                    self.keep_alive |= super::eq_ignore_case(t.as_bytes(), b"keep-alive");
                };
                // One token, nearly every message (`keep-alive`, `close`): no list to split.
                if value.bytes().any(|b| b == b',') {
                    tokens().for_each(take);
                } else {
                    take(value.trim());
                }
            }
        }
    }

    /// What in these fields allows another reading of the framing; `request` adds the request-only rules.
    pub(super) fn anomalies(&self, request: bool) -> Anomalies {
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

    pub(super) fn content_length(&self) -> Result<Option<u64>, ParseError> {
        self.content_length
            .clone()
            .map_err(ParseError::BadContentLength)
    }

    /// Whether the connection stays open after the message, for HTTP/1.`minor_version`.
    pub(super) fn keep_alive(&self, minor_version: u8) -> bool {
        !self.close && (minor_version >= 1 || self.keep_alive)
    }
}
