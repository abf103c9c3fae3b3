// observer UI: one page per hash route, each drawn from its JSON endpoint under /api (see the README).
"use strict";

const PALETTE = ["#2f6fed", "#e8590c", "#12b886", "#ae3ec9", "#f59f00", "#1098ad", "#e64980", "#5c940d",
  "#7048e8", "#c92a2a", "#495057", "#0b7285"];
const $main = document.getElementById("main");
const state = { timer: null, charts: [], seq: 0 };

window.addEventListener("error", (e) => markError(e.message || String(e)));
window.addEventListener("unhandledrejection", (e) => markError(String(e.reason)));

function markError(msg) {
  document.body.dataset.errors = (document.body.dataset.errors || "") + msg + "\n";
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function num(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}
function pct(x) { return num(100 * (x || 0), 1) + "%"; }
function when(s) {
  if (!s) return "";
  const d = new Date(s * 1000);
  return d.toISOString().replace("T", " ").slice(0, 19);
}
function link(route, id, text) { return `<a href="#/${route}/${encodeURIComponent(id)}">${esc(text)}</a>`; }
function keyPill(state) {
  const cls = { valid: "ok", none: "", active: "ok", unknown: "warn", unused: "warn" }[state] ?? "bad";
  return `<span class="pill ${cls}">${esc(state)}</span>`;
}
/// The page's own `?from=&to=` (Unix seconds) pin the range; else the range picker, back from now.
function params(extra = {}) {
  const pinned = new URLSearchParams(location.search);
  const p = pinned.get("from") && pinned.get("to")
    ? new URLSearchParams({ from: pinned.get("from"), to: pinned.get("to") })
    : new URLSearchParams({ range: document.getElementById("range").value });
  for (const [k, v] of Object.entries(extra)) if (v !== undefined && v !== "") p.set(k, v);
  return p.toString();
}
async function getJSON(path, extra) {
  const r = await fetch(`${path}?${params(extra)}`, { credentials: "same-origin" });
  const body = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
  if (!r.ok) throw new Error(body.error || `${r.status}`);
  document.getElementById("source").textContent = body.source ? `data: ${body.source}` : "";
  return body;
}

function stat(label, value, cls = "span3") {
  return `<div class="card stat ${cls}"><div class="l">${esc(label)}</div><div class="v">${value}</div></div>`;
}

/// A table: `cols` are [header, cell(row) -> html, numeric?]; `id` names it for tests.
function table(id, title, rows, cols, cls = "") {
  const head = cols.map(([h, , n]) => `<th class="${n ? "n" : ""}">${esc(h)}</th>`).join("");
  const body = rows.length
    ? rows.map((r) => `<tr>${cols.map(([, f, n]) => `<td class="${n ? "n" : ""}">${f(r)}</td>`).join("")}</tr>`).join("")
    : "";
  const empty = rows.length ? "" : `<div class="empty">none in this range</div>`;
  return `<div class="card ${cls}"><h2>${esc(title)}</h2><table data-table="${id}" data-rows="${rows.length}">
    <thead><tr>${head}</tr></thead><tbody>${body}</tbody></table>${empty}</div>`;
}

function chartCard(id, title, cls = "") {
  return `<div class="card ${cls}"><h2>${esc(title)}</h2><div class="chart" id="chart-${id}" data-chart="${id}"></div></div>`;
}

/// Draws `series` ({t, lines:[{label, values}]}) into the card `id`; `stacked` stacks areas, `dashed` labels
/// get dashed strokes.
function drawChart(id, series, { stacked = false, dashed = [], unit = "req/s", counts = false } = {}) {
  const el = document.getElementById(`chart-${id}`);
  if (!el) return;
  const lines = series.lines || [];
  const nonEmpty = lines.filter((l) => l.values.some((v) => v > 0)).length;
  el.dataset.series = String(lines.length);
  el.dataset.nonempty = String(nonEmpty);
  const raw = lines.map((l) => l.values);
  let data = raw;
  if (stacked) {
    const acc = new Array(series.t.length).fill(0);
    data = raw.map((vals) => vals.map((v, i) => (acc[i] += v)));
    data = data.slice().reverse();
  }
  const ordered = stacked ? lines.slice().reverse() : lines;
  const rawOrdered = stacked ? raw.slice().reverse() : raw;
  const opts = {
    width: Math.max(300, el.clientWidth - 4),
    height: 260,
    scales: { x: { time: true } },
    axes: [{}, counts
      ? { values: (u, ticks) => ticks.map((v) => (Number.isInteger(v) ? num(v) : "")), size: 60, label: unit }
      : { values: (u, ticks) => ticks.map((v) => num(v, v < 10 ? 2 : 0)), size: 60, label: unit }],
    legend: { live: true },
    series: [{}].concat(ordered.map((l, i) => {
      const color = PALETTE[(stacked ? ordered.length - 1 - i : i) % PALETTE.length];
      return {
        label: l.label,
        stroke: color,
        width: 1.5,
        points: { show: false },
        dash: dashed.includes(l.label) ? [6, 4] : undefined,
        fill: stacked ? color + "cc" : undefined,
        value: (u, v, si, idx) => (idx == null ? "" : num(rawOrdered[si - 1][idx], 3)),
      };
    })),
  };
  el.innerHTML = "";
  state.charts.push(new uPlot(opts, [series.t].concat(data), el));
}

const SEVERITY = { critical: "bad", warning: "warn", info: "" };

/// Findings, newest first: severity, title, links to the subject's API and application, explanation, evidence.
function insightsList(items) {
  if (!items.length) return `<div class="empty">no findings in this range</div>`;
  return `<ul class="timeline" data-table="insights" data-rows="${items.length}">${items.map((i) => `
    <li class="sev-${esc(i.severity)}"><div><span class="pill ${SEVERITY[i.severity] ?? ""}">${esc(i.severity || "finding")}</span>
      <b>${esc(i.title || i.kind)}</b> <span class="pill">${esc(i.kind)}</span>
      ${i.status === "closed" ? `<span class="pill ok">closed</span>` : ""}</div>
      <div class="muted">${subjectLinks(i)}${i.team ? " · team " + esc(i.team) : ""} · first seen ${esc(when(i.first_seen))}
        · last seen ${esc(when(i.last_seen))}${i.version > 1 ? ` · version ${esc(i.version)}` : ""}</div>
      <div>${esc(i.explanation)}</div>${evidenceTable(i.evidence || {})}</li>`).join("")}</ul>`;
}
function subjectLinks(i) {
  const parts = [];
  if (i.app_id) parts.push("application " + link("app", i.app_id, i.app_name || i.app_id));
  else if (i.workload) parts.push(`workload <span class="mono">${esc(i.workload)}</span>`);
  if (i.api_id) parts.push("API " + link("api", i.api_id, i.api_name || i.api_id));
  if (i.route) parts.push(`route <span class="mono">${esc(i.route)}</span>`);
  if (i.key_id) parts.push("key " + esc(i.key_id));
  return parts.length ? parts.join(" · ") : esc(i.subject);
}
/// The figures behind a finding as a small two-column table (names humanised, numbers formatted).
function evidenceTable(ev) {
  const rows = Object.entries(ev).filter(([, v]) => v !== null && v !== "" && !(Array.isArray(v) && !v.length));
  if (!rows.length) return "";
  const fmt = (v) => (typeof v === "number" ? num(v, Number.isInteger(v) ? 0 : 2)
    : Array.isArray(v) ? v.map(esc).join(", ") : typeof v === "object" ? esc(JSON.stringify(v)) : esc(v));
  return `<table class="evidence" data-evidence="${rows.length}">${rows.map(([k, v]) =>
    `<tr><th>${esc(k.replaceAll("_", " "))}</th><td class="${typeof v === "number" ? "n" : ""}">${fmt(v)}</td></tr>`).join("")}</table>`;
}

// ---------------------------------------------------------------------------------------------------------------
// Pages

const pages = {
  async overview() {
    const d = await getJSON("/api/overview");
    $main.innerHTML = `<h1>Overview <small>consumption by line of business → API → application</small></h1>
      <div class="grid">
        ${stat("Requests", num(d.totals.requests))}
        ${stat("Server error rate", pct(d.totals.error_rate))}
        ${stat("p95 latency", num(d.totals.p95_ms, 1) + " ms")}
        ${stat("New applications", num(d.new_apps.length))}
        ${chartCard("consumption", "Requests per second by line of business / API / application (stacked)")}
        ${table("apis", "APIs", d.apis, [
          ["API", (r) => (r.api_id ? link("api", r.api_id, r.api_name) : esc(r.api_name))],
          ["Requests", (r) => num(r.requests), 1], ["Errors", (r) => num(r.errors), 1],
          ["Error rate", (r) => pct(r.error_rate), 1], ["p95 ms", (r) => num(r.p95_ms, 1), 1]], "span6")}
        ${table("new-apps", "New applications in the range", d.new_apps, [
          ["Application", (r) => link("app", r.app_id, r.name)], ["Team", (r) => esc(r.team)],
          ["First seen", (r) => when(r.first_seen)], ["APIs", (r) => esc(r.apis.join(", "))],
          ["Requests", (r) => num(r.requests), 1]], "span6")}
        ${table("new-consumers", "New shadow consumers (no application claims them)", d.new_consumers, [
          ["Workload (process, cgroup, source)", (r) => `<span class="mono">${esc(r.name)}</span>`],
          ["First seen", (r) => when(r.first_seen)], ["APIs", (r) => esc(r.apis.join(", "))],
          ["Requests", (r) => num(r.requests), 1]], "span6")}
        <div class="card span6"><h2>Open insights</h2>${insightsList(d.insights)}</div>
      </div>`;
    drawChart("consumption", d.consumption, { stacked: true });
  },

  async api(id) {
    if (!id) return pickList("api", "APIs", (await getJSON("/api/meta")).apis);
    const d = await getJSON(`/api/apis/${encodeURIComponent(id)}`);
    $main.innerHTML = `<h1>${esc(d.api_name)} <small>API ${esc(d.api_id)}${d.owner ? " · owner " + esc(d.owner) : ""}</small></h1>
      <div class="grid">
        ${stat("Requests", num(d.totals.requests))}
        ${stat("Server error rate", pct(d.totals.error_rate))}
        ${stat("p50 latency", num(d.totals.p50_ms, 1) + " ms")}
        ${stat("p95 latency", num(d.totals.p95_ms, 1) + " ms")}
        ${chartCard("rate", "Requests per second by application")}
        ${table("routes", "Routes", d.routes, [
          ["Method", (r) => esc(r.method)], ["Route", (r) => `<span class="mono">${esc(r.route)}</span>`],
          ["Requests", (r) => num(r.requests), 1], ["Errors", (r) => num(r.errors), 1],
          ["Error rate", (r) => pct(r.error_rate), 1], ["p50 ms", (r) => num(r.p50_ms, 1), 1],
          ["p95 ms", (r) => num(r.p95_ms, 1), 1]], "span6")}
        ${table("consumers", "Consumers", d.consumers, [
          ["Application", (r) => (r.app_id ? link("app", r.app_id, r.app_name) : `<i>${esc(r.app_name)}</i>`)],
          ["By", (r) => esc(r.attributed_by)], ["Key", (r) => esc(r.key_suffix ? "…" + r.key_suffix : "")],
          ["Key state", (r) => keyPill(r.key_state)],
          ["Workloads", (r) => `<span class="mono">${esc(r.workloads.join("; "))}</span>`],
          ["Requests", (r) => num(r.requests), 1], ["Errors", (r) => num(r.errors), 1]], "span6")}
        <div class="card"><h2>Insights about this API</h2>${insightsList(d.insights)}</div>
        <div class="card" id="composition"></div>
      </div>`;
    drawChart("rate", d.rate);
    await originSections.composition(id);
  },

  async app(id) {
    if (!id) return pickList("app", "Applications", (await getJSON("/api/meta")).apps);
    const d = await getJSON(`/api/apps/${encodeURIComponent(id)}`);
    const pred = d.predecessor_id ? ` · replaces ${link("app", d.predecessor_id, d.predecessor_name)}` : "";
    const thisRate = d.compare.lines.find((l) => l.label === "this_app");
    const predRate = d.compare.lines.find((l) => l.label === "predecessor");
    const mean = (l) => (l ? l.values.reduce((a, b) => a + b, 0) / Math.max(1, l.values.length) : 0);
    const ratio = predRate && mean(predRate) > 0 ? num(mean(thisRate) / mean(predRate), 1) + "×" : "–";
    $main.innerHTML = `<h1>${esc(d.app_name)} <small>team ${esc(d.team)} · ${esc(d.line_of_business)}${pred}</small></h1>
      <div class="grid">
        ${stat("Requests", num(d.totals.requests))}
        ${stat("Server error rate", pct(d.totals.error_rate))}
        ${stat("Baseline req/s", num(d.baseline_rps, 3))}
        ${stat("Rate vs predecessor", ratio)}
        ${chartCard("compare", "Rate vs baseline (the window before) vs predecessor, req/s")}
        ${table("calls", "APIs and routes it calls", d.calls, [
          ["API", (r) => (r.api_id ? link("api", r.api_id, r.api_name) : esc(r.api_name))],
          ["Method", (r) => esc(r.method)], ["Route", (r) => `<span class="mono">${esc(r.route)}</span>`],
          ["Requests", (r) => num(r.requests), 1], ["Errors", (r) => num(r.errors), 1],
          ["p95 ms", (r) => num(r.p95_ms, 1), 1]], "span8")}
        ${table("errors", "Errors it receives", d.errors, [
          ["Status", (r) => (r.status === 0 ? "no response" : esc(r.status))], ["Calls", (r) => num(r.requests), 1]], "span4")}
        ${grantTable("keys", "Its keys and grants", d.keys)}
        <div class="card"><h2>Insights about this application</h2>${insightsList(d.insights)}</div>
        <div class="card" id="downstream"></div>
      </div>`;
    drawChart("compare", d.compare, { dashed: ["baseline"] });
    await originSections.downstream(id);
  },

  async access() {
    const d = await getJSON("/api/access");
    $main.innerHTML = `<h1>Access and audit <small>who can call what, and who does</small></h1>
      <div class="grid">
        ${stat("Grants", num(d.grants.length))}
        ${stat("Unused grants", num(d.unused.length))}
        ${stat("Calls outside their grant", num(d.outside.reduce((a, r) => a + r.calls, 0)))}
        ${stat("Shadow consumers", num(d.shadow.length))}
        ${grantTable("grants", "Who can call what (keys → grants → APIs)", d.grants)}
        ${grantTable("unused", "Grants unused in the range", d.unused)}
        ${table("shared", "Shared keys (several workloads)", d.shared, [
          ["Key", (r) => esc("…" + r.key_suffix)], ["Application", (r) => esc(r.app_name)],
          ["Workloads", (r) => `<span class="mono">${esc(r.workloads.join("; "))}</span>`],
          ["Calls", (r) => num(r.calls), 1]])}
        ${table("outside", "Keys used outside their grant", d.outside, [
          ["Key", (r) => esc("…" + r.key_suffix)], ["Application", (r) => esc(r.app_name)],
          ["API", (r) => esc(r.api_name)], ["State", (r) => keyPill(r.key_state)],
          ["Granted by", (r) => esc(r.granted_by)], ["Revoked by", (r) => esc(r.revoked_by)],
          ["Workloads", (r) => `<span class="mono">${esc(r.workloads.join("; "))}</span>`],
          ["Calls", (r) => num(r.calls), 1], ["Last seen", (r) => when(r.last_seen)]])}
        ${table("shadow", "Shadow consumers (no application claims them)", d.shadow, [
          ["Process", (r) => esc(r.client_comm)], ["cgroup", (r) => `<span class="mono">${esc(r.client_cgroup)}</span>`],
          ["Source", (r) => esc(r.src_ip)], ["APIs", (r) => esc(r.apis.join(", "))],
          ["Calls", (r) => num(r.calls), 1], ["With a key", (r) => num(r.with_key), 1],
          ["First seen", (r) => when(r.first_seen)], ["Last seen", (r) => when(r.last_seen)]])}
      </div>`;
  },

  async insights() {
    const f = state.filters || (state.filters = { team: "", kind: "" });
    const d = await getJSON("/api/insights", f);
    const opts = (vals, cur) => `<option value="">all</option>` +
      vals.map((v) => `<option ${v === cur ? "selected" : ""}>${esc(v)}</option>`).join("");
    $main.innerHTML = `<h1>Insights <small>findings with their explanation and evidence</small></h1>
      <div class="filters">
        <label>Team <select id="f-team">${opts(d.teams, f.team)}</select></label>
        <label>Kind <select id="f-kind">${opts(d.kinds, f.kind)}</select></label>
      </div>
      <div class="grid">
        ${chartCard("findings", "Findings active per interval, by kind (stacked)")}
        <div class="card">${insightsList(d.items)}</div>
      </div>`;
    document.getElementById("f-team").onchange = (e) => { f.team = e.target.value; render(); };
    document.getElementById("f-kind").onchange = (e) => { f.kind = e.target.value; render(); };
    drawChart("findings", d.timeline, { stacked: true, unit: "findings", counts: true });
  },

  async tail() {
    const q = state.tailQuery || "";
    const d = await getJSON("/api/tail", { q, limit: 200 });
    $main.innerHTML = `<h1>Live tail <small>the last exchanges with their business context</small></h1>
      <div class="filters"><input id="tail-q" placeholder="filter: application, API, path, process, key…" value="${esc(q)}"></div>
      <div class="grid">${table("tail", `Last ${d.rows.length} exchanges`, d.rows, [
        ["Time", (r) => when(r.ts)], ["Application", (r) => (r.app_id ? link("app", r.app_id, r.app_name || r.app_id) : `<i>${esc(r.client_comm)}</i>`)],
        ["Team", (r) => esc(r.app_team)], ["API", (r) => (r.api_id ? link("api", r.api_id, r.api_name) : esc(r.host))],
        ["Request", (r) => `<span class="mono">${esc(r.method)} ${esc(r.path)}</span>`],
        ["Status", (r) => esc(r.status), 1], ["ms", (r) => num(r.duration_ms, 1), 1],
        ["Key", (r) => esc(r.key_suffix ? "…" + r.key_suffix : "")], ["Key state", (r) => keyPill(r.key_state)],
        ["Side", (r) => esc(r.side)]])}</div>`;
    const input = document.getElementById("tail-q");
    input.onchange = () => { state.tailQuery = input.value; render(); };
  },
};

function grantTable(id, title, rows, cls = "") {
  return table(id, title, rows, [
    ["Key", (r) => esc(r.key_id) + ` <span class="muted">…${esc(r.key_suffix)}</span>`],
    ["Application", (r) => link("app", r.app_id, r.app_name)], ["Team", (r) => esc(r.team)],
    ["API", (r) => link("api", r.api_id, r.api_name)], ["State", (r) => keyPill(r.state)],
    ["Granted by", (r) => esc(r.granted_by)], ["Valid from", (r) => when(r.valid_from)],
    ["Valid until", (r) => when(r.valid_until)], ["Revoked", (r) => (r.revoked_at ? esc(r.revoked_by) + " " + when(r.revoked_at) : "")],
    ["Calls", (r) => num(r.calls), 1], ["First use", (r) => when(r.first_used)], ["Last use", (r) => when(r.last_used)],
  ], cls);
}

function pickList(route, title, items) {
  $main.innerHTML = `<h1>${esc(title)}</h1><div class="grid">${table(route + "-list", title, items, [
    ["Name", (r) => link(route, r[0], r[1] || r[0])], ["Id", (r) => `<span class="mono">${esc(r[0])}</span>`]])}</div>`;
}

// ---------------------------------------------------------------------------------------------------------------
// Routing and refresh

async function render() {
  const seq = ++state.seq;
  const [, page = "overview", ...rest] = (location.hash || "#/overview").split("/");
  const id = rest.length ? decodeURIComponent(rest.join("/")) : "";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  state.charts.forEach((c) => c.destroy());
  state.charts = [];
  document.body.dataset.ready = "0";
  try {
    await (pages[page] || pages.overview)(id);
  } catch (e) {
    if (seq === state.seq) $main.innerHTML = `<div class="error">Could not load this page: ${esc(e.message)}</div>`;
    markError(e.message);
  }
  if (seq === state.seq) document.body.dataset.ready = "1";
}

function schedule() {
  clearInterval(state.timer);
  const secs = Number(document.getElementById("refresh").value);
  if (secs > 0) state.timer = setInterval(render, secs * 1000);
}

const saved = new URLSearchParams(location.search);
if (saved.get("range")) document.getElementById("range").value = saved.get("range");
if (saved.get("refresh")) document.getElementById("refresh").value = saved.get("refresh");
document.getElementById("range").onchange = render;
document.getElementById("refresh").onchange = schedule;
window.addEventListener("hashchange", render);
schedule();
render();
