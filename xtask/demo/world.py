"""The demo world of `cargo xtask demo`: three small HTTP APIs and the client applications that call them.

    python3 world.py servers ADDR                   # the APIs: payments (API key) :8081, catalog (anonymous) :8082,
                                                    # orders (bearer token) :8083, all on ADDR
    python3 world.py client NAME ADDR BEHAVIOUR     # one client application (see CLIENTS) until interrupted
    python3 world.py keys                           # the demo's API keys as JSON (xtask fingerprints them)

Each client runs as its own process (its own process name and, set by xtask, its own cgroup), paced with jitter, and
stops after `--for` seconds if given. Behaviours change what a client does, so the agent's insights have something
to find: `novel-stream` calls a route never called before, `retry-storm` gets 503s and retries six times at once,
`client-bug` sends eight times its usual calls, each twice, all answered 400, `flood` runs a hundred keyless threads
(each its own process name, so its own source to the agent) scanning the catalog. Requests carry no header that tells
the server what to answer except X-Demo-Status, which the retry-storm and client-bug behaviours use to make the server
fail the way a broken backend or a broken client would.
"""
import ctypes
import http.client
import json
import random
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading

PORTS = {"payments": 8081, "catalog": 8082, "orders": 8083}
HOSTS = {"payments": "payments.demo", "catalog": "catalog.demo", "orders": "orders.demo"}

# Keys are the demo's own; xtask fingerprints them into the demo registry.
KEYS = {
    "web-shop": "demo_ws_live_4f8a1c2e9b7d",
    "checkout-v1": "demo_c1_live_0a9e33b1c7f2",
    "checkout-v2": "demo_c2_live_7d41e0a8b5c6",
    "billing-batch": "demo_bb_live_93c2f7e1d0a4",
    "partner-portal": "demo_pp_live_5b6c1d9e2f30",
    "revoked-ci": "demo_ci_live_e2d8a4c61b97",
}

# name -> (process name, requests per second, [(api, method, path template, weight)], key or None)
CLIENTS = {
    "web-shop": ("web-shop", 4.0, [
        ("catalog", "GET", "/v1/items", 3), ("catalog", "GET", "/v1/items/{n}", 4),
        ("payments", "POST", "/v1/payments", 1), ("orders", "GET", "/v1/orders/{n}", 2)], "web-shop"),
    "checkout-v1": ("checkout-v1", 0.7, [("payments", "POST", "/v1/payments", 2),
                                         ("payments", "GET", "/v1/payments/{n}", 1)], "checkout-v1"),
    "checkout-v2": ("checkout-v2", 2.1, [("payments", "POST", "/v1/payments", 2),
                                         ("payments", "GET", "/v1/payments/{n}", 1)], "checkout-v2"),
    "billing-batch": ("billing-batch", 1.0, [("orders", "GET", "/v1/orders/{n}", 3),
                                             ("payments", "GET", "/v1/payments/{n}", 1)], "billing-batch"),
    "inventory-sync": ("inventory-sync", 1.5, [("catalog", "GET", "/v1/items/{n}", 1)], None),
    # Started only by scenarios.
    "partner-portal": ("partner-portal", 2.0, [("catalog", "GET", "/v1/items", 1),
                                               ("orders", "POST", "/v1/orders", 1)], "partner-portal"),
    "report-tool": ("report-tool", 1.0, [("orders", "GET", "/v1/orders/{n}", 1)], None),
    "laptop": ("curl", 0.8, [("payments", "GET", "/v1/payments/{n}", 1)], "web-shop"),
    "ci-job": ("ci-job", 0.8, [("payments", "POST", "/v1/payments", 1)], "revoked-ci"),
    # Many keyless bots, one thread (its own process name) each, scanning the catalog: --scenario flood.
    "bots": ("bot", 0.12, [("catalog", "GET", "/v1/items", 1), ("catalog", "GET", "/v1/items/{n}", 2),
                           ("catalog", "GET", "/v1/items/{n}/stock", 1)], None),
}
# Threads of the flood, each a distinct source (process name) to the agent.
BOTS = 100


def set_comm(name):
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except OSError:
        pass


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api = "?"

    def log_message(self, *args):
        pass

    def handle_one(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        status = int(self.headers.get("X-Demo-Status") or 200)
        if self.api == "payments" and not self.headers.get("X-Api-Key"):
            status = 401
        if self.api == "orders" and not (self.headers.get("Authorization") or "").startswith("Bearer "):
            status = 401
        time.sleep(random.uniform(0.002, 0.02) * (8 if status >= 500 else 1))
        body = json.dumps({"api": self.api, "path": self.path, "ok": status < 400}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = handle_one


def servers(addr):
    set_comm("demo-apis")
    threads = []
    for api, port in PORTS.items():
        handler = type(f"{api}Handler", (Api,), {"api": api})
        ThreadingHTTPServer.daemon_threads = True
        srv = ThreadingHTTPServer((addr, port), handler)
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        threads.append(t)
    print("demo APIs listening", flush=True)
    while True:
        time.sleep(3600)


def request(conns, addr, api, method, path, headers, body):
    conn = conns.get(api)
    if conn is None:
        conn = conns[api] = http.client.HTTPConnection(addr, PORTS[api], timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        conn.close()
        conns.pop(api, None)
        return 0


def client(name, addr, behaviour, seconds):
    comm = CLIENTS[name][0]
    if behaviour == "flood":
        bots = [threading.Thread(target=calling, args=(name, f"{comm}-{n:03}", addr, behaviour, seconds),
                                 daemon=True) for n in range(BOTS)]
        for b in bots:
            b.start()
        for b in bots:
            while b.is_alive():
                b.join(1)
        return
    calling(name, comm, addr, behaviour, seconds)


def calling(name, comm, addr, behaviour, seconds):
    """Client `name`'s loop as process (thread) name `comm` until `seconds` pass (or forever): paced requests,
    shaped by `behaviour`."""
    _, rate, calls, key_of = CLIENTS[name]
    set_comm(comm)
    key = KEYS.get(key_of) if key_of else None
    if behaviour == "client-bug":
        rate *= 8  # a bug loop: eight times the usual calls, each sent twice, all rejected
    conns = {}
    weights = [w for *_, w in calls]
    end = time.time() + seconds if seconds else None
    rng = random.Random(comm)
    while end is None or time.time() < end:
        api, method, template, _ = rng.choices(calls, weights)[0]
        if behaviour == "novel-stream" and rng.random() < 0.5:
            api, method, template = "payments", "POST", "/v1/payments/{n}/refunds"
        path = template.replace("{n}", str(rng.randint(1000, 1200)))
        headers = {"Host": HOSTS[api], "User-Agent": f"{name}/1.0"}
        if key and api == "payments":
            headers["X-Api-Key"] = key
        if key and api == "orders":
            headers["Authorization"] = f"Bearer {key}"
        body = None
        if method == "POST":
            body = json.dumps({"amount": rng.randint(1, 500)}).encode()
            headers["Content-Type"] = "application/json"
        if behaviour == "client-bug":
            headers["X-Demo-Status"] = "400"
        if behaviour == "retry-storm":
            headers["X-Demo-Status"] = "503"
        status = request(conns, addr, api, method, path, headers, body)
        if behaviour == "client-bug":
            request(conns, addr, api, method, path, headers, body)
        if behaviour == "retry-storm" and (status >= 500 or status == 0):
            for attempt in range(6):  # retries without backoff: the storm
                status = request(conns, addr, api, method, path, headers, body)
        time.sleep(rng.expovariate(rate))


if __name__ == "__main__":
    try:
        if sys.argv[1] == "keys":
            print(json.dumps(KEYS))
        elif sys.argv[1] == "servers":
            servers(sys.argv[2])
        else:
            seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 0
            client(sys.argv[2], sys.argv[3], sys.argv[4], seconds)
    except KeyboardInterrupt:
        pass
