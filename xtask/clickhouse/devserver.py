#!/usr/bin/env python3
"""A ClickHouse HTTP interface over chdb (the ClickHouse engine in-process), for development and tests.

Usage: python3 devserver.py --host 127.0.0.1 --port 8123 --data DIR

Only the standard library, `chdb` (PyPI `chdb-core`) and `lz4` are used.  See README.md next to this file for
what is supported and what the `clickhouse` Rust crate sends.

Design:
  * one chdb connection on DIR (chdb allows one per path per process), used under one lock: queries run one at a
    time.  Per-request state (database, settings) is applied under the lock and reset before it is released.
  * request bodies are read, decoded (chunked, Content-Encoding, `decompress=1` native LZ4 frames) and spooled
    (memory, then a temporary file) *before* the lock is taken, so a slow or vanishing client never holds the
    engine and a partial body is never inserted.
  * SELECT results are streamed from chdb to the client; small results get a Content-Length, large ones chunked
    transfer encoding.  A failure after the headers were sent ends the body with ClickHouse's exception text and
    drops the connection, as ClickHouse does.
"""

import argparse
import http.server
import json
import os
import re
import signal
import socket
import socketserver
import struct
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
import zlib

import chdb
import lz4.block
import lz4.frame

SERVER_NAME = "chdb dev server"

# ---------------------------------------------------------------------------------------------------------------
# CityHash128 v1.0.2 (the variant ClickHouse uses for the checksums of its compressed blocks).

_M = 0xFFFFFFFFFFFFFFFF
_K0 = 0xC3A5C85C97CB3127
_K1 = 0xB492B66FBE98F273
_K2 = 0x9AE16A3B2F90404F
_K3 = 0xC949D7C7509E6557
_KMUL = 0x9DDFEA08EB382D69
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def _f64(s, i):
    return _U64.unpack_from(s, i)[0]


def _f32(s, i):
    return _U32.unpack_from(s, i)[0]


def _rot(v, n):
    return v if n == 0 else ((v >> n) | (v << (64 - n))) & _M


def _smix(v):
    return v ^ (v >> 47)


def _h16(u, v):
    a = ((u ^ v) * _KMUL) & _M
    a ^= a >> 47
    b = ((v ^ a) * _KMUL) & _M
    b ^= b >> 47
    return (b * _KMUL) & _M


def _h0to16(s, o, n):
    if n > 8:
        a = _f64(s, o)
        b = _f64(s, o + n - 8)
        return _h16(a, _rot((b + n) & _M, n)) ^ b
    if n >= 4:
        a = _f32(s, o)
        return _h16((n + (a << 3)) & _M, _f32(s, o + n - 4))
    if n > 0:
        a, b, c = s[o], s[o + (n >> 1)], s[o + n - 1]
        y = (a + (b << 8)) & 0xFFFFFFFF
        z = (n + (c << 2)) & 0xFFFFFFFF
        return (_smix(((y * _K2) ^ (z * _K3)) & _M) * _K2) & _M
    return _K2


def _weak32(s, o, a, b):
    w, x, y, z = _U64.unpack_from(s, o)[0], _f64(s, o + 8), _f64(s, o + 16), _f64(s, o + 24)
    a = (a + w) & _M
    b = _rot((b + a + z) & _M, 21)
    c = a
    a = (a + x + y) & _M
    b = (b + _rot(a, 44)) & _M
    return (a + z) & _M, (b + c) & _M


def _city_murmur(s, o, n, lo, hi):
    a, b, c, d = lo, hi, 0, 0
    l = n - 16
    if l <= 0:
        a = (_smix((a * _K1) & _M) * _K1) & _M
        c = (b * _K1 + _h0to16(s, o, n)) & _M
        d = _smix((a + (_f64(s, o) if n >= 8 else c)) & _M)
    else:
        c = _h16((_f64(s, o + n - 8) + _K1) & _M, a)
        d = _h16((b + n) & _M, (c + _f64(s, o + n - 16)) & _M)
        a = (a + d) & _M
        while True:
            a ^= (_smix((_f64(s, o) * _K1) & _M) * _K1) & _M
            a = (a * _K1) & _M
            b ^= a
            c ^= (_smix((_f64(s, o + 8) * _K1) & _M) * _K1) & _M
            c = (c * _K1) & _M
            d ^= c
            o += 16
            l -= 16
            if l <= 0:
                break
    a = _h16(a, c)
    b = _h16(d, b)
    return a ^ b, _h16(b, a)


def _city128_seed(s, o, n, lo, hi):
    if n < 128:
        return _city_murmur(s, o, n, lo, hi)
    x, y, z = lo, hi, (n * _K1) & _M
    v0 = (_rot(y ^ _K1, 49) * _K1 + _f64(s, o)) & _M
    v1 = (_rot(v0, 42) * _K1 + _f64(s, o + 8)) & _M
    w0 = (_rot((y + z) & _M, 35) * _K1 + x) & _M
    w1 = (_rot((x + _f64(s, o + 88)) & _M, 53) * _K1) & _M
    while True:
        for _ in (0, 1):
            x = (_rot((x + y + v0 + _f64(s, o + 16)) & _M, 37) * _K1) & _M
            y = (_rot((y + v1 + _f64(s, o + 48)) & _M, 42) * _K1) & _M
            x ^= w1
            y ^= v0
            z = _rot(z ^ w0, 33)
            v0, v1 = _weak32(s, o, (v1 * _K1) & _M, (x + w0) & _M)
            w0, w1 = _weak32(s, o + 32, (z + w1) & _M, y)
            z, x = x, z
            o += 64
        n -= 128
        if n < 128:
            break
    y = (y + _rot(w0, 37) * _K0 + z) & _M
    x = (x + _rot((v0 + z) & _M, 49) * _K0) & _M
    tail = 0
    while tail < n:
        tail += 32
        y = (_rot((y - x) & _M, 42) * _K0 + v1) & _M
        w0 = (w0 + _f64(s, o + n - tail + 16)) & _M
        x = (_rot(x, 49) * _K0 + w0) & _M
        w0 = (w0 + v0) & _M
        v0, v1 = _weak32(s, o + n - tail, v0, v1)
    x = _h16(x, v0)
    y = _h16(y, w0)
    return (_h16((x + v1) & _M, w1) + y) & _M, _h16((x + w1) & _M, (y + v1) & _M)


def cityhash128(data):
    """CityHash128 v1.0.2 of `data`, as (low64, high64); ClickHouse stores it as two little-endian u64."""
    s = bytes(data)
    n = len(s)
    if n >= 16:
        return _city128_seed(s, 16, n - 16, _f64(s, 0) ^ _K3, _f64(s, 8))
    if n >= 8:
        return _city128_seed(s, 0, 0, _f64(s, 0) ^ ((n * _K0) & _M), _f64(s, n - 8) ^ _K1)
    return _city128_seed(s, 0, n, _K0, _K1)


def cityhash128_bytes(data):
    lo, hi = cityhash128(data)
    return _U64.pack(lo) + _U64.pack(hi)


# ---------------------------------------------------------------------------------------------------------------
# Errors

class CHError(Exception):
    """An error reported the way ClickHouse reports it: code, name, message."""

    def __init__(self, code, message, name=None):
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.name = name


class ClientGone(Exception):
    """The client closed the connection or sent a truncated request."""


_CODE_RE = re.compile(r"Code: (\d+)\. DB::Exception: ?(.*)", re.S)
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)(?: \(version [^)]*(?:\([^)]*\))?\))?\s*$")
_VERSION_SUFFIX_RE = re.compile(r"\s*\(version [^()]*(?:\([^()]*\))?\)\s*$")

# ClickHouse's exceptionCodeToHTTPStatus (src/Server/HTTPHandler.cpp), by error name.
_STATUS_BY_NAME = {}
for _n in ("CANNOT_PARSE_TEXT CANNOT_PARSE_ESCAPE_SEQUENCE CANNOT_PARSE_QUOTED_STRING CANNOT_PARSE_DATE "
           "CANNOT_PARSE_DATETIME CANNOT_PARSE_NUMBER CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING CANNOT_PARSE_IPV4 "
           "CANNOT_PARSE_IPV6 CANNOT_PARSE_INPUT_ASSERTION_FAILED CANNOT_PARSE_UUID CANNOT_PARSE_BOOL "
           "DUPLICATE_COLUMN ILLEGAL_COLUMN UNKNOWN_ELEMENT_IN_AST UNKNOWN_TYPE_OF_AST_NODE TOO_DEEP_AST "
           "TOO_BIG_AST UNEXPECTED_AST_STRUCTURE SYNTAX_ERROR INCORRECT_DATA TYPE_MISMATCH "
           "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE").split():
    _STATUS_BY_NAME[_n] = 400
for _n in ("UNKNOWN_TABLE UNKNOWN_FUNCTION UNKNOWN_IDENTIFIER UNKNOWN_TYPE UNKNOWN_STORAGE UNKNOWN_DATABASE "
           "UNKNOWN_SETTING UNKNOWN_DIRECTION_OF_SORTING UNKNOWN_AGGREGATE_FUNCTION UNKNOWN_FORMAT "
           "UNKNOWN_DATABASE_ENGINE UNKNOWN_TYPE_OF_QUERY UNKNOWN_ROLE").split():
    _STATUS_BY_NAME[_n] = 404
_STATUS_BY_NAME.update({
    "REQUIRED_PASSWORD": 401, "UNKNOWN_USER": 403, "WRONG_PASSWORD": 403, "AUTHENTICATION_FAILED": 403,
    "ACCESS_DENIED": 403, "QUERY_IS_TOO_LARGE": 413, "NOT_IMPLEMENTED": 501, "SOCKET_TIMEOUT": 503,
    "CANNOT_OPEN_FILE": 503, "HTTP_LENGTH_REQUIRED": 411, "TIMEOUT_EXCEEDED": 408,
})

# Filled from the engine at start-up (errorCodeToName); these are the ones this file raises itself.
ERROR_NAMES = {
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED", 40: "CHECKSUM_DOESNT_MATCH", 48: "NOT_IMPLEMENTED",
    62: "SYNTAX_ERROR", 73: "UNKNOWN_FORMAT", 89: "UNKNOWN_COMPRESSION_METHOD", 115: "UNKNOWN_SETTING",
    164: "READONLY", 210: "NETWORK_ERROR", 271: "CANNOT_DECOMPRESS", 369: "QUERY_IS_TOO_LARGE",
    394: "QUERY_WAS_CANCELLED", 1001: "STD_EXCEPTION",
}
ERROR_CODES = {v: k for k, v in ERROR_NAMES.items()}


def ch_error_from_exception(exc):
    """Turns a chdb exception (or anything else) into a CHError, parsing `Code: N. DB::Exception: ...`."""
    if isinstance(exc, CHError):
        exc.message = exc.message.rstrip(". ")
        return exc
    text = str(exc)
    m = _CODE_RE.search(text)
    if not m:
        return CHError(1001, f"std::exception. {type(exc).__name__}: {text}", "STD_EXCEPTION")
    code = int(m.group(1))
    msg = _VERSION_SUFFIX_RE.sub("", m.group(2).strip())
    nm = _NAME_RE.search(msg)
    name = nm.group(1) if nm else ERROR_NAMES.get(code)
    if nm:
        msg = msg[: nm.start()].rstrip()
    msg = msg.rstrip(". ")
    return CHError(code, msg, name)


def error_name(err):
    return err.name or ERROR_NAMES.get(err.code, "UNKNOWN_EXCEPTION")


def http_status(err):
    return _STATUS_BY_NAME.get(error_name(err), 500)


# ---------------------------------------------------------------------------------------------------------------
# A small SQL lexer: enough to split INSERT ... FORMAT X / VALUES from its data, find a trailing FORMAT clause,
# the first keyword, and reject multi-statements.  Works on str; callers decode bytes as latin-1 so that string
# indices are byte offsets.

_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_NUM_RE = re.compile(r"[0-9][0-9A-Za-z_.]*")


class Incomplete(Exception):
    """The text ended inside a string literal or comment."""


def lex(s, pos=0):
    """Yields (kind, text, start, end, depth) for tokens; kind in word, str, punct, semi."""
    n = len(s)
    depth = 0
    i = pos
    while i < n:
        c = s[i]
        if c in " \t\r\n\f\v":
            i += 1
            continue
        if c == "-" and s.startswith("--", i) or c == "#" and (i + 1 >= n or s[i + 1] in " !"):
            j = s.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "/" and s.startswith("/*", i):
            level, j = 1, i + 2
            while level:
                a, b = s.find("/*", j), s.find("*/", j)
                if b < 0:
                    raise Incomplete()
                if 0 <= a < b:
                    level, j = level + 1, a + 2
                else:
                    level, j = level - 1, b + 2
            i = j
            continue
        if c in "'\"`":
            j = i + 1
            while True:
                if j >= n:
                    raise Incomplete()
                ch = s[j]
                if ch == "\\":
                    j += 2
                    continue
                if ch == c:
                    if j + 1 < n and s[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            yield ("str" if c == "'" else "word", s[i:j + 1], i, j + 1, depth)
            i = j + 1
            continue
        m = _WORD_RE.match(s, i)
        if m:
            yield ("word", m.group(0), i, m.end(), depth)
            i = m.end()
            continue
        m = _NUM_RE.match(s, i)
        if m:
            yield ("num", m.group(0), i, m.end(), depth)
            i = m.end()
            continue
        if c in "([{":
            yield ("punct", c, i, i + 1, depth)
            depth += 1
        elif c in ")]}":
            depth = max(0, depth - 1)
            yield ("punct", c, i, i + 1, depth)
        elif c == ";":
            yield ("semi", c, i, i + 1, depth)
        else:
            yield ("punct", c, i, i + 1, depth)
        i += 1


def first_keyword(sql):
    try:
        for kind, text, *_ in lex(sql):
            if kind == "word":
                return text.upper()
            if text == "(":
                continue
            return ""
    except Incomplete:
        pass
    return ""


def analyze_query(sql):
    """For a non-INSERT-with-data statement: (output format from a FORMAT clause or None, multi_statement)."""
    fmt = None
    prev = None
    after_semi = False
    try:
        for kind, text, _s, _e, depth in lex(sql):
            if after_semi:
                return fmt, True
            if kind == "semi" and depth == 0:
                after_semi = True
                continue
            if depth == 0 and prev is not None and prev[0] == "word" and prev[1].upper() == "FORMAT" \
                    and kind == "word":
                fmt = text.strip("`\"")
            prev = (kind, text)
    except Incomplete:
        pass
    return fmt, False


def split_insert(text):
    """For `INSERT ... FORMAT X <data>` or `INSERT ... VALUES <data>` returns (prefix, format, data_offset).

    Returns None when the statement is an INSERT without inline data (INSERT ... SELECT), raises Incomplete when
    the text ends before the data starts.  `text` is the statement (latin-1 decoded bytes)."""
    prev_word = ""
    toks = lex(text)
    for kind, tok, start, end, depth in toks:
        if depth != 0 or kind != "word":
            prev_word = "." if kind == "punct" and tok == "." and prev_word == "TABLENAME" else ""
            continue
        up = tok.upper()
        if prev_word in ("INTO", "TABLE", "FUNCTION", "."):
            prev_word = "TABLENAME"
            continue
        if up == "FORMAT":
            for kind2, tok2, _s2, end2, _d in toks:
                if kind2 != "word":
                    raise CHError(62, f"Syntax error: expected format name after FORMAT, got {tok2!r}")
                i, n = end2, len(text)
                while i < n and text[i] in " \t\f":
                    i += 1
                if i < n and text[i] == "\r":
                    i += 1
                if i < n and text[i] == "\n":
                    i += 1
                return text[:start].rstrip(), tok2.strip("`\""), i
            raise Incomplete()
        if up == "VALUES":
            return text[:start].rstrip(), "Values", end
        if up in ("SELECT", "WITH"):
            return None
        prev_word = up
    raise Incomplete()


def quote_ident(name):
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_str(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ---------------------------------------------------------------------------------------------------------------
# Request bodies

MAX_QUERY_BYTES = 64 << 20        # a statement (not INSERT data) read from the body
INSERT_HEAD_BYTES = 1 << 20       # where `INSERT ... FORMAT X` must end when the whole request is in the body
SPOOL_MEMORY_BYTES = 16 << 20     # request data kept in memory before spilling to a temporary file
READ_CHUNK = 1 << 20


def raw_body_chunks(rfile, headers):
    """Yields the request body (Content-Length or chunked) in pieces; raises ClientGone if it is cut short."""
    te = (headers.get("Transfer-Encoding") or "").lower()
    if "chunked" in te:
        while True:
            line = rfile.readline(65537)
            if not line.endswith(b"\n"):
                raise ClientGone("connection closed inside a chunked body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise CHError(27, "Cannot parse chunk size in chunked request body") from None
            if size == 0:
                while True:  # trailers
                    t = rfile.readline(65537)
                    if not t.endswith(b"\n"):
                        raise ClientGone("connection closed inside chunked trailers")
                    if t in (b"\r\n", b"\n"):
                        return
            while size > 0:
                data = rfile.read(min(size, READ_CHUNK))
                if not data:
                    raise ClientGone("connection closed inside a chunk")
                size -= len(data)
                yield data
            if rfile.readline(3) not in (b"\r\n", b"\n"):
                raise CHError(27, "Malformed chunked request body")
        return
    length = headers.get("Content-Length")
    if length is None:
        return
    try:
        remaining = int(length)
    except ValueError:
        raise CHError(27, f"Cannot parse Content-Length {length!r}") from None
    while remaining > 0:
        data = rfile.read(min(remaining, READ_CHUNK))
        if not data:
            raise ClientGone("connection closed inside the request body")
        remaining -= len(data)
        yield data


def content_decoded(chunks, encoding):
    """Applies the request's Content-Encoding (gzip, deflate, lz4 frame, identity)."""
    enc = (encoding or "").strip().lower()
    if enc in ("", "identity", "none"):
        yield from chunks
        return
    if enc in ("gzip", "x-gzip", "deflate"):
        d = zlib.decompressobj(47 if enc != "deflate" else 15)
        try:
            for c in chunks:
                out = d.decompress(c)
                if out:
                    yield out
            out = d.flush()
        except zlib.error as e:
            raise CHError(271, f"Cannot decompress {enc} request body: {e}") from None
        if out:
            yield out
        return
    if enc == "lz4":
        d = lz4.frame.LZ4FrameDecompressor()
        try:
            for c in chunks:
                while c:
                    out = d.decompress(c)
                    if out:
                        yield out
                    c = d.unused_data if d.eof else b""
                    if d.eof:
                        d = lz4.frame.LZ4FrameDecompressor()
        except RuntimeError as e:
            raise CHError(271, f"Cannot decompress lz4 request body: {e}") from None
        return
    raise CHError(89, f"Unknown Content-Encoding of HTTP request: {encoding}")


def native_decompressed(chunks, verify_checksums):
    """Decodes ClickHouse's compressed-block framing (`decompress=1`): per block a 16-byte CityHash128 of the
    rest, 1-byte method (0x82 LZ4, 0x02 none), u32 compressed size including the 9-byte header, u32 uncompressed
    size, then the payload."""
    buf = bytearray()
    for c in chunks:
        buf += c
        pos = 0
        while len(buf) - pos >= 25:
            method = buf[pos + 16]
            csize, usize = struct.unpack_from("<II", buf, pos + 17)
            if csize < 9 or csize > 0x40000000 or usize > 0x40000000:
                raise CHError(271, f"Too large or invalid size of compressed block: {csize} compressed, "
                                   f"{usize} uncompressed (method 0x{method:02x})")
            end = pos + 16 + csize
            if len(buf) < end:
                break
            block = memoryview(buf)[pos + 16:end]
            if verify_checksums and bytes(buf[pos:pos + 16]) != cityhash128_bytes(block):
                block.release()
                raise CHError(40, "Checksum doesn't match: corrupted data. Reference: "
                                  f"{bytes(buf[pos:pos + 16]).hex()}, actual: {cityhash128_bytes(buf[pos + 16:end]).hex()}")
            try:
                if method == 0x82:
                    out = lz4.block.decompress(block[9:], uncompressed_size=usize)
                elif method == 0x02:
                    out = bytes(block[9:])
                elif method == 0x90:
                    raise CHError(89, "ZSTD compressed blocks are not supported by the dev server; use LZ4")
                else:
                    raise CHError(89, f"Unknown compression method: 0x{method:02x}")
            except lz4.block.LZ4BlockError as e:
                raise CHError(271, f"Cannot decompress LZ4 block: {e}") from None
            finally:
                block.release()
            if len(out) != usize:
                raise CHError(271, f"Decompressed block has {len(out)} bytes, header says {usize}")
            pos = end
            if out:
                yield out
        if pos:
            del buf[:pos]
    if buf:
        raise CHError(271, f"Truncated compressed block at the end of the request body ({len(buf)} bytes left)")


class Spool:
    """Request data kept in memory up to SPOOL_MEMORY_BYTES, then in a temporary file."""

    def __init__(self, tmpdir):
        self.f = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES, dir=tmpdir)
        self.size = 0

    def write(self, data):
        self.f.write(data)
        self.size += len(data)

    def chunks(self):
        self.f.seek(0)
        while True:
            data = self.f.read(READ_CHUNK)
            if not data:
                return
            yield data

    def close(self):
        self.f.close()


# ---------------------------------------------------------------------------------------------------------------
# Response encodings

def native_compress_block(data):
    payload = lz4.block.compress(data, store_size=False)
    header = struct.pack("<BII", 0x82, 9 + len(payload), len(data))
    body = header + payload
    return cityhash128_bytes(body) + body


class Encoder:
    """Response body encoding: HTTP Content-Encoding (lz4 frame, gzip, deflate) and/or `compress=1`."""

    def __init__(self, content_encoding, native):
        self.content_encoding = content_encoding
        self.native = native
        if content_encoding == "lz4":
            self.c = lz4.frame.LZ4FrameCompressor(block_size=lz4.frame.BLOCKSIZE_MAX1MB)
            self.started = False
        elif content_encoding in ("gzip", "deflate"):
            self.c = zlib.compressobj(1, zlib.DEFLATED, 31 if content_encoding == "gzip" else 15)
        else:
            self.c = None

    def _ce(self, data, final=False):
        if self.c is None:
            return data
        if self.content_encoding == "lz4":
            out = b""
            if not self.started:
                out, self.started = self.c.begin(), True
            if data:
                out += self.c.compress(data)
            if final:
                out += self.c.flush()
            return out
        out = self.c.compress(data) if data else b""
        if final:
            out += self.c.flush()
        return out

    def encode(self, data):
        if self.native and data:
            data = b"".join(native_compress_block(data[i:i + (1 << 20)]) for i in range(0, len(data), 1 << 20))
        return self._ce(data)

    def finish(self):
        return self._ce(b"", final=True) if self.c is not None else b""


def pick_content_encoding(accept):
    """The first supported coding the client accepts: lz4, gzip, deflate (zstd and br are not available)."""
    if not accept:
        return None
    offered = []
    for part in accept.split(","):
        bits = part.strip().split(";")
        name = bits[0].strip().lower()
        q = 1.0
        for b in bits[1:]:
            b = b.strip()
            if b.startswith("q="):
                try:
                    q = float(b[2:])
                except ValueError:
                    q = 0.0
        if q > 0:
            offered.append(name)
    for name in offered:
        if name in ("lz4", "gzip", "deflate"):
            return name
    return None


CONTENT_TYPES = [
    (re.compile(r"^(TabSeparated|TSV)", re.I), "text/tab-separated-values; charset=UTF-8"),
    (re.compile(r"^CSV", re.I), "text/csv; charset=UTF-8; header=absent"),
    (re.compile(r"^(JSON|NDJSON|JSONL)", re.I), "application/json; charset=UTF-8"),
    (re.compile(r"^(Pretty|Vertical|Markdown|Values|Raw|LineAsString|Template|Null)", re.I),
     "text/plain; charset=UTF-8"),
    (re.compile(r"^(XML)", re.I), "application/xml; charset=UTF-8"),
]


def content_type_for(fmt):
    for rx, ct in CONTENT_TYPES:
        if rx.match(fmt or ""):
            return ct
    return "application/octet-stream"


# ---------------------------------------------------------------------------------------------------------------
# Request parameters

# URL/form parameters the server handles itself (or ignores); everything else that is not param_* is a setting.
CONTROL_PARAMS = {
    "query", "database", "default_format", "compress", "decompress", "wait_end_of_query", "query_id",
    "session_id", "session_timeout", "session_check", "user", "password", "quota_key", "buffer_size", "role",
    "client_protocol_version", "stacktrace", "enable_http_compression", "http_zlib_compression_level",
    "http_native_compression_disable_checksumming_on_decompress", "http_headers_progress_interval_ms",
    "send_progress_in_http_headers", "http_response_buffer_size", "http_wait_end_of_query",
    "add_http_cors_header", "cancel_http_readonly_queries_on_client_close", "http_write_exception_in_output_format",
    "http_response_headers", "max_query_size", "readonly", "http_max_field_value_size", "http_max_field_name_size",
    "http_max_fields", "http_max_uri_size", "http_receive_timeout", "http_send_timeout", "log_queries",
    "log_comment", "opentelemetry_start_trace_probability", "async_insert_busy_timeout_ms",
}
_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_multipart(body, content_type):
    """Parses a multipart/form-data body into [(name, value)] (values decoded as UTF-8)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise CHError(27, "multipart/form-data without a boundary")
    delim = b"--" + m.group(1).encode("latin-1")
    fields = []
    parts = body.split(delim)
    for part in parts[1:]:
        if part.startswith(b"--"):
            break
        if part.startswith(b"\r\n"):
            part = part[2:]
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        if value.endswith(b"\r\n"):
            value = value[:-2]
        name = None
        filename = None
        for line in head.split(b"\r\n"):
            k, _, v = line.decode("latin-1").partition(":")
            if k.strip().lower() == "content-disposition":
                for item in v.split(";"):
                    ik, _, iv = item.strip().partition("=")
                    if ik == "name":
                        name = iv.strip('"')
                    elif ik == "filename":
                        filename = iv.strip('"')
        if filename is not None:
            raise CHError(48, "External tables (files in multipart/form-data) are not supported by the dev server")
        if name is not None:
            fields.append((name, value.decode("utf-8", "replace")))
    return fields


# ---------------------------------------------------------------------------------------------------------------
# The engine

class Engine:
    def __init__(self, data_dir, verify_checksums=False):
        self.data_dir = os.path.abspath(data_dir)
        os.makedirs(self.data_dir, exist_ok=True)
        self.tmpdir = os.path.join(self.data_dir, "devserver_tmp")
        os.makedirs(self.tmpdir, exist_ok=True)
        self.verify_checksums = verify_checksums
        self.lock = threading.Lock()
        self.closed = False
        try:
            self.conn = chdb.connect(self.data_dir)
        except Exception as e:
            raise SystemExit(f"cannot open the chdb data directory {self.data_dir}: {e}\n"
                             "(is another dev server or chdb process using it?)")
        self.raw = self.conn._conn  # the pybind connection: raw streaming API without chdb's 0-row end check
        self.version = self._scalar("SELECT version()")
        self.timezone = self._scalar("SELECT timezone()")
        self.default_database = self._scalar("SELECT currentDatabase()")
        self.baseline = self._changed_settings()
        self.http_compression = self._scalar("SELECT getSetting('enable_http_compression')") in ("1", "true")
        names = self.raw.query("SELECT number, errorCodeToName(number) FROM numbers(4000) "
                               "WHERE errorCodeToName(number) != ''", "TabSeparated").bytes().decode()
        for line in names.splitlines():
            code, name = line.split("\t")
            ERROR_NAMES[int(code)] = name
            ERROR_CODES[name] = int(code)

    def _scalar(self, sql):
        return self.raw.query(sql, "TabSeparatedRaw").bytes().decode().strip()

    def _changed_settings(self):
        out = self.raw.query("SELECT name, value FROM system.settings WHERE changed", "JSONCompactEachRow").bytes()
        return {k: v for k, v in (json.loads(l) for l in out.decode().splitlines() if l)}

    def exec(self, sql):
        """Runs a statement whose output is not needed (under the lock)."""
        try:
            self.raw.query(sql, "TabSeparated")
        except Exception as e:
            raise ch_error_from_exception(e) from None

    def apply(self, database, settings):
        """Applies per-request state; returns the names to restore (call under the lock)."""
        touched = []
        try:
            if database:
                touched.append("database")
                self.exec(f"USE {quote_ident(database)}")
            for k, v in settings:
                if not _SETTING_NAME_RE.match(k):
                    raise CHError(115, f"Unknown setting '{k}'", "UNKNOWN_SETTING")
                touched.append(k)
                self.exec(f"SET {k} = {quote_str(v)}")
        except BaseException:
            self.restore(touched, full=False)
            raise
        return touched

    def restore(self, names, full):
        """Puts settings back to the start-up state (call under the lock)."""
        try:
            if full:
                now = self._changed_settings()
                names = [k for k, v in now.items() if self.baseline.get(k) != v]
                names += [k for k in self.baseline if k not in now]
            for k in dict.fromkeys(names):
                if k in self.baseline:
                    self.exec(f"SET {k} = {quote_str(self.baseline[k])}")
                else:
                    self.exec(f"SET {k} = DEFAULT")
        except Exception as e:
            log(f"warning: could not reset per-request settings {names}: {e}")
            if not full:
                self.restore([], full=True)

    def close(self):
        if self.lock.acquire(timeout=30):
            try:
                if not self.closed:
                    self.closed = True
                    self.conn.close()
            finally:
                self.lock.release()
        else:
            log("warning: a query is still running after 30 s; closing chdb anyway")
            self.closed = True
            self.conn.close()


def log(msg):
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} devserver: {msg}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------------------------------
# HTTP

STREAMABLE = ("SELECT", "WITH")

# chdb's streaming API formats every chunk as a complete output (prefix, rows, suffix).  Chunks can be
# concatenated as they are only for formats without prefix and suffix; for the WithNames[AndTypes] variants the
# repeated header is cut from every chunk but the first; all other formats (JSON, Pretty, Parquet, ...) are
# produced in one piece.
_PLAIN_STREAM_FORMATS = {f.lower() for f in (
    "RowBinary", "TabSeparated", "TSV", "TabSeparatedRaw", "TSVRaw", "Raw", "CSV", "JSONEachRow", "JSONLines",
    "NDJSON", "JSONStringsEachRow", "JSONCompactEachRow", "JSONCompactStringsEachRow", "LineAsString", "Native",
    "Null", "CustomSeparated")}
_HEADER_STREAM_FORMATS = {}
for _base, _kind in (("RowBinary", "binary"), ("TabSeparated", "text"), ("TSV", "text"), ("TabSeparatedRaw", "text"),
                     ("TSVRaw", "text"), ("CSV", "csv"), ("JSONCompactEachRow", "text"),
                     ("JSONCompactStringsEachRow", "text")):
    _HEADER_STREAM_FORMATS[(_base + "WithNames").lower()] = (_kind, 1)
    _HEADER_STREAM_FORMATS[(_base + "WithNamesAndTypes").lower()] = (_kind, 2)


def _read_varint(b, i):
    shift = result = 0
    while True:
        if i >= len(b):
            raise IndexError
        byte = b[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def stream_header_length(fmt, chunk):
    """Length of the header (names, types) at the start of a chunk in a WithNames[AndTypes] format."""
    kind, parts = _HEADER_STREAM_FORMATS[fmt.lower()]
    if kind == "binary":
        n, i = _read_varint(chunk, 0)
        for _ in range(n * parts):
            ln, i = _read_varint(chunk, i)
            i += ln
        if i > len(chunk):
            raise IndexError
        return i
    i = 0
    for _ in range(parts):
        quoted = False
        while True:
            if i >= len(chunk):
                raise IndexError
            c = chunk[i]
            i += 1
            if kind == "csv" and c == 0x22:
                quoted = not quoted
            elif c == 0x0A and not quoted:
                break
    return i
BUFFER_BEFORE_HEADERS = 1 << 20


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClickHouse-chdb-devserver"
    sys_version = ""
    timeout = 300  # per socket operation; a stalled client cannot hold the engine lock forever

    engine: Engine = None  # set by make_server
    quiet = True

    def log_message(self, fmt, *args):
        if not self.quiet:
            log("%s %s" % (self.address_string(), fmt % args))

    # --- plumbing -------------------------------------------------------------------------------------------

    def _send_simple(self, status, body, ctype="text/plain; charset=UTF-8", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, err, query_id):
        name = error_name(err)
        text = f"Code: {err.code}. DB::Exception: {err.message}. ({name}) " \
               f"(version {self.engine.version} ({SERVER_NAME}))\n"
        self._send_simple(http_status(err), text.encode("utf-8", "replace"), extra=[
            ("X-ClickHouse-Exception-Code", str(err.code)),
            ("X-ClickHouse-Query-Id", query_id),
            ("X-ClickHouse-Server-Display-Name", socket.gethostname()),
        ])

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_OPTIONS(self):
        self._send_simple(204, b"", extra=[("Access-Control-Allow-Origin", "*"),
                                            ("Access-Control-Allow-Headers", "*"),
                                            ("Access-Control-Allow-Methods", "GET, POST, OPTIONS")])

    def _handle(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        params = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        query_id = next((v for k, v in params if k == "query_id" and v), None) \
            or self.headers.get("X-ClickHouse-Query-Id") or str(uuid.uuid4())
        body_consumed = False
        if not self.quiet:
            hdrs = " ".join(f"{k}={self.headers[k]!r}" for k in ("Accept-Encoding", "Content-Type", "Content-Encoding",
                                                                   "Transfer-Encoding", "Content-Length")
                            if self.headers.get(k) is not None)
            log(f"{self.command} {urllib.parse.unquote_plus(self.path)[:400]} {hdrs}")
        try:
            if path in ("/ping", "/replicas_status"):
                self._drain_body()
                body_consumed = True
                self._send_simple(200, b"Ok.\n")
                return
            if path != "/":
                self._drain_body()
                body_consumed = True
                self._send_simple(404, f"There is no handle {url.path}\n\nUse / or /ping.\n".encode())
                return
            body_consumed = self._handle_query(params, query_id)
        except ClientGone as e:
            self.close_connection = True
            self.log_message("client gone: %s", e)
        except (BrokenPipeError, ConnectionResetError, socket.timeout, TimeoutError) as e:
            self.close_connection = True
            self.log_message("connection error: %s", e)
        except Exception as e:  # noqa: BLE001 - every failure becomes a ClickHouse-style error
            err = ch_error_from_exception(e)
            if not isinstance(e, CHError) and err.code == 1001:
                log("internal error:\n" + traceback.format_exc())
            if getattr(self, "_headers_sent", False):
                self.close_connection = True
                return
            self.close_connection = True  # the request body may be partly unread
            try:
                self._send_error(err, query_id)
            except OSError:
                pass
        finally:
            self._headers_sent = False

    def _drain_body(self):
        for _ in raw_body_chunks(self.rfile, self.headers):
            pass

    # --- the query endpoint -------------------------------------------------------------------------------

    def _handle_query(self, url_params, query_id):
        eng = self.engine
        self._headers_sent = False
        h = self.headers
        ctype = (h.get("Content-Type") or "").lower()
        body_chunks = raw_body_chunks(self.rfile, h)
        params = list(url_params)
        if ctype.startswith("multipart/form-data"):
            body = bytearray()
            for c in body_chunks:
                body += c
                if len(body) > MAX_QUERY_BYTES:
                    raise CHError(369, "multipart/form-data body is too large")
            params += parse_multipart(bytes(body), h.get("Content-Type"))
            body_chunks = iter(())

        control = {}
        settings = {}
        qparams = {}
        query_parts = []
        for k, v in params:
            if k.startswith("param_"):
                qparams[k[6:]] = v
            elif k == "query":
                query_parts.append(v)
            elif k in CONTROL_PARAMS:
                control[k] = v
            else:
                settings[k] = v
        database = control.get("database") or h.get("X-ClickHouse-Database") or ""
        default_format = control.get("default_format") or h.get("X-ClickHouse-Format") or "TabSeparated"
        decompress = control.get("decompress", "0") not in ("0", "", "false")
        compress = control.get("compress", "0") not in ("0", "", "false")
        wait_end = control.get("wait_end_of_query", "0") not in ("0", "", "false")
        if compress and control.get("enable_http_compression") not in (None, "1", "true"):
            compress = False
        http_comp = eng.http_compression
        if control.get("enable_http_compression") is not None:
            http_comp = control["enable_http_compression"] in ("1", "true")
        content_encoding = pick_content_encoding(h.get("Accept-Encoding")) if http_comp else None

        data = content_decoded(body_chunks, h.get("Content-Encoding"))
        if decompress:
            data = native_decompressed(data, eng.verify_checksums)

        query_text = "\n".join(query_parts)
        if query_text:
            # ClickHouse concatenates `query` + "\n" + body; for INSERT the newline separates query and data.
            query_bytes = query_text.encode("utf-8") + b"\n"
        else:
            # The statement is in the body; read enough of it to find where INSERT data starts.
            head = bytearray()
            for c in data:
                head += c
                if len(head) >= INSERT_HEAD_BYTES:
                    break
            query_bytes = bytes(head)

        text = query_bytes.decode("latin-1")
        kw = first_keyword(text)
        if not text.strip():
            if self.command in ("GET", "HEAD") and not qparams:
                self._send_simple(200, b"Ok.\n")
                return True
            raise CHError(62, "Empty query", "SYNTAX_ERROR")

        insert = None
        if kw == "INSERT":
            try:
                insert = split_insert(text)
            except Incomplete:
                raise CHError(62, "Syntax error: INSERT query is incomplete: no FORMAT or VALUES with data "
                                  f"found in the first {INSERT_HEAD_BYTES} bytes", "SYNTAX_ERROR") from None

        if insert is not None:
            prefix, fmt, offset = insert
            spool = Spool(eng.tmpdir)
            try:
                inline = query_bytes[offset:]
                if inline:
                    spool.write(inline)
                for c in data:
                    spool.write(c)
                self._run_insert(prefix.encode("latin-1").decode("utf-8", "replace"), fmt, spool, database,
                                 settings, qparams, query_id, content_encoding, compress)
            finally:
                spool.close()
            return True

        # Not an INSERT with data: the whole body is part of the statement.
        query_bytes = bytearray(query_bytes)
        for c in data:
            query_bytes += c
            if len(query_bytes) > MAX_QUERY_BYTES:
                raise CHError(369, f"Query is too large (more than {MAX_QUERY_BYTES} bytes)", "QUERY_IS_TOO_LARGE")
        sql = bytes(query_bytes).decode("utf-8", "replace").strip()
        if not sql:
            raise CHError(62, "Empty query", "SYNTAX_ERROR")
        fmt_clause, multi = analyze_query(sql)
        if multi:
            raise CHError(62, "Syntax error: Multi-statements are not allowed", "SYNTAX_ERROR")
        kw = first_keyword(sql)
        if kw == "SET" and re.search(r"\breadonly\b", sql, re.I):
            raise CHError(164, "Changing `readonly` with SET is not supported by the dev server "
                               "(it would lock the shared engine)", "READONLY")
        self._run_query(sql, kw, fmt_clause or default_format, default_format, database, settings, qparams,
                        query_id, content_encoding, compress, wait_end)
        return True

    # --- execution -----------------------------------------------------------------------------------------

    def _headers(self, status, fmt, query_id, summary, content_encoding, length=None, ctype=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype or content_type_for(fmt))
        self.send_header("X-ClickHouse-Server-Display-Name", socket.gethostname())
        self.send_header("X-ClickHouse-Query-Id", query_id)
        self.send_header("X-ClickHouse-Format", fmt)
        self.send_header("X-ClickHouse-Timezone", self.engine.timezone)
        self.send_header("X-ClickHouse-Summary", json.dumps({k: str(v) for k, v in summary.items()},
                                                            separators=(",", ":")))
        if content_encoding:
            self.send_header("Content-Encoding", content_encoding)
        if length is not None:
            self.send_header("Content-Length", str(length))
        elif self.request_version == "HTTP/1.1":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        else:
            self.send_header("Keep-Alive", f"timeout={self.timeout}")
        self.end_headers()
        self._headers_sent = True

    def _run_insert(self, prefix, fmt, spool, database, settings, qparams, query_id, content_encoding, compress):
        eng = self.engine
        t0 = time.monotonic()
        with eng.lock:
            if eng.closed:
                raise CHError(394, "The server is shutting down", "QUERY_WAS_CANCELLED")
            touched = eng.apply(database, settings.items())
            try:
                if qparams:
                    log("warning: query parameters are ignored for INSERT ... FORMAT")
                try:
                    ins = eng.raw.send_insert(prefix, fmt)
                except Exception as e:
                    raise ch_error_from_exception(e) from None
                finished = False
                try:
                    for c in spool.chunks():
                        eng.raw.insert_append(ins, c)
                    res = eng.raw.insert_done(ins)
                    finished = True
                except Exception as e:
                    raise ch_error_from_exception(e) from None
                finally:
                    if not finished:
                        try:
                            eng.raw.insert_cancel(ins)
                        except Exception:
                            pass
            finally:
                eng.restore(touched, full=False)
        elapsed = time.monotonic() - t0
        summary = {"read_rows": 0, "read_bytes": 0, "written_rows": res.rows_written(),
                   "written_bytes": res.bytes_written(), "total_rows_to_read": 0, "result_rows": res.rows_written(),
                   "result_bytes": res.bytes_written(), "elapsed_ns": int(elapsed * 1e9)}
        self._headers(200, fmt, query_id, summary, None, length=0, ctype="text/plain; charset=UTF-8")

    def _run_query(self, sql, kw, fmt, default_format, database, settings, qparams, query_id, content_encoding,
                   compress, wait_end):
        eng = self.engine
        t0 = time.monotonic()
        enc = Encoder(content_encoding, compress)
        with eng.lock:
            if eng.closed:
                raise CHError(394, "The server is shutting down", "QUERY_WAS_CANCELLED")
            touched = eng.apply(database, settings.items())
            full_restore = kw in ("SET", "USE")
            try:
                low = fmt.lower()
                if kw in STREAMABLE and (low in _PLAIN_STREAM_FORMATS or low in _HEADER_STREAM_FORMATS):
                    try:
                        handle = eng.raw.send_query(sql, default_format, params=qparams)
                    except Exception as e:
                        err = ch_error_from_exception(e)
                        if err.code == 36 and "Streaming query is not supported" in err.message:
                            handle = None
                        else:
                            raise err from None
                else:
                    handle = None
                if handle is None:
                    try:
                        res = eng.raw.query(sql, default_format, params=qparams)
                    except Exception as e:
                        raise ch_error_from_exception(e) from None
                    out = res.bytes()
                    summary = self._summary(res.rows_read(), res.bytes_read(), res.rows_read(), len(out), t0)
                    body = enc.encode(out) + enc.finish()
                    self._headers(200, fmt, query_id, summary, content_encoding, length=len(body))
                    if self.command != "HEAD":
                        self.wfile.write(body)
                    return
                self._stream(handle, fmt, query_id, enc, content_encoding, t0, wait_end)
            finally:
                eng.restore(touched, full=full_restore)

    @staticmethod
    def _summary(rows, nbytes, result_rows, result_bytes, t0):
        return {"read_rows": rows, "read_bytes": nbytes, "written_rows": 0, "written_bytes": 0,
                "total_rows_to_read": rows, "result_rows": result_rows, "result_bytes": result_bytes,
                "elapsed_ns": int((time.monotonic() - t0) * 1e9)}

    def _stream(self, handle, fmt, query_id, enc, content_encoding, t0, wait_end):
        eng = self.engine
        done = False
        rows = 0
        nbytes = 0
        buffered = []
        buffered_len = 0
        spool = None
        header_fmt = fmt if fmt.lower() in _HEADER_STREAM_FORMATS else None
        header = None

        def dedup_header(chunk):
            # Every chunk repeats the header; keep the first one only.
            nonlocal header
            if header_fmt is None or not chunk:
                return chunk
            try:
                n = stream_header_length(header_fmt, chunk)
            except IndexError:
                raise CHError(1001, f"cannot find the {header_fmt} header in a result chunk") from None
            if header is None:
                header = chunk[:n]
                return chunk
            if chunk[:n] != header:
                raise CHError(1001, f"result chunk starts with a different {header_fmt} header")
            return chunk[n:]

        try:
            # Buffer the start of the result so that early errors get a proper status and small results a
            # Content-Length; with wait_end_of_query=1 buffer everything (spilling to disk).
            while True:
                try:
                    r = eng.raw.streaming_fetch_result(handle)
                except Exception as e:
                    done = True  # the engine ended the stream
                    raise ch_error_from_exception(e) from None
                if r is None:
                    done = True
                    break
                chunk = r.bytes()
                rows += r.rows_read()
                if not chunk and r.rows_read() == 0:
                    done = True
                    break
                chunk = dedup_header(chunk)
                nbytes += len(chunk)
                if wait_end:
                    if spool is None:
                        spool = Spool(eng.tmpdir)
                    spool.write(chunk)
                    continue
                buffered.append(chunk)
                buffered_len += len(chunk)
                if buffered_len >= BUFFER_BEFORE_HEADERS:
                    break
            summary = self._summary(rows, nbytes, rows, nbytes, t0)
            if done:
                if spool is not None:
                    if enc.c is None and not enc.native:
                        self._headers(200, fmt, query_id, summary, content_encoding, length=spool.size)
                        if self.command != "HEAD":
                            for c in spool.chunks():
                                self.wfile.write(c)
                        return
                    buffered = spool.chunks()
                body = b"".join(enc.encode(c) for c in buffered) + enc.finish()
                self._headers(200, fmt, query_id, summary, content_encoding, length=len(body))
                if self.command != "HEAD":
                    self.wfile.write(body)
                return
            # A large result: chunked transfer encoding from here on.
            self._headers(200, fmt, query_id, summary, content_encoding)
            if self.command == "HEAD":
                return
            chunked = self.request_version == "HTTP/1.1"

            def send(data):
                if not data:
                    return
                if chunked:
                    self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
                else:
                    self.wfile.write(data)

            for c in buffered:
                send(enc.encode(c))
            buffered = None
            while True:
                try:
                    r = eng.raw.streaming_fetch_result(handle)
                except Exception as e:
                    done = True
                    err = ch_error_from_exception(e)
                    # As ClickHouse: the exception text ends the body, and the body is cut (no last chunk).
                    text = f"\nCode: {err.code}. DB::Exception: {err.message}. ({error_name(err)}) " \
                           f"(version {eng.version} ({SERVER_NAME}))\n"
                    try:
                        send(enc.encode(text.encode("utf-8", "replace")) + enc.finish())
                        self.wfile.flush()
                    except OSError:
                        pass
                    self.close_connection = True
                    log(f"query {query_id} failed while streaming: {err.message}")
                    return
                if r is None:
                    done = True
                    break
                chunk = r.bytes()
                if not chunk and r.rows_read() == 0:
                    done = True
                    break
                send(enc.encode(dedup_header(chunk)))
            send(enc.finish())
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            if spool is not None:
                spool.close()
            if not done:
                try:
                    eng.raw.streaming_cancel_query(handle)
                except Exception as e:  # noqa: BLE001
                    log(f"warning: cancelling query {query_id}: {e}")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(host, port, engine, quiet=True):
    handler = type("BoundHandler", (Handler,), {"engine": engine, "quiet": quiet})
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    Server.address_family = family
    return Server((host, port), handler)


def main(argv=None):
    ap = argparse.ArgumentParser(description="ClickHouse HTTP interface over chdb, for development and tests")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--data", default=".data/clickhouse", help="data directory (created if missing)")
    ap.add_argument("--verify-checksums", action="store_true",
                    help="verify CityHash128 checksums of decompress=1 request blocks (slow: pure Python)")
    ap.add_argument("--log-requests", action="store_true")
    args = ap.parse_args(argv)

    engine = Engine(args.data, verify_checksums=args.verify_checksums)
    try:
        server = make_server(args.host, args.port, engine, quiet=not args.log_requests)
    except OSError as e:
        engine.close()
        print(f"cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1

    stopping = threading.Event()

    def stop(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        log(f"received {signal.Signals(signum).name}, shutting down")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"clickhouse dev server listening on http://{shown}:{port} (data {engine.data_dir}, "
          f"ClickHouse {engine.version})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        engine.close()
        log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
