// observer UI: the origin sections (loaded before app.js, whose helpers they use when called): an application's
// downstream cost and an API's composition, from /api/apps/{id}/downstream and /api/apis/{id}/composition.
"use strict";

const originSections = {
  /// Fills the element `#downstream` of the application page; never throws (the rest of the page stands).
  async downstream(id) {
    const el = document.getElementById("downstream");
    const title = "Downstream cost: calls made on its behalf to services it never calls itself";
    try {
      const d = await getJSON(`/api/apps/${encodeURIComponent(id)}/downstream`);
      if (!d.available) return originSections.note(el, title, "Needs the ClickHouse store (origin across hops).");
      el.outerHTML = table("downstream", title, d.services, [
        ["Service", (r) => `<span class="mono">${esc(r.service)}</span>`], ["Calls", (r) => num(r.calls), 1],
        ["Errors", (r) => num(r.errors), 1], ["Error rate", (r) => pct(r.error_rate), 1],
        ["avg ms", (r) => num(r.avg_ms, 1), 1], ["p95 ms", (r) => num(r.p95_ms, 1), 1],
        ["Deepest hop", (r) => num(r.max_hop), 1]]);
    } catch (e) {
      originSections.note(el, title, "Could not load: " + e.message);
    }
  },

  /// Fills the element `#composition` of the API page: the edges one external call fans out along.
  async composition(id) {
    const el = document.getElementById("composition");
    const title = "Composition: what one external call fans out to";
    try {
      const d = await getJSON(`/api/apis/${encodeURIComponent(id)}/composition`);
      if (!d.available) return originSections.note(el, title, "Needs the ClickHouse store (origin across hops).");
      el.outerHTML = table("composition", `${title} (${num(d.external_calls)} external calls)`, d.edges, [
        ["Hop", (r) => num(r.hop), 1], ["Caller", (r) => `<span class="mono">${esc(r.source)}</span>`],
        ["Callee", (r) => `<span class="mono">${esc(r.target)}</span>`], ["Calls", (r) => num(r.calls), 1],
        ["Per external call", (r) => num(r.per_call, 2), 1], ["Errors", (r) => num(r.errors), 1],
        ["p95 ms", (r) => num(r.p95_ms, 1), 1]]);
    } catch (e) {
      originSections.note(el, title, "Could not load: " + e.message);
    }
  },

  note(el, title, text) {
    if (el) el.innerHTML = `<h2>${esc(title)}</h2><div class="empty">${esc(text)}</div>`;
  },
};
