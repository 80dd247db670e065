// The live page: fetches /v1/overview and /v1/dead-letters every 2 s and writes the figures.
// Data goes in with textContent only (never innerHTML): task errors are user text.
"use strict";
const REFRESH_MS = 2000;
let refreshes = 0;

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("mesh-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);  // keep the token out of the address bar
  }
  return sessionStorage.getItem("mesh-token") || "";
}

async function getJSON(path) {
  const headers = {};
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const response = await fetch(path, { headers, cache: "no-store" });
  const body = await response.json();
  if (!response.ok) {
    const err = new Error(body.detail || response.statusText);
    err.status = response.status;
    throw err;
  }
  return body;
}

function text(id, value) {
  const el = document.getElementById(id);
  if (el) el.textContent = value;
}

function num(value) {
  return value === undefined || value === null ? "–" : Math.round(value).toLocaleString("en");
}

function bytes(value) {
  if (value === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (value >= 1024 && i < units.length - 1) { value /= 1024; i++; }
  return value.toFixed(i ? 1 : 0) + " " + units[i];
}

function row(tbody, cells, cls) {
  const tr = document.createElement("tr");
  for (const [value, c] of cells) {
    const td = document.createElement("td");
    td.textContent = value;
    if (c) td.className = c;
    tr.appendChild(td);
  }
  if (cls) tr.className = cls;
  tbody.appendChild(tr);
}

function render(overview, dead) {
  const totals = overview.totals;
  for (const name of ["queued", "inflight", "retry_waiting", "nodes", "succeeded",
                      "dead_letters", "tasks"]) {
    text("fig-" + name, num(totals[name]));
  }
  const up = overview.helpers.filter((h) => h.up).length;
  const health = document.getElementById("health");
  health.textContent = `${up}/${overview.helpers.length} Helpers answering`;
  health.className = "badge " + (up ? "ok" : "bad");
  text("updated", overview.generated_at);

  const helpers = document.querySelector("#helpers tbody");
  helpers.replaceChildren();
  for (const h of overview.helpers) {
    const s = h.stats || {};
    row(helpers, [[h.endpoint], [h.up ? "up" : "down: " + h.error, h.up ? "" : "down"],
                  [num(s.nodes)], [num(s.queued)], [num(s.inflight)], [num(s.dead_letters)],
                  [bytes(s.journal_bytes)], [num(s.result_waiters)]]);
  }

  const nodes = document.querySelector("#nodes tbody");
  nodes.replaceChildren();
  for (const n of overview.nodes || []) {
    row(nodes, [[n.id], [n.host || n.endpoint], [n.state, n.state === "alive" ? "" : "down"],
                [num(n.credit)], [num(n.held)], [`${num(n.running)} / ${num(n.concurrency)}`],
                [n.version || "?"], [n.last_beat_s.toFixed(1) + " s ago"], [n.helper]]);
  }
  const queues = document.querySelector("#queues tbody");
  queues.replaceChildren();
  for (const q of overview.queues || []) {
    row(queues, [[q.kind], [num(q.depth)], [q.oldest_age_s.toFixed(1) + " s"]]);
  }

  const deadBody = document.querySelector("#dead tbody");
  deadBody.replaceChildren();
  for (const t of (dead ? dead.tasks : []).slice(0, 20)) {
    row(deadBody, [[t.id], [t.kind], [t.dead_reason || ""], [String(t.attempts)],
                   [(t.error || "").slice(0, 200)], [t.finished_at || ""]]);
  }

  const alerts = document.querySelector("#alerts tbody");
  alerts.replaceChildren();
  for (const a of overview.alerts || []) {
    const bad = a.severity === "error" || a.severity === "critical";
    row(alerts, [[a.time || ""], [a.severity, bad ? "down" : ""], [a.kind], [a.source],
                 [a.publisher]]);
  }

  const gw = overview.gateway;
  text("gw-long_polls", num(gw.long_polls));
  text("gw-failovers", num(gw.failovers));
  text("gw-suspects", Object.keys(gw.suspect_helpers).join(", ") || "none");
  text("gw-version", gw.version);

  const missing = document.getElementById("missing");
  missing.replaceChildren();
  document.getElementById("missing-section").hidden = !overview.missing.length;
  for (const m of overview.missing) {
    const li = document.createElement("li");
    li.textContent = m;
    missing.appendChild(li);
  }
}

async function refresh() {
  const error = document.getElementById("error");
  try {
    const [overview, dead] = await Promise.all([
      getJSON("/v1/overview"), getJSON("/v1/dead-letters?limit=20").catch(() => null)]);
    render(overview, dead);
    error.hidden = true;
    refreshes++;
    text("refreshes", String(refreshes));
  } catch (err) {
    error.textContent = "cannot load the overview: " + err.message;
    error.hidden = false;
    if (err.status === 401 || err.status === 403) {
      document.getElementById("token-form").hidden = false;
    }
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("mesh-token", document.getElementById("token").value);
  document.getElementById("token-form").hidden = true;
});

refresh();
