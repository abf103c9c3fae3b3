//! Plain heads read without httparse: visible ASCII, CRLF line ends, nothing to tolerate. Everything else goes to
//! httparse, which this must agree with on every input (the `http_head` fuzz target and mutation tests compare the
//! two).
//!
//! Why by hand: httparse checks and splits every byte through a table, branch by branch, and hands out slices the
//! caller then copies and checks as text again. The replay bench spent about 2,700 instructions per event reading
//! a 170-byte response head and 3,400 reading a 200-byte request head (a third of the agent's instructions;
//! callgrind). Here each line is checked eight bytes at a time, and a head is checked as text once.

use super::framing::Framing;
use super::{text_at, FieldAt, Headers, RequestHead, ResponseHead};

/// Bytes that make up a header name or a method (`tchar` of RFC 9110 §5.6.2), as a table: one load per byte.
static TOKEN_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = observer_common::is_tchar(b as u8);
        b += 1;
    }
    t
};

/// Fields a plain request head may have; one with more is left to httparse (which takes any number).
const REQUEST_FIELDS: usize = 32;

/// Framing fields a plain response head may have; one with more is left to httparse (repeated framing fields are
/// rare, and a sign of trouble).
const FRAMING_FIELDS: usize = 6;

/// The request head at the start of `buf` when it is complete and plain: a method token, a single space, a target of
/// visible ASCII, a single space, `HTTP/1.0` or `HTTP/1.1`, then fields as [`fields`] reads them. None for anything
/// else, complete or not, valid or not: httparse decides those.
pub(super) fn request(buf: &[u8]) -> Option<RequestHead> {
    let method = token_before(buf, b' ')?;
    let line = line_end(buf, method + 1)?;
    // `line` ends after CRLF; before it, ` HTTP/1.x` and before that the target (no space, no tab in it).
    let version = line.checked_sub(11).filter(|&v| v > method + 1)?;
    let (b" HTTP/1.", [minor @ (b'0' | b'1'), b'\r', b'\n']) = buf[version..line].split_at(8)
    else {
        return None;
    };
    let target = method + 1..version;
    if buf[target.clone()].iter().any(|&b| b == b' ' || b == b'\t') {
        return None;
    }
    let mut at = [FieldAt::default(); REQUEST_FIELDS];
    let mut found = 0;
    let head_len = fields(buf, line, |f| {
        *at.get_mut(found)? = f;
        found += 1;
        Some(())
    })?;
    let head = std::str::from_utf8(&buf[..head_len]).ok()?;
    let at = &at[..found];
    // The fields' lines copied once, as they were; each field found where `fields` saw it.
    let fields_at = u32::try_from(line).ok()?;
    let mut r = RequestHead {
        headers: Headers::from_wire(
            &[&head[..method], &head[target]],
            &head[line..],
            fields_at,
            at,
        ),
        method_len: u32::try_from(method).ok()?,
        ..RequestHead::default()
    };
    for f in at {
        // `add` would pass over other fields itself, but only after a call and the value's slicing: checked here,
        // nearly every field costs one inlined name test (callgrind, replay bench: 175 instructions per event).
        if Framing::is_framing_name(text_at(head, f.name).as_bytes()) {
            r.framing.add(text_at(head, f.name), text_at(head, f.value));
        }
    }
    r.anomalies = r.framing.anomalies(true);
    r.minor_version = minor - b'0';
    r.head_len = head_len;
    Some(r)
}

/// The response head at the start of `buf` when it is complete and plain: `HTTP/1.0` or `HTTP/1.1`, a single space,
/// three digits, an optional reason phrase, then fields as [`fields`] reads them. None for anything else, complete or
/// not, valid or not: httparse decides those.
pub(super) fn response(buf: &[u8]) -> Option<ResponseHead> {
    let start = buf.get(..13)?;
    let (b"HTTP/1.", [minor @ (b'0' | b'1'), b' ', d0, d1, d2, after]) = start.split_at(7) else {
        return None;
    };
    let digits = [*d0, *d1, *d2];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    // The reason phrase, if any, after one more space; a CR right after the code ends a line without one.
    let reason_at = match after {
        b' ' => 13,
        b'\r' => 12,
        _ => return None,
    };
    // Only the framing fields of a response are read, as text once the whole head is known to be plain.
    let mut at = [FieldAt::default(); FRAMING_FIELDS];
    let mut found = 0;
    let head_len = fields(buf, line_end(buf, reason_at)?, |f| {
        if Framing::is_framing_name(&buf[f.name.0 as usize..f.name.1 as usize]) {
            *at.get_mut(found)? = f;
            found += 1;
        }
        Some(())
    })?;
    let head = std::str::from_utf8(&buf[..head_len]).ok()?;
    let mut framing = Framing::default();
    for f in &at[..found] {
        framing.add(text_at(head, f.name), text_at(head, f.value));
    }
    Some(ResponseHead {
        minor_version: minor - b'0',
        status,
        anomalies: framing.anomalies(false),
        framing,
        head_len,
    })
}

/// Reads the field lines from `buf[at]` to the empty line that ends the head, and gives where the head ends (after
/// that line). Each line is `name:value` with a token for a name and visible ASCII, spaces and tabs for the rest,
/// ended by CRLF; `each` gets where each field lies and may refuse it. None when a line is not so, or the head is
/// unfinished.
fn fields(buf: &[u8], mut at: usize, mut each: impl FnMut(FieldAt) -> Option<()>) -> Option<usize> {
    // Offsets into `buf` fit a field's `u32`s: the capture hands over far less than 4 GiB at a time.
    let offset = |i: usize| u32::try_from(i).ok();
    loop {
        if buf.get(at..at + 2)? == b"\r\n" {
            return Some(at + 2);
        }
        let next = line_end(buf, at)?;
        let line = &buf[at..next - 2];
        let colon = token_before(line, b':')?;
        let value = line[colon + 1..].trim_ascii();
        let value_at = at + (value.as_ptr() as usize - line.as_ptr() as usize);
        each(FieldAt {
            name: (offset(at)?, offset(at + colon)?),
            value: (offset(value_at)?, offset(value_at + value.len())?),
        })?;
        at = next;
    }
}

/// The length of the token that starts `bytes` when `end` follows it (a method and its space, a field name and its
/// colon); None when it is empty or followed by anything else.
fn token_before(bytes: &[u8], end: u8) -> Option<usize> {
    let n = bytes
        .iter()
        .take_while(|b| TOKEN_BYTE[usize::from(**b)])
        .count();
    if n == 0 || bytes.get(n) != Some(&end) {
        return None;
    }
    Some(n)
}

/// Where the line from `buf[from]` ends, after its CRLF, when it is plain. None when it is unfinished, ends in a bare
/// LF, or holds anything but visible ASCII, spaces and tabs.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let cr = next_special(buf, from);
    (buf.get(cr..cr + 2)? == b"\r\n").then_some(cr + 2)
}

/// Where the first byte at or after `at` lies that is neither visible ASCII nor a space or a tab (`buf.len()` when
/// there is none). Eight bytes per step within a word (SWAR): a short line is cheaper read so than through `memchr`
/// and a separate check (callgrind: 190 instructions per line that way).
fn next_special(buf: &[u8], mut at: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    loop {
        while let Some(word) = buf.get(at..at + 8) {
            let w = u64::from_le_bytes(word.try_into().unwrap_or_default());
            // The high bit of each byte below 0x20 or at 0x7f and above. Borrows and carries run only upwards, so
            // the lowest flag is exact (those above it may not be, and are not read).
            let special = ((w.wrapping_sub(ONES * 0x20) & !w) | w.wrapping_add(ONES) | w) & HIGH;
            if special != 0 {
                at += special.trailing_zeros() as usize / 8;
                break;
            }
            at += 8;
        }
        while buf.get(at).is_some_and(|&b| b.wrapping_sub(b' ') < 0x5f) {
            at += 1;
        }
        // A tab is plain too: go on after it.
        match buf.get(at) {
            Some(b'\t') => at += 1,
            _ => return at,
        }
    }
}
