//! The common response head read without httparse: visible ASCII, CRLF line ends, nothing to tolerate. Everything
//! else goes to httparse, which this must agree with on every input (the `http_head` fuzz target and a mutation test
//! compare the two).
//!
//! Why by hand: of a response only the status and the framing fields are kept, yet httparse splits and checks every
//! field for its caller. The replay bench spent about 2,700 instructions per event in `parse_response` (15% of the
//! agent's; callgrind, a 170-byte nginx head of six fields).

use super::framing::Framing;
use super::ResponseHead;

/// Bytes that make up a header name (`tchar` of RFC 9110 §5.6.2), as a table: one load per byte of a name.
static NAME_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = observer_common::is_tchar(b as u8);
        b += 1;
    }
    t
};

/// Framing fields a plain head may have; one with more is left to httparse (repeated framing fields are rare, and
/// a sign of trouble).
const FRAMING_FIELDS: usize = 6;

/// The head at the start of `buf` when it is complete and plain: `HTTP/1.0` or `HTTP/1.1`, a single space, three
/// digits, an optional reason phrase, fields `name: value` of visible ASCII, spaces and tabs, every line ended by
/// CRLF. None for anything else, complete or not, valid or not: httparse decides those.
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
    let mut at = line_end(buf, reason_at)?;
    // Where the framing fields' names and values lie: read as text once the whole head is known to be plain, with
    // one UTF-8 check rather than one per field (callgrind: 175 instructions a check, however short the field).
    let mut fields = [const { (0..0, 0..0) }; FRAMING_FIELDS];
    let mut found = 0;
    loop {
        if buf.get(at..at + 2)? == b"\r\n" {
            let head = std::str::from_utf8(&buf[..at]).ok()?;
            let mut framing = Framing::default();
            for (name, value) in &fields[..found] {
                framing.add(&head[name.clone()], &head[value.clone()]);
            }
            return Some(ResponseHead {
                minor_version: minor - b'0',
                status,
                anomalies: framing.anomalies(false),
                framing,
                head_len: at + 2,
            });
        }
        let next = line_end(buf, at)?;
        let line = &buf[at..next - 2];
        let colon = line
            .iter()
            .take_while(|b| NAME_BYTE[usize::from(**b)])
            .count();
        if colon == 0 || line.get(colon) != Some(&b':') {
            return None;
        }
        if Framing::is_framing_name(&line[..colon]) {
            let value = line[colon + 1..].trim_ascii();
            let value_at = value.as_ptr() as usize - buf.as_ptr() as usize;
            *fields.get_mut(found)? = (at..at + colon, value_at..value_at + value.len());
            found += 1;
        }
        at = next;
    }
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
