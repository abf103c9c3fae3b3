"""The rollups' query time for a 30-day dashboard range (`cargo xtask bench --clickhouse`).

Creates observer's schema (`observer schema print`) in a fresh chdb data directory, generates `--rows` exchanges
spread over the last 30 days inside ClickHouse (INSERT ... SELECT from numbers(), in chunks, the materialized views
filling the rollups as the agent's inserts do), then runs every dashboard panel target that reads the rollups
(through the view `http_requests_rollup(from, to, step_s)`, migration 16) for the range now-30d..now, its variables
at "All" (a single-select variable at its first option) and a 1 h interval, with Grafana's ClickHouse plugin macros
expanded as the plugin's backend does (the same expansion as observer/tests/dashboards.rs). Each target runs twice:
as the dashboard has it (the view takes the range's whole hours from `http_requests_1h`) and with `step_s = 60`, a
one-minute resolution, for which the view reads `http_requests_1m` alone, as every panel did before the view. Each
run is once cold (ClickHouse's mark, uncompressed, query and page caches dropped first; the kernel's page cache is
not) and `--warm` times more, counting the rows read from storage; prints one JSON object. The data directory is
removed at the end.

The generator is the SQL twin of `realistic()` in observer/tests/clickhouse.rs (five APIs, twenty applications,
ids in paths, mostly 200s, random latencies, sizes and ports, a random 128-bit request id, 32-bit request hash and
64-bit request id hash); `--seed` picks its hash seed."""
import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import chdb

DAY_US = 86_400_000_000


def generator(seed, base_us, step_us):
    h = lambda k: f"cityHash64({seed}, number, {k})"
    return f"""
SELECT * EXCEPT (api, app, id, st) FROM (
SELECT
  ['payments','orders','catalog','users','search'][{h(1)} % 5 + 1] AS api,
  {h(2)} % 20 AS app,
  {h(3)} % 100 AS st,
  {h(4)} % 100000 AS id,
  fromUnixTimestamp64Micro(toInt64({base_us} + number * {step_us} + {h(5)} % {step_us}), 'UTC') AS ts,
  200 + {h(6)} % 50000 AS duration_us,
  if({h(7)} % 3 = 0, 'both', 'client') AS side,
  ['GET','GET','GET','POST','PUT','DELETE'][{h(8)} % 6 + 1] AS method,
  concat(api, '.internal.example.com') AS host,
  concat('/v1/', api, '/', toString(id)) AS path,
  if(id % 3 = 0, ['page','limit'], []) AS query_keys,
  multiIf(st < 85, 200, st < 90, 201, st < 95, 404, st < 98, 500, st = 98, 503, 0) AS status,
  150 + {h(9)} % 2000 AS req_bytes,
  300 + {h(10)} % 20000 AS resp_bytes,
  toIPv6(IPv4NumToString(toUInt32(167772160 + (app % 4) * 256 + (app * 7 % 250)))) AS src_ip,
  32768 + {h(11)} % 28000 AS src_port,
  toIPv6(IPv4NumToString(toUInt32(167837696 + {h(12)} % 5))) AS dst_ip,
  8080 AS dst_port,
  1000 + app * 13 AS client_pid,
  concat('app', toString(app)) AS client_comm,
  concat('/kubepods/burstable/pod-app', toString(app), '/container') AS client_cgroup,
  40000 + {h(13)} % 5 AS server_pid,
  'envoy' AS server_comm,
  concat('/kubepods/pod-', api, '/envoy') AS server_cgroup,
  ['curl/8.5.0','okhttp/4.12.0','Go-http-client/1.1','python-requests/2.31'][{h(14)} % 4 + 1] AS user_agent,
  concat(lower(leftPad(hex({h(15)} % 4611686018427387904), 16, '0')),
         lower(leftPad(hex({h(16)} % 4611686018427387904), 16, '0'))) AS request_id,
  {h(17)} % 1000 = 0 AS truncated,
  number AS conn_id,
  number % 7 = 0 AS incomplete,
  if(number % 5 = 0, ['bare_lf'], []) AS framing_anomaly,
  api AS api_id, concat(api, ' API') AS api_name, 'platform' AS api_owner,
  concat('/v1/', api, '/{{id}}') AS route,
  concat('app-', toString(app)) AS app_id, concat('Application ', toString(app)) AS app_name,
  concat('team-', toString(app % 5)) AS app_team,
  ['retail','wholesale'][{h(18)} % 2 + 1] AS line_of_business,
  concat('fp', leftPad(toString(app * 3 + {h(19)} % 3), 4, '0')) AS key_fingerprint,
  lower(leftPad(hex(toUInt16(app * 977)), 4, '0')) AS key_suffix,
  multiIf({h(20)} % 50 = 0, 'expired', {h(20)} % 50 = 1, 'unknown', {h(20)} % 50 = 2, 'none', 'valid') AS key_state,
  'key' AS attributed_by,
  greatest(bitAnd(cityHash64(method, host, path, query_keys, {seed}), 4294967295), 1) AS request_hash,
  greatest(cityHash64(request_id, {seed}), 1) AS request_id_hash
FROM numbers({{start}}, {{count}}))
"""


GENERATED = ("ts, duration_us, side, method, host, path, query_keys, status, req_bytes, resp_bytes, src_ip, src_port, "
             "dst_ip, dst_port, client_pid, client_comm, client_cgroup, server_pid, server_comm, server_cgroup, "
             "user_agent, request_id, truncated, conn_id, incomplete, framing_anomaly, api_id, api_name, api_owner, "
             "route, app_id, app_name, app_team, line_of_business, key_fingerprint, key_suffix, key_state, "
             "attributed_by, request_hash, request_id_hash")


def expand_macros(sql, from_s, to_s, interval_s):
    """The plugin's macros (pkg/macros), as observer/tests/dashboards.rs expands them."""
    out, rest = [], sql
    while "$__" in rest:
        pos = rest.index("$__")
        out.append(rest[:pos])
        after = rest[pos + 3:]
        m = re.match(r"\w+", after)
        name, tail, arg = m.group(0), after[m.end():], None
        if tail.startswith("("):
            depth = 0
            for i, c in enumerate(tail):
                depth += {"(": 1, ")": -1}.get(c, 0)
                if depth == 0:
                    arg, tail = tail[1:i].strip(), tail[i + 1:]
                    break
        macros = {
            "timeFilter": lambda: f"{arg} >= toDateTime({from_s}) AND {arg} <= toDateTime({to_s})",
            "fromTime": lambda: f"toDateTime({from_s})",
            "toTime": lambda: f"toDateTime({to_s})",
            "timeInterval": lambda: f"toStartOfInterval(toDateTime({arg}), INTERVAL {interval_s} second)",
            "interval_s": lambda: str(interval_s),
        }
        if name not in macros:
            raise SystemExit(f"macro $__{name} is not expanded by rollup_bench.py (add it as dashboards.rs has it)")
        out.append(macros[name]())
        rest = tail
    return "".join(out) + rest


def expand_variables(sql, values):
    def sub(m):
        vals = values[m.group(1)]
        return ",".join("'" + v.replace("'", "''") + "'" for v in vals)
    return re.sub(r"\$\{(\w+):sqlstring\}", sub, sql)


VIEW_CALL = re.compile(r"observer\.http_requests_rollup\(([^)]*)\)")


def minute_resolution(sql):
    """The target at a one-minute resolution: the view then reads the minute rollup alone."""
    return VIEW_CALL.sub(lambda m: "observer.http_requests_rollup(" + re.sub(r"step_s\s*=\s*[^,]+", "step_s = 60",
                                                                            m.group(1)) + ")", sql)


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--observer", required=True, help="the observer binary (for `schema print`)")
    ap.add_argument("--data", required=True, help="a fresh directory for chdb (removed at the end)")
    ap.add_argument("--dashboards", required=True)
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--chunk", type=int, default=5_000_000)
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--warm", type=int, default=3)
    a = ap.parse_args()
    data = Path(a.data)
    if data.exists():
        sys.exit(f"{data} exists: give a fresh directory (it is removed at the end)")
    ddl = subprocess.run([a.observer, "schema", "print"], check=True, capture_output=True, text=True).stdout
    conn = chdb.connect(str(data))
    try:
        def run(sql, fmt="TabSeparated"):
            try:
                return conn.query(sql, fmt)
            except Exception as e:
                raise SystemExit(f"{e}\nin: {sql}") from None

        def q(sql, fmt="TabSeparated"):
            return run(sql, fmt).bytes().decode()

        def timed(sql):
            """Cold, then the median of the warm runs; the rows read from storage; the result."""
            for c in ("MARK", "UNCOMPRESSED", "QUERY", "PAGE"):
                try:
                    q(f"SYSTEM DROP {c} CACHE")
                except Exception:
                    pass
            s = time.monotonic()
            r = run(sql)
            cold = (time.monotonic() - s) * 1000
            out, read = r.bytes().decode(), r.storage_rows_read()
            warm = []
            for _ in range(a.warm):
                s = time.monotonic()
                run(sql)
                warm.append((time.monotonic() - s) * 1000)
            warm.sort()
            return {"read_rows": read, "cold_ms": round(cold, 1),
                    "warm_ms": round(warm[len(warm) // 2], 1) if warm else None}, out
        for stmt in ddl.split(";\n\n"):
            if stmt.strip():
                q(stmt)
        # The registry the generated traffic names (the dashboards' variables list its APIs and applications).
        q("INSERT INTO observer.apis (api_id, name, owner, version, loaded_at) SELECT api, concat(api, ' API'), "
          "'platform', 1, now64(6) FROM (SELECT arrayJoin(['payments','orders','catalog','users','search']) AS api)")
        q("INSERT INTO observer.applications (app_id, name, team, version, loaded_at) SELECT concat('app-', "
          "toString(number)), concat('Application ', toString(number)), concat('team-', toString(number % 5)), 1, "
          "now64(6) FROM numbers(20)")
        now_us = int(time.time() * 1e6)
        base = now_us - 30 * DAY_US
        step = max(1, 30 * DAY_US // a.rows)
        gen = generator(a.seed, base, step)
        t0 = time.monotonic()
        for start in range(0, a.rows, a.chunk):
            n = min(a.chunk, a.rows - start)
            q(f"INSERT INTO observer.http_requests ({GENERATED}) " + gen.replace("{start}", str(start))
              .replace("{count}", str(n)))
            print(f"generated {start + n} rows ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
        gen_s = time.monotonic() - t0
        t1 = time.monotonic()
        for t in ("http_requests_1m", "http_requests_1h"):
            q(f"OPTIMIZE TABLE observer.{t} FINAL")
        merge_s = time.monotonic() - t1
        tables = json.loads(q(
            "SELECT groupArray((table, rows, bytes)) FROM (SELECT table, sum(rows) AS rows, "
            "sum(bytes_on_disk) AS bytes FROM system.parts WHERE database = 'observer' AND active "
            "GROUP BY table ORDER BY table)", "JSONCompactEachRow"))[0]
        from_s, to_s = (now_us - 30 * DAY_US) // 1_000_000, now_us // 1_000_000
        interval_s = 3600
        panels = []
        for f in sorted(Path(a.dashboards).glob("*.json")):
            d = json.loads(f.read_text())
            targets = [(p, t) for p in walk(d.get("panels", [])) for t in p.get("targets", [])
                       if VIEW_CALL.search(t.get("rawSql", ""))]
            if not targets:
                continue
            values = {}
            for v in d.get("templating", {}).get("list", []):
                if v["type"] == "query":
                    sql = expand_macros(expand_variables(v["query"], values), from_s, to_s, interval_s)
                    opts = [r.split("\t")[0] for r in q(sql).splitlines()]
                    values[v["name"]] = opts if v.get("multi") else opts[:1]
                elif v["type"] == "custom":
                    values[v["name"]] = [o.strip() for o in v["query"].split(",")]
            for p, t in targets:
                expand = lambda raw: expand_macros(expand_variables(raw, values), from_s, to_s, interval_s)
                view, out = timed(expand(t["rawSql"]))
                minute, minute_out = timed(expand(minute_resolution(t["rawSql"])))
                panels.append({"dashboard": f.name, "panel": p.get("title", ""), "ref": t.get("refId", ""),
                               "rows": len(out.splitlines()), "view": view, "minute": minute,
                               "same": sorted(out.splitlines()) == sorted(minute_out.splitlines())})
        print(json.dumps({"rows": a.rows, "seed": a.seed, "generate_s": round(gen_s, 1),
                          "optimize_s": round(merge_s, 1), "tables": tables, "interval_s": interval_s,
                          "panels": panels}))
    finally:
        conn.close()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
