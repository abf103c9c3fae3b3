"""HTTP/1.1 test server for observer's end-to-end tests: one endpoint per body-framing case.

Usage: python3 server.py ADDR PORT
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, body=b"", headers=None, length=True):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path.startswith("/cl/"):
            self._send(200, b"x" * int(path[4:]))
        elif path.startswith("/chunked/"):
            n = int(path[9:])
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            while sent < n:
                part = min(1000, n - sent)
                self.wfile.write(b"%x\r\n%s\r\n" % (part, b"y" * part))
                sent += part
            self.wfile.write(b"0\r\n\r\n")
        elif path.startswith("/close/"):
            n = int(path[7:])
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"z" * n)
            self.close_connection = True
        elif path == "/nothing":
            self._send(204, length=False)
        elif path == "/notmod":
            self._send(304, length=False)
        else:
            self._send(200, b"ok\n")

    def do_POST(self):
        body = self._body()
        self._send(201, b"got %d\n" % len(body))

    do_PUT = do_POST


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
