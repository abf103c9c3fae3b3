"""A stand-in Kubernetes API server for tests/tests/kubernetes.rs: answers pod, ReplicaSet, Job, Service and
EndpointSlice lists with the recorded responses in observer/tests/fixtures/kube and keeps watches open without events.
Each NAMESPACE/SERVICE=IP:PORT argument adds an EndpointSlice of that Service with that one endpoint.

Usage: python3 kube_api.py PORT FIXTURE_DIR/ [NAMESPACE/SERVICE=IP:PORT ...]"""
import http.server, json, sys, time, urllib.parse
F = sys.argv[2]
EXTRA = []
for a in sys.argv[3:]:
    svc, addr = a.split("=")
    ns, name = svc.split("/")
    ip, port = addr.rsplit(":", 1)
    EXTRA.append({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                  "metadata": {"name": name + "-test", "namespace": ns, "resourceVersion": "1005",
                               "labels": {"kubernetes.io/service-name": name}},
                  "addressType": "IPv4", "endpoints": [{"addresses": [ip]}],
                  "ports": [{"name": "http", "protocol": "TCP", "port": int(port)}]})
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): sys.stderr.write(self.path + "\n")
    def do_GET(self):
        u = urllib.parse.urlparse(self.path); q = urllib.parse.parse_qs(u.query)
        files = {"/api/v1/pods": "pods-list-1.json", "/apis/apps/v1/replicasets": "replicasets-list.json", "/apis/batch/v1/jobs": "jobs-list.json",
                 "/api/v1/services": "services-list.json", "/apis/discovery.k8s.io/v1/endpointslices": "endpointslices-list.json"}
        if u.path not in files:
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
        if q.get("watch") == ["true"]:
            self.send_response(200); self.send_header("Content-Type", "application/json"); self.send_header("Transfer-Encoding", "chunked"); self.end_headers()
            self.wfile.flush(); time.sleep(600); return
        body = open(F + files[u.path], "rb").read()
        if u.path.endswith("/endpointslices") and EXTRA:
            doc = json.loads(body); doc["items"] += EXTRA; body = json.dumps(doc).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
