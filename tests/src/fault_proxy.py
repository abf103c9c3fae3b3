"""An HTTP proxy that injects ClickHouse faults, for observer's fault tests.

Usage: python3 fault_proxy.py LISTEN_PORT UPSTREAM_PORT MODE_FILE

Every request is read whole, then handled as MODE_FILE says at that moment (re-read per request):
  pass       forwarded to 127.0.0.1:UPSTREAM_PORT and the answer relayed (502 when the upstream is down);
  500        answered `500` with a ClickHouse exception, nothing forwarded;
  delay:S    forwarded after S seconds (the client's timeout may end it first);
  blackhole  never answered: held until the mode changes, then the connection is closed, nothing forwarded.
"""
import http.client
import http.server
import socketserver
import sys
import time

UPSTREAM = int(sys.argv[2])
MODE_FILE = sys.argv[3]


def mode():
    try:
        with open(MODE_FILE) as f:
            return f.read().strip() or "pass"
    except OSError:
        return "pass"


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def relay(self):
        n = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = self.rfile.read(n)
        m = mode()
        if m == "500":
            msg = b"Code: 999. DB::Exception: injected by fault_proxy.py"
            self.send_response(500)
            self.send_header("X-ClickHouse-Exception-Code", "999")
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        if m == "blackhole":
            while mode() == "blackhole":
                time.sleep(0.2)
            self.close_connection = True
            return
        if m.startswith("delay:"):
            time.sleep(float(m.split(":", 1)[1]))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
        headers["Content-Length"] = str(len(body))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=120)
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            msg = f"upstream down: {e}".encode()
            self.send_response(502)
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = relay
    do_POST = relay


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    Server(("127.0.0.1", int(sys.argv[1])), Proxy).serve_forever()
