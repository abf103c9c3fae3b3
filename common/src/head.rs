//! The kernel's look into a message head: where it ends, and whether the rest of its segment can stay uncopied.
//!
//! The agent reads a message's body only to follow chunked framing, to find a message that follows it in the same
//! segment, and, for a request, to hash its first [`BODY_PREFIX`] bytes. A segment that starts a message whose head
//! declares `Content-Length` (and no `Transfer-Encoding`), and that ends inside that body, holds nothing else the
//! agent reads: the kernel copies the head (and a request's body prefix) instead of the whole segment, and none of
//! the message's later segments. Copying is what the ring costs, the first stores into its cold cache lines, about
//! 0.4 ns a byte on the bench's machine (BENCHMARKS.md, stop 28), so an API's kilobytes of JSON cost more than
//! everything else the program does. Anything this scan is unsure of (a head longer than [`HEAD_SCAN`], no
//! `Content-Length`, two of them, a value that is not a plain number, bytes after the body, bytes after the head that
//! look like a message start) gets the whole segment, as before. User-space tests mirror the kernel's copy with
//! [`kernel_copy_len`].

use crate::{is_common_start, is_response_start};

/// Most body bytes of a request the agent keeps, hashed into its `request_hash`: enough to tell two JSON bodies apart
/// by their first fields, small enough that keeping them costs one cache line per request.
pub const BODY_PREFIX: usize = 64;

/// Bytes of a message-start segment the kernel scans for its head's end; a longer head is copied whole, as before. A
/// power of two (offsets are masked into it).
pub const HEAD_SCAN: usize = 1024;
const SCAN_WORDS: usize = HEAD_SCAN / 8;
/// Steps of the scan: 8 bytes without a line end are one, a line end another, so a head of [`HEAD_SCAN`] bytes in
/// lines of 16 bytes on average fits; a head of shorter lines is copied whole.
const SCAN_STEPS: usize = SCAN_WORDS + HEAD_SCAN / 16;

/// The kernel scans only segments longer than this: a shorter one fills the smallest record class anyway.
pub const HEAD_SCAN_MIN: usize = 256;

/// The kernel's per-CPU scratch: a segment's first bytes in memory order, and a word of room after [`HEAD_SCAN`] so
/// that a read at any masked offset stays inside. Read a word at a time: a word's bytes are in little-endian order.
#[repr(C)]
pub struct HeadScratch {
    pub words: [u64; SCAN_WORDS + 1],
    /// The scan's positions, kept here rather than in registers from one step to the next, and the length scanned
    /// (see [`head_copy_len`]).
    pos: u64,
    len: u64,
    value: u64,
    end: u64,
}

impl HeadScratch {
    pub const fn new() -> Self {
        HeadScratch {
            words: [0; SCAN_WORDS + 1],
            pos: 0,
            len: 0,
            value: 0,
            end: 0,
        }
    }
}

/// A position kept in the scratch, read back: the verifier sees a value read from a map as unknown, not as the
/// result of the bytes before it.
#[inline(always)]
fn get(cell: &u64) -> usize {
    // SAFETY: a valid, aligned field; volatile so that the compiler reads memory, not a register it kept.
    unsafe { core::ptr::read_volatile(cell) as usize }
}

#[inline(always)]
fn set(cell: &mut u64, v: usize) {
    // SAFETY: as for `get`.
    unsafe { core::ptr::write_volatile(cell, v as u64) }
}

impl Default for HeadScratch {
    fn default() -> Self {
        Self::new()
    }
}

const _: () = assert!(cfg!(target_endian = "little"));

const LOW: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const LF: u64 = 0x0a0a_0a0a_0a0a_0a0a;
/// ASCII letters to lower case (and `-`, `:` unchanged): a field name compared a word at a time.
const FOLD: u64 = 0x2020_2020_2020_2020;
const CONTENT: u64 = u64::from_le_bytes(*b"content-");
const LENGTH: u64 = u64::from_le_bytes(*b"length:\0");
const SEVEN: u64 = 0x00ff_ffff_ffff_ffff;
const TRANSFER: u64 = u64::from_le_bytes(*b"transfer");
const ENCODIN: u64 = u64::from_le_bytes(*b"-encodin");

/// The high bit of every zero byte of `v`, exactly (no borrow between bytes).
#[inline(always)]
fn zero_bytes(v: u64) -> u64 {
    !(((v & LOW).wrapping_add(LOW)) | v | LOW)
}

/// Index of the lowest byte whose high bit is set in `m` (nonzero, only high bits set): the lowest bit moved to its
/// byte's low bit, times a constant whose top byte is then that index. No bit-scan instruction in BPF.
#[inline(always)]
fn lowest_byte(m: u64) -> usize {
    (((m & m.wrapping_neg()) >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as usize
}

/// The 8 bytes at `i` as a little-endian word, from the two words that hold them. `i` is masked into the scan: past
/// it a read returns other bytes of the scratch, which the callers never rely on (see [`head_copy_len`]).
#[inline(always)]
fn word_at(s: &HeadScratch, i: usize) -> u64 {
    let q = (i >> 3) & (SCAN_WORDS - 1);
    let sh = (i & 7) * 8;
    // No branch for `sh == 0` (a shift by 64 is not one by 0): the high word moves in two shifts.
    (s.words[q] >> sh) | ((s.words[q + 1] << 1) << (63 - sh))
}

#[inline(always)]
fn byte_at(s: &HeadScratch, i: usize) -> u8 {
    (s.words[(i >> 3) & (SCAN_WORDS - 1)] >> ((i & 7) * 8)) as u8
}

/// A `Content-Length` value at `i` (after the colon): optional blanks, 1 to 15 digits, optional blanks, then the
/// line's end. Anything else (a list, a sign, garbage) is `None`.
#[inline(always)]
fn field_number(s: &HeadScratch, mut i: usize) -> Option<usize> {
    let mut k = 0;
    while k < 8 && matches!(byte_at(s, i), b' ' | b'\t') {
        i += 1;
        k += 1;
    }
    let mut v = 0usize;
    let mut d = 0;
    while d < 16 {
        let c = byte_at(s, i);
        if !c.is_ascii_digit() {
            break;
        }
        v = v * 10 + (c - b'0') as usize;
        i += 1;
        d += 1;
    }
    if d == 0 || d == 16 {
        return None;
    }
    k = 0;
    while k < 8 && matches!(byte_at(s, i), b' ' | b'\t') {
        i += 1;
        k += 1;
    }
    match byte_at(s, i) {
        b'\r' | b'\n' => Some(v),
        _ => None,
    }
}

/// How many bytes of a message-start segment of `payload_len` bytes, whose first `n` (at most [`HEAD_SCAN`]) are in
/// `s`, the agent needs: the head, and for a request up to [`BODY_PREFIX`] body bytes, when the head ends within
/// the `n` bytes, declares one `Content-Length` and no `Transfer-Encoding`, and the segment ends inside that body
/// (bytes after it would be a pipelined message, which needs the whole segment), and the bytes after the head do not
/// look like a message start (a response to `HEAD`, or a 304, declares a length it does not send). `None`: copy the
/// segment as before.
///
/// One pass, a branch per 8 bytes and work only at line ends: the head's end is a line end two bytes (`\r\n`) or
/// one (`\n`) after the last, and a line is a field name's only when its first 16 bytes say so. Bytes of `s` past
/// `n` are left from earlier segments: a line end found there stops the scan, and a name or value read across `n`
/// can only matter before a head end found within `n`, which the real bytes between them (the end's `\r\n\r\n`)
/// rule out.
#[inline(always)]
pub fn head_copy_len(s: &mut HeadScratch, n: usize, payload_len: usize) -> Option<usize> {
    // Read back, so that the verifier cannot decide a comparison with it should a caller pass a constant (which
    // would keep the positions compared exact in every state).
    set(&mut s.len, n);
    let n = get(&s.len);
    // Far from any position, so that `last + 2` neither overflows nor matches.
    let mut last = usize::MAX >> 1;
    // Where the `Content-Length` value starts; 0: no such field.
    set(&mut s.value, 0);
    set(&mut s.end, 0);
    set(&mut s.pos, 0);
    // One loop, no inner one: a step reads the 8 bytes at `pos` and moves past them, or past their first line end.
    // The position goes through the scratch from one step to the next: the verifier walks every step, and a
    // position used as an offset is one it keeps exact from then on, so that each place a line could end was a
    // path of its own through the rest of the scan (millions of instructions; through the scratch, about 800 a
    // step).
    let mut step = 0;
    while step < SCAN_STEPS {
        step += 1;
        let pos = get(&s.pos);
        if pos >= n {
            return None;
        }
        let m = zero_bytes(word_at(s, pos) ^ LF);
        if m == 0 {
            set(&mut s.pos, pos + 8);
            continue;
        }
        let p = pos + lowest_byte(m);
        set(&mut s.pos, p + 1);
        if p >= n {
            return None;
        }
        if p < 4 {
            // Empty lines before the message (RFC 9112 §2.2), which the kernel's start test allows.
            continue;
        }
        if p == last + 1 || (p == last + 2 && byte_at(s, p - 1) == b'\r') {
            set(&mut s.end, p + 1);
            break;
        }
        last = p;
        let name = word_at(s, p + 1) | FOLD;
        if name == CONTENT && (word_at(s, p + 9) | FOLD) & SEVEN == LENGTH {
            if get(&s.value) != 0 {
                return None;
            }
            set(&mut s.value, p + 16);
        } else if name == TRANSFER && word_at(s, p + 9) | FOLD == ENCODIN {
            return None;
        }
    }
    let (end, value) = (get(&s.end), get(&s.value));
    if value == 0 || end == 0 {
        return None;
    }
    let length = field_number(s, value)?;
    if end >= payload_len || payload_len - end > length {
        return None;
    }
    // A body's first bytes, or a message that follows a bodiless response.
    if end + 8 > n || is_common_start(&word_at(s, end).to_le_bytes()) {
        return None;
    }
    let (w0, w1) = (s.words[0].to_le_bytes(), s.words[1].to_le_bytes());
    let first = [
        w0[0], w0[1], w0[2], w0[3], w0[4], w0[5], w0[6], w0[7], w1[0], w1[1], w1[2], w1[3],
    ];
    let keep = if is_response_start(&first) {
        0
    } else if length < BODY_PREFIX {
        length
    } else {
        BODY_PREFIX
    };
    if end + keep >= payload_len {
        return None;
    }
    Some(end + keep)
}

/// What the kernel copies of a segment of a message whose capture allows `copy` more bytes, `start` when it starts
/// the message: at a start longer than [`HEAD_SCAN_MIN`] (and `copy`), [`head_copy_len`] on its first
/// `min(copy, HEAD_SCAN)` bytes; else `copy` bytes. The second value says the body was left uncopied: the kernel
/// then copies none of the message's later segments. For user-space tests that mirror the kernel.
pub fn kernel_copy_len(payload: &[u8], start: bool, copy: usize) -> (usize, bool) {
    let copy = copy.min(payload.len());
    if !start || copy <= HEAD_SCAN_MIN {
        return (copy, false);
    }
    let n = copy.min(HEAD_SCAN);
    let mut s = HeadScratch::new();
    for (i, b) in payload[..n].iter().enumerate() {
        s.words[i / 8] |= u64::from(*b) << ((i % 8) * 8);
    }
    match head_copy_len(&mut s, n, payload.len()) {
        Some(h) if h < copy => (h, true),
        _ => (copy, false),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{
        format,
        string::{String, ToString},
        vec::Vec,
    };

    fn resp(fields: &str, body: usize) -> Vec<u8> {
        let mut v = format!("HTTP/1.1 200 OK\r\nServer: nginx\r\n{fields}\r\n").into_bytes();
        v.extend(std::iter::repeat_n(b'x', body));
        v
    }

    fn copy(seg: &[u8]) -> usize {
        kernel_copy_len(seg, true, 4096).0
    }

    fn head_len(seg: &[u8]) -> usize {
        seg.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
    }

    #[test]
    fn a_content_length_body_is_left_uncopied() {
        let seg = resp(
            "Content-Type: application/json\r\nContent-Length: 612\r\n",
            612,
        );
        assert_eq!(copy(&seg), head_len(&seg));
        // Names in any case, blanks around the value, the body running on into later segments.
        let seg = resp("content-LENGTH:\t 5000 \r\nX-A: b\r\n", 900);
        assert_eq!(copy(&seg), head_len(&seg));
        assert!(kernel_copy_len(&seg, true, 4096).1);
    }

    #[test]
    fn a_request_keeps_its_body_prefix() {
        let mut seg = b"POST /orders HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n".to_vec();
        let head = seg.len();
        seg.extend(std::iter::repeat_n(b'{', 700));
        assert_eq!(copy(&seg), head + BODY_PREFIX);
        // A body shorter than the prefix that fills the segment: all of it is needed.
        let mut seg = b"POST /o HTTP/1.1\r\nContent-Length: 40\r\n".to_vec();
        seg.extend(std::iter::repeat_n(b'a', 240));
        seg.extend(b"\r\n\r\n");
        seg.extend(std::iter::repeat_n(b'{', 40));
        assert_eq!(copy(&seg), seg.len());
    }

    #[test]
    fn anything_unsure_is_copied_whole() {
        let cases: [(&str, Vec<u8>); 9] = [
            ("chunked", resp("Transfer-Encoding: chunked\r\n", 600)),
            (
                "both",
                resp("Content-Length: 600\r\nTransfer-Encoding: chunked\r\n", 600),
            ),
            ("no length", resp("Connection: close\r\n", 600)),
            (
                "two lengths",
                resp("Content-Length: 600\r\nContent-Length: 600\r\n", 600),
            ),
            ("list", resp("Content-Length: 600, 600\r\n", 600)),
            ("sign", resp("Content-Length: +600\r\n", 600)),
            ("pipelined", {
                let mut v = resp("Content-Length: 300\r\n", 300);
                v.extend(resp("Content-Length: 10\r\n", 10));
                v
            }),
            ("bodiless then a response", {
                // The response to HEAD declares the length of the body a GET would get.
                let mut v = resp("Content-Length: 5000\r\n", 0);
                v.extend(resp("Content-Length: 400\r\n", 400));
                v
            }),
            (
                "head past the scan",
                resp(
                    &format!("X-Big: {}\r\nContent-Length: 9\r\n", "b".repeat(1100)),
                    9,
                ),
            ),
        ];
        for (what, seg) in cases {
            assert_eq!(copy(&seg), seg.len().min(4096), "{what}");
        }
    }

    #[test]
    fn short_segments_and_continuations_are_not_scanned() {
        let seg = resp("Content-Length: 20\r\n", 20);
        assert!(seg.len() <= HEAD_SCAN_MIN);
        assert_eq!(kernel_copy_len(&seg, true, 4096), (seg.len(), false));
        let seg = resp("Content-Length: 2000\r\n", 900);
        assert_eq!(kernel_copy_len(&seg, false, 4096), (seg.len(), false));
        // A capture cap that ends inside the head: the cap rules; one past it: the head.
        let seg = resp(
            &format!("X-Big: {}\r\nContent-Length: 2000\r\n", "b".repeat(300)),
            900,
        );
        assert_eq!(kernel_copy_len(&seg, true, 300), (300, false));
        assert_eq!(kernel_copy_len(&seg, true, 400), (head_len(&seg), true));
    }

    #[test]
    fn empty_lines_before_the_message_are_not_its_end() {
        let mut seg = b"\r\n\r\n".to_vec();
        seg.extend(resp("Content-Length: 800\r\n", 800));
        assert_eq!(copy(&seg), head_len(&seg[4..]) + 4);
    }

    #[test]
    fn bare_line_feeds_end_a_head_too() {
        let mut seg = b"HTTP/1.1 200 OK\nContent-Length: 700\n\n".to_vec();
        let head = seg.len();
        seg.extend(std::iter::repeat_n(b'z', 700));
        assert_eq!(copy(&seg), head);
    }

    /// Agrees with a plain byte-by-byte reading of the same rules on generated heads: random field names (some of
    /// them the framing ones, in random case), values, line ends and bodies, at every position within the words.
    #[test]
    fn agrees_with_a_plain_reading_on_generated_heads() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let names = [
            "Content-Length",
            "content-length",
            "CONTENT-LENGTH",
            "Transfer-Encoding",
            "Content-Type",
        ];
        let mut cut = 0;
        for _ in 0..20_000 {
            let mut head = String::new();
            for _ in 0..rnd(3) {
                head.push_str("\r\n");
            }
            head.push_str(if rnd(2) == 0 {
                "HTTP/1.1 200 OK"
            } else {
                "PUT /a HTTP/1.1"
            });
            let eol = if rnd(10) == 0 { "\n" } else { "\r\n" };
            head.push_str(eol);
            for _ in 0..rnd(8) {
                let name = if rnd(3) == 0 {
                    names[rnd(names.len() as u64) as usize].into()
                } else {
                    "X-".to_string() + &"h".repeat(rnd(30) as usize)
                };
                let value = match rnd(4) {
                    0 => format!("{}", rnd(3000)),
                    1 => format!(" {} ", rnd(3000)),
                    2 => "v".repeat(rnd(40) as usize),
                    _ => format!("{},{}", rnd(9), rnd(9)),
                };
                head.push_str(&format!("{name}:{value}{eol}"));
            }
            head.push_str(eol);
            let mut seg = head.into_bytes();
            seg.extend(std::iter::repeat_n(b'b', rnd(1500) as usize));
            let (got, skipped) = kernel_copy_len(&seg, true, 4096);
            assert_eq!(
                got,
                reference(&seg).unwrap_or(seg.len()),
                "{:?}",
                String::from_utf8_lossy(&seg)
            );
            cut += skipped as usize;
        }
        assert!(cut > 1_000, "only {cut} heads cut");
    }

    /// The same rules read the plain way: lines, names compared as text.
    fn reference(seg: &[u8]) -> Option<usize> {
        if seg.len() <= HEAD_SCAN_MIN {
            return None;
        }
        let n = seg.len().min(HEAD_SCAN);
        let mut lines = Vec::new();
        let mut start = 0;
        for (i, b) in seg[..n].iter().enumerate() {
            if *b == b'\n' && i >= 4 {
                lines.push((start, i));
                start = i + 1;
            } else if *b == b'\n' {
                start = i + 1;
            }
        }
        let skip = crate::empty_lines_len([seg[0], seg[1], seg[2], seg[3]]);
        let mut length = None;
        let mut end = None;
        for (k, &(a, b)) in lines.iter().enumerate() {
            let line = &seg[a..b];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if k > 0 && line.is_empty() {
                end = Some(b + 1);
                break;
            }
            if k == 0 {
                continue;
            }
            let text = String::from_utf8_lossy(line).to_ascii_lowercase();
            if text.starts_with("transfer-encodin") {
                return None;
            }
            if let Some(v) = text.strip_prefix("content-length:") {
                let v = v.trim_matches([' ', '\t']);
                if length.is_some()
                    || v.is_empty()
                    || v.len() > 15
                    || !v.bytes().all(|c| c.is_ascii_digit())
                {
                    return None;
                }
                length = Some(v.parse::<usize>().unwrap());
            }
        }
        let (end, length) = (end?, length?);
        if end >= seg.len() || seg.len() - end > length || end + 8 > n {
            return None;
        }
        if is_common_start(seg[end..end + 8].try_into().unwrap()) {
            return None;
        }
        let keep = if seg[skip..].starts_with(b"HTTP/") {
            0
        } else {
            length.min(BODY_PREFIX)
        };
        (end + keep < seg.len()).then_some(end + keep)
    }
}
