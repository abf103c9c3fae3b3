"""A stand-in Kubernetes API server for tests/tests/kubernetes.rs: answers pod, ReplicaSet and Job lists with the
recorded responses in observer/tests/fixtures/kube and keeps watches open without events.

Usage: python3 kube_api.py PORT FIXTURE_DIR/"""
import http.server, json, sys, time, urllib.parse
F = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): sys.stderr.write(self.path + "\n")
    def do_GET(self):
        u = urllib.parse.urlparse(self.path); q = urllib.parse.parse_qs(u.query)
        files = {"/api/v1/pods": "pods-list-1.json", "/apis/apps/v1/replicasets": "replicasets-list.json", "/apis/batch/v1/jobs": "jobs-list.json"}
        if u.path not in files:
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
        if q.get("watch") == ["true"]:
            self.send_response(200); self.send_header("Content-Type", "application/json"); self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
            self.wfile.flush(); time.sleep(600); return
        body = open(F + files[u.path], "rb").read()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
