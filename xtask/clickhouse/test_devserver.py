#!/usr/bin/env python3
"""Tests of devserver.py over real HTTP.  Run with the dev venv's python:

    .data/venv/bin/python -m unittest xtask/clickhouse/test_devserver.py -v
"""

import gzip
import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid

import lz4.block
import lz4.frame

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import devserver  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir, *extra):
        self.port = free_port()
        self.log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a chatty server must never block on it
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "devserver.py"), "--host", "127.0.0.1", "--port", str(self.port),
             "--data", data_dir, *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ready_line = self.proc.stdout.readline()
        if "listening on" not in self.ready_line:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.log.seek(0)
            err = self.log.read()
            self.log.close()
            raise RuntimeError(f"server did not start: {self.ready_line!r} {err}")

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(30)
        finally:
            self.proc.stdout.close()
            self.log.close()


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def rb_str(s):
    b = s.encode() if isinstance(s, str) else s
    return varint(len(b)) + b


class DevServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="devserver-test-")
        cls.server = Server(os.path.join(cls.tmp, "data"), "--verify-checksums")
        cls.port = cls.server.port

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    # --- helpers -------------------------------------------------------------------------------------------

    def request(self, method="POST", params=None, body=None, headers=None, conn=None, path="/"):
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        url = path + ("?" + urllib.parse.urlencode(params) if params else "")
        conn.request(method, url, body=body, headers=headers or {},
                     encode_chunked=not isinstance(body, (bytes, str, type(None))))
        r = conn.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        if own:
            conn.close()
        return r.status, hdrs, data

    def q(self, sql, **params):
        status, hdrs, data = self.request(params=params, body=sql.encode())
        self.assertEqual(status, 200, data.decode(errors="replace"))
        return data

    def expect_error(self, code, http_status, sql=None, params=None, body=None):
        status, hdrs, data = self.request(params=params, body=body if body is not None else sql.encode())
        self.assertEqual(status, http_status, data)
        self.assertEqual(hdrs.get("x-clickhouse-exception-code"), str(code), data)
        self.assertTrue(data.startswith(f"Code: {code}. DB::Exception: ".encode()), data)
        return data

    # --- basics --------------------------------------------------------------------------------------------

    def test_ready_line(self):
        self.assertRegex(self.server.ready_line,
                         r"^clickhouse dev server listening on http://127\.0\.0\.1:\d+ \(data .*, ClickHouse 26\.9")

    def test_ping_and_root(self):
        for path in ("/ping", "/"):
            status, _, data = self.request("GET", path=path)
            self.assertEqual((status, data), (200, b"Ok.\n"))
        status, _, data = self.request("GET", path="/nope")
        self.assertEqual(status, 404)

    def test_get_select_default_tsv(self):
        status, hdrs, data = self.request("GET", {"query": "SELECT 1, 'a\tb'"})
        self.assertEqual(status, 200)
        self.assertEqual(data, b"1\ta\\tb\n")
        self.assertEqual(hdrs["x-clickhouse-format"], "TabSeparated")
        self.assertIn("x-clickhouse-query-id", hdrs)
        self.assertIn("read_rows", json.loads(hdrs["x-clickhouse-summary"]))

    def test_formats(self):
        self.assertEqual(self.q("SELECT 1 AS x FORMAT JSONEachRow"), b'{"x":1}\n')
        j = json.loads(self.q("SELECT number AS n FROM numbers(3)", default_format="JSON"))
        self.assertEqual([r["n"] for r in j["data"]], ["0", "1", "2"] if isinstance(j["data"][0]["n"], str)
                         else [0, 1, 2])
        self.assertEqual(self.q("SELECT 1 AS a, 'x' AS b FORMAT CSVWithNames"), b'"a","b"\n1,"x"\n')
        # query param + body are concatenated
        self.assertEqual(self.request(params={"query": "SELECT"}, body=b"42")[2], b"42\n")

    def test_large_results_with_headers_are_not_repeated(self):
        # chdb repeats format headers per chunk: the server must emit exactly one.
        n = 300_000
        for fmt, header_count in (("RowBinaryWithNamesAndTypes", b"\x01\x06number\x06UInt64"),
                                  ("TSVWithNamesAndTypes", b"number\nUInt64\n"),
                                  ("CSVWithNames", b'"number"\n')):
            data = self.q(f"SELECT number FROM numbers({n})", default_format=fmt)
            self.assertEqual(data.count(header_count), 1, fmt)
        data = self.q(f"SELECT number FROM numbers({n})", default_format="RowBinaryWithNamesAndTypes")
        hdr = b"\x01\x06number\x06UInt64"
        nums = struct.unpack(f"<{n}Q", data[len(hdr):])
        self.assertEqual(list(nums), list(range(n)))
        j = json.loads(self.q(f"SELECT number FROM numbers({n}) FORMAT JSONCompact"))
        self.assertEqual(j["rows"], n)

    def test_keep_alive(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        for i in range(20):
            status, _, data = self.request(params={"query": f"SELECT {i}"}, conn=conn)
            self.assertEqual((status, data), (200, f"{i}\n".encode()))
        # a big (chunked) response then a small one on the same connection
        status, hdrs, data = self.request(body=b"SELECT number FROM numbers(500000)", conn=conn)
        self.assertEqual(hdrs.get("transfer-encoding"), "chunked")
        self.assertEqual(len(data.splitlines()), 500000)
        self.assertEqual(self.request(body=b"SELECT 7", conn=conn)[2], b"7\n")
        conn.close()

    # --- inserts -------------------------------------------------------------------------------------------

    COLS = ("ts DateTime64(6), id UInt64, ip IPv6, method LowCardinality(String), tags Array(String), "
            "attrs Map(String, UInt64), s String")
    TYPES = ["DateTime64(6)", "UInt64", "IPv6", "LowCardinality(String)", "Array(String)", "Map(String, UInt64)",
             "String"]
    NAMES = ["ts", "id", "ip", "method", "tags", "attrs", "s"]

    def rows(self, n):
        import ipaddress
        out = []
        for i in range(n):
            ts = 1_764_000_000_123_456 + i
            ip = ipaddress.IPv6Address("::ffff:10.0.0.1" if i % 2 else "2001:db8::1").packed
            out.append((ts, 2 ** 64 - 1 if i == 0 else i, ip, ["GET", "POST", ""][i % 3], ["a", f"t{i}", ""],
                        [("k", i), ("max", 2 ** 64 - 1)], "" if i == 1 else f"s\t{i}\n\u00e9"))
        return out

    def rowbinary(self, rows):
        b = bytearray()
        for ts, id_, ip, m, tags, attrs, s in rows:
            b += struct.pack("<qQ", ts, id_) + ip + rb_str(m)
            b += varint(len(tags)) + b"".join(rb_str(t) for t in tags)
            b += varint(len(attrs)) + b"".join(rb_str(k) + struct.pack("<Q", v) for k, v in attrs)
            b += rb_str(s)
        return bytes(b)

    def make_table(self, name):
        self.q(f"DROP TABLE IF EXISTS {name}")
        self.q(f"CREATE TABLE {name} ({self.COLS}) ENGINE = MergeTree ORDER BY id")

    def test_rowbinary_round_trip(self):
        self.make_table("rt")
        rows = self.rows(1000)
        body = self.rowbinary(rows)
        status, hdrs, data = self.request(params={"query": "INSERT INTO rt FORMAT RowBinary"}, body=body)
        self.assertEqual(status, 200, data)
        self.assertEqual(json.loads(hdrs["x-clickhouse-summary"])["written_rows"], "1000")
        back = self.q("SELECT * FROM rt ORDER BY ts", default_format="RowBinary")
        self.assertEqual(back, body)
        # RowBinaryWithNamesAndTypes, as the clickhouse crate sends with validation on
        hdr = varint(7) + b"".join(rb_str(n) for n in self.NAMES) + b"".join(rb_str(t) for t in self.TYPES)
        self.make_table("rt2")
        status, _, data = self.request(
            params={"query": f"INSERT INTO rt2({','.join('`%s`' % n for n in self.NAMES)}) "
                             "FORMAT RowBinaryWithNamesAndTypes"}, body=hdr + body)
        self.assertEqual(status, 200, data)
        back = self.q("SELECT * FROM rt2 ORDER BY ts", default_format="RowBinaryWithNamesAndTypes")
        self.assertEqual(back, hdr + body)
        self.assertEqual(self.q("SELECT max(id), toString(min(ts)), toString(any(ip)) FROM rt2 WHERE id = 1"),
                         b"1\t2025-11-24 16:00:00.123457\t::ffff:10.0.0.1\n")

    def test_jsoneachrow_and_values_inserts(self):
        self.q("DROP TABLE IF EXISTS ji")
        self.q("CREATE TABLE ji (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
        self.request(params={"query": "INSERT INTO ji FORMAT JSONEachRow"}, body=b'{"a":1,"s":"x"}\n{"a":2,"s":"y"}')
        self.request(body=b'INSERT INTO ji FORMAT JSONEachRow\n{"a":3,"s":"z"}\n')
        self.request(params={"query": "INSERT INTO ji VALUES"}, body=b"(4,'v'),(5,'w')")
        self.request(body=b"INSERT INTO ji (a, s) VALUES (6, 'q')")
        self.request(params={"query": "INSERT INTO ji SELECT 7, 'sel'"})
        self.assertEqual(self.q("SELECT count(), sum(a) FROM ji"), b"7\t28\n")
        # a bad row is an error and nothing is inserted
        self.expect_error(27, 400, params={"query": "INSERT INTO ji FORMAT JSONEachRow"},
                          body=b'{"a":8,"s":"ok"}\n{"a":"bad}\n')
        self.assertEqual(self.q("SELECT count() FROM ji"), b"7\n")

    def test_decompress_lz4_insert(self):
        self.make_table("lz")
        rows = self.rows(20000)
        body = self.rowbinary(rows)
        # several blocks, sent in chunks that do not line up with block boundaries
        blocks = b"".join(devserver.native_compress_block(body[i:i + 65536]) for i in range(0, len(body), 65536))

        def gen():
            for i in range(0, len(blocks), 7777):
                yield blocks[i:i + 7777]

        status, _, data = self.request(params={"query": "INSERT INTO lz FORMAT RowBinary", "decompress": "1"},
                                       body=gen())
        self.assertEqual(status, 200, data)
        self.assertEqual(self.q("SELECT count() FROM lz"), b"20000\n")
        self.assertEqual(self.q("SELECT * FROM lz ORDER BY ts", default_format="RowBinary"), body)
        # a corrupted checksum is rejected (the test server runs with --verify-checksums)
        bad = bytearray(devserver.native_compress_block(body[:1000]))
        bad[0] ^= 0xFF
        self.expect_error(40, 500, params={"query": "INSERT INTO lz FORMAT RowBinary", "decompress": "1"},
                          body=bytes(bad))
        # a truncated frame is rejected, nothing inserted
        self.expect_error(271, 500, params={"query": "INSERT INTO lz FORMAT RowBinary", "decompress": "1"},
                          body=devserver.native_compress_block(body[:1000])[:-3])
        self.assertEqual(self.q("SELECT count() FROM lz"), b"20000\n")

    def test_large_insert_is_streamed(self):
        self.q("DROP TABLE IF EXISTS big")
        self.q("CREATE TABLE big (a UInt64, s String) ENGINE = MergeTree ORDER BY a")
        n = 1_000_000
        row = b"".join(struct.pack("<Q", i) + rb_str("x" * 40) for i in range(1000))

        def gen():
            for _ in range(n // 1000):
                yield row

        status, _, data = self.request(params={"query": "INSERT INTO big FORMAT RowBinary"}, body=gen())
        self.assertEqual(status, 200, data)
        self.assertEqual(self.q("SELECT count(), sum(a) FROM big"), f"{n}\t{499500 * 1000}\n".encode())

    # --- compression of responses --------------------------------------------------------------------------

    def test_compressed_responses(self):
        sql = b"SELECT number, toString(number) FROM numbers(200000)"
        plain = self.request(body=sql)[2]
        status, hdrs, data = self.request(body=sql, headers={"Accept-Encoding": "lz4"})
        self.assertEqual(hdrs.get("content-encoding"), "lz4")
        self.assertEqual(lz4.frame.decompress(data), plain)
        status, hdrs, data = self.request(body=sql, headers={"Accept-Encoding": "gzip, deflate"})
        self.assertEqual(hdrs.get("content-encoding"), "gzip")
        self.assertEqual(gzip.decompress(data), plain)
        status, hdrs, data = self.request(params={"enable_http_compression": "0"}, body=sql,
                                          headers={"Accept-Encoding": "lz4"})
        self.assertNotIn("content-encoding", hdrs)
        self.assertEqual(data, plain)
        # compress=1: ClickHouse's block framing with CityHash128 checksums
        status, hdrs, data = self.request(params={"compress": "1"}, body=sql)
        out = bytearray()
        pos = 0
        while pos < len(data):
            method, csize, usize = struct.unpack_from("<BII", data, pos + 16)
            self.assertEqual(method, 0x82)
            self.assertEqual(data[pos:pos + 16], devserver.cityhash128_bytes(data[pos + 16:pos + 16 + csize]))
            out += lz4.block.decompress(data[pos + 25:pos + 16 + csize], uncompressed_size=usize)
            pos += 16 + csize
        self.assertEqual(bytes(out), plain)

    def test_request_content_encoding(self):
        body = gzip.compress(b"SELECT 40 + 2")
        self.assertEqual(self.request(body=body, headers={"Content-Encoding": "gzip"})[2], b"42\n")

    # --- parameters, settings, databases ------------------------------------------------------------------

    def test_query_parameters(self):
        self.assertEqual(self.q("SELECT {a:UInt32} + 1, {s:String}", param_a="41", param_s="it's"), b"42\tit\\'s\n")
        boundary = "b" + uuid.uuid4().hex
        parts = [("query", "SELECT {x:String} || '!', {n:Array(UInt8)}"), ("param_x", "y" * 100000),
                 ("param_n", "[1,2]")]
        body = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                       for k, v in parts) + f"--{boundary}--\r\n"
        status, _, data = self.request(body=body.encode(),
                                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        self.assertEqual(status, 200, data)
        self.assertEqual(data, b"y" * 100000 + b"!\t[1,2]\n")

    def test_settings_do_not_leak(self):
        default = self.q("SELECT getSetting('max_block_size')")
        self.assertEqual(self.q("SELECT getSetting('max_block_size')", max_block_size="1234"), b"1234\n")
        self.assertEqual(self.q("SELECT getSetting('max_block_size')"), default)
        # a SET statement has no effect beyond its request (as on ClickHouse without a session)
        self.q("SET max_block_size = 77")
        self.assertEqual(self.q("SELECT getSetting('max_block_size')"), default)
        self.q("USE system")
        self.assertEqual(self.q("SELECT currentDatabase()"), b"default\n")
        # a failing query still resets its settings; an unknown setting is an error
        self.expect_error(60, 404, "SELECT * FROM nope_table", params={"max_block_size": "99"})
        self.assertEqual(self.q("SELECT getSetting('max_block_size')"), default)
        self.expect_error(115, 404, "SELECT 1", params={"no_such_setting_xyz": "1"})
        before = self.q("SELECT getSetting('async_insert'), getSetting('insert_deduplication_token')")
        self.assertEqual(self.q("SELECT getSetting('insert_deduplication_token')", async_insert="0",
                                insert_deduplication_token="t1", wait_end_of_query="1", query_id="q1",
                                session_id="s1", user="default", password="", buffer_size="1000"), b"t1\n")
        self.assertEqual(self.q("SELECT getSetting('async_insert'), getSetting('insert_deduplication_token')"),
                         before)

    def test_dedup_token_and_async_insert(self):
        self.q("DROP TABLE IF EXISTS dd")
        self.q("CREATE TABLE dd (a UInt32) ENGINE = MergeTree ORDER BY a "
               "SETTINGS non_replicated_deduplication_window = 100")
        for _ in range(2):
            self.request(params={"query": "INSERT INTO dd FORMAT JSONEachRow", "insert_deduplication_token": "tok",
                                 "async_insert": "1", "wait_for_async_insert": "1"}, body=b'{"a":1}\n{"a":2}\n')
        self.request(params={"query": "INSERT INTO dd FORMAT JSONEachRow"}, body=b'{"a":1}\n{"a":2}\n')
        self.assertEqual(self.q("SELECT count() FROM dd"), b"4\n")

    def test_database_param(self):
        self.q("CREATE DATABASE IF NOT EXISTS d1")
        self.q("CREATE TABLE IF NOT EXISTS t (a UInt8) ENGINE = MergeTree ORDER BY a", database="d1")
        self.request(params={"query": "INSERT INTO t FORMAT TSV", "database": "d1"}, body=b"5\n")
        self.assertEqual(self.q("SELECT a FROM t", database="d1"), b"5\n")
        self.assertEqual(self.q("SELECT currentDatabase()"), b"default\n")
        self.assertEqual(self.request(body=b"SELECT currentDatabase()", headers={"X-ClickHouse-Database": "d1"})[2],
                         b"d1\n")
        self.expect_error(81, 404, "SELECT 1", params={"database": "no_such_db"})

    # --- errors --------------------------------------------------------------------------------------------

    def test_errors(self):
        self.expect_error(62, 400, "SELEC 1")
        self.expect_error(60, 404, "SELECT * FROM no_such_table")
        self.expect_error(62, 400, "SELECT 1; SELECT 2")
        self.expect_error(62, 400, "")
        data = self.expect_error(395, 500, "SELECT throwIf(1)")
        self.assertIn(b"(FUNCTION_THROW_IF_VALUE_IS_NON_ZERO)", data)
        self.expect_error(60, 404, params={"query": "INSERT INTO no_such_table FORMAT RowBinary"}, body=b"\x01")
        self.assertEqual(self.q("SELECT 1"), b"1\n")

    def test_error_while_streaming(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("POST", "/", body=b"SELECT number, throwIf(number = 900000) FROM numbers(1000000)")
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        with self.assertRaises(http.client.IncompleteRead) as cm:
            r.read()
        self.assertIn(b"Code: 395. DB::Exception:", cm.exception.partial[-2000:])
        conn.close()
        self.assertEqual(self.q("SELECT 1"), b"1\n")

    def test_client_disconnects(self):
        self.q("DROP TABLE IF EXISTS dc")
        self.q("CREATE TABLE dc (a UInt64) ENGINE = MergeTree ORDER BY a")
        # body cut short: nothing is inserted
        s = socket.create_connection(("127.0.0.1", self.port))
        q = urllib.parse.quote("INSERT INTO dc FORMAT RowBinary")
        s.sendall(f"POST /?query={q} HTTP/1.1\r\nHost: x\r\nContent-Length: 800\r\n\r\n".encode()
                  + struct.pack("<10Q", *range(10)))
        s.close()
        # response abandoned in the middle of a large result
        s = socket.create_connection(("127.0.0.1", self.port))
        body = b"SELECT number FROM numbers(100000000)"
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        s.recv(65536)
        s.close()
        time.sleep(0.5)
        self.assertEqual(self.q("SELECT count() FROM dc"), b"0\n")
        self.assertEqual(self.q("SELECT 1"), b"1\n")

    def test_concurrency(self):
        self.q("DROP TABLE IF EXISTS cc")
        self.q("CREATE TABLE cc (t UInt32, i UInt32) ENGINE = MergeTree ORDER BY (t, i)")
        errors = []

        def worker(t):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                for i in range(25):
                    status, _, data = self.request(
                        params={"query": "INSERT INTO cc FORMAT TSV", "max_block_size": str(1000 + t)},
                        body=f"{t}\t{i}\n".encode(), conn=conn)
                    if status != 200:
                        errors.append(data)
                    status, _, data = self.request(params={"query": "SELECT getSetting('max_block_size')",
                                                           "max_block_size": str(2000 + t)}, conn=conn)
                    if data != f"{2000 + t}\n".encode():
                        errors.append(data)
                conn.close()
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        self.assertEqual(errors, [])
        self.assertEqual(self.q("SELECT count(), uniqExact(t, i) FROM cc"), b"200\t200\n")

    # --- CityHash128 v1.0.2 --------------------------------------------------------------------------------

    def test_cityhash128_reference_vectors(self):
        # From CityHash's city-test.cc (v1.0.2 data set): input data[i*i : i*i+i] -> (low64, high64).
        expected = {0: (0x3df09dfc64c09a2b, 0x3cb540c392e51e29), 1: (0x1290f0e8a5caa74d, 0xca4c6bf7583f5cda),
                    3: (0x8f52532fc6f005b7, 0x4ebe60df371ec129), 7: (0xb298265ebd1bd55f, 0x4a5f6838b55c0b08),
                    8: (0x763529c8d4189ea8, 0x860d77e7fef74ca3), 9: (0x313d49cb51b8cd2c, 0x6e982d8b4658654a),
                    15: (0x1c66ceea473413df, 0xdc3f70a124b25a40), 16: (0x8505c996b70ee9fc, 0xb92bba6b5d778eb7),
                    17: (0x1660a2c4972d0fa1, 0x1a1538d6b50a57c), 31: (0x441133d221486a3d, 0xfb9c5a40e19515b),
                    32: (0x15bb46383daec2a5, 0x716294063b4ba089), 63: (0x87e11c0f44454863, 0x2df1aedb5871cc4b),
                    64: (0x4caf4deeda66a6ee, 0x264720f6f35f7840), 100: (0x2a55645640911e27, 0x4fac2eefbd36e26f),
                    127: (0x664ec3fad8521859, 0x406f082beb9ca29a), 128: (0x5414e385f5677a6d, 0x41ef105f8a682a28),
                    129: (0xd4bd358fed3e6aa5, 0x8a1ba396356197d9), 160: (0xe8e11d96868fd11e, 0xd7323d276887576a),
                    255: (0x3ad5fe46fea96c61, 0x5b78b66fef8dea6f), 256: (0xbb2fca5617f2c8c8, 0xa68ae975813669d),
                    298: (0x19fa48781ce2b326, 0xf34fc200e9ca457c)}
        m, k0 = (1 << 64) - 1, 0xC3A5C85C97CB3127
        size = 298 * 298 + 298
        data = bytearray(size)
        a, b = 9, 777
        for i in range(size):
            a = (((a ^ (a >> 41)) * k0) + b) & m
            b = (((b ^ (b >> 41)) * k0) + i) & m
            data[i] = (b >> 37) & 0xFF
        for i, want in expected.items():
            self.assertEqual(devserver.cityhash128(bytes(data[i * i:i * i + i])), want, f"length {i}")


class RestartTest(unittest.TestCase):
    def test_restart_keeps_tables_and_materialized_views(self):
        tmp = tempfile.mkdtemp(prefix="devserver-restart-")
        try:
            data_dir = os.path.join(tmp, "data")
            srv = Server(data_dir)

            def q(sql, port):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                c.request("POST", "/", body=sql.encode())
                r = c.getresponse()
                out = r.read()
                c.close()
                self.assertEqual(r.status, 200, out)
                return out

            q("CREATE DATABASE obs", srv.port)
            q("CREATE TABLE obs.raw (ts DateTime, k LowCardinality(String), v UInt64) "
              "ENGINE = MergeTree PARTITION BY toDate(ts) ORDER BY (k, ts)", srv.port)
            q("CREATE TABLE obs.agg (k String, n UInt64, s UInt64) ENGINE = SummingMergeTree ORDER BY k", srv.port)
            q("CREATE MATERIALIZED VIEW obs.mv TO obs.agg AS SELECT k, count() AS n, sum(v) AS s FROM obs.raw "
              "GROUP BY k", srv.port)
            q("INSERT INTO obs.raw VALUES (now(), 'a', 1), (now(), 'b', 2), (now(), 'a', 3)", srv.port)
            self.assertEqual(srv.stop(signal.SIGTERM), 0)

            srv = Server(data_dir)
            self.assertEqual(q("SELECT count(), sum(v) FROM obs.raw", srv.port), b"3\t6\n")
            q("INSERT INTO obs.raw VALUES (now(), 'a', 10)", srv.port)
            self.assertEqual(q("SELECT k, sum(n), sum(s) FROM obs.agg GROUP BY k ORDER BY k", srv.port),
                             b"a\t3\t14\nb\t1\t2\n")
            self.assertEqual(srv.stop(signal.SIGINT), 0)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_second_server_on_same_data_fails_cleanly(self):
        tmp = tempfile.mkdtemp(prefix="devserver-lock-")
        try:
            srv = Server(os.path.join(tmp, "data"))
            with self.assertRaises(RuntimeError):
                Server(os.path.join(tmp, "data"))
            srv.stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
