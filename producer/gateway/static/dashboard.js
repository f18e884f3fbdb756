// The warmpool dashboard: polls /ui/data (status + counts history) and follows /v1/events (SSE).
// No framework, no build step, nothing from another origin; every value is set as text (never HTML).
"use strict";

const STATES = ["idle", "assigned", "pending", "releasing", "quarantined", "foreign"];
const SERIES = ["idle", "assigned", "pending", "waiting"];
const EVENT_TYPES = ["assigned", "released", "lease_expired", "lost", "launched", "ready", "terminated",
  "capped", "launch_failed", "target_changed", "paused", "resumed", "adopted", "unreadable"];
const POLL_MS = 5000;
const MAX_EVENTS = 100;
const SVG = "http://www.w3.org/2000/svg";

const $ = (id) => document.getElementById(id);
let windowS = 3600;
let refreshTimer = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function poolSection(name) {
  const box = $("pools");
  for (const section of box.children) if (section.dataset.pool === name) return section;
  const section = $("pool-template").content.firstElementChild.cloneNode(true);
  section.dataset.pool = name;
  section.querySelector(".pool-name").textContent = name;
  box.append(section);
  return section;
}

function renderCounts(section, status) {
  const box = section.querySelector(".counts");
  box.replaceChildren();
  const counts = status.counts || {};
  for (const state of STATES) {
    const card = el("div", null, "count " + state);
    card.dataset.state = state;
    card.append(el("b", counts[state] || 0), el("span", state));
    box.append(card);
  }
  const waiting = (status.waiting || []).length;
  const card = el("div", null, "count waiting");
  card.dataset.state = "waiting";
  card.append(el("b", waiting), el("span", "waiting callers"));
  box.append(card);
}

function renderTable(table, rows) {
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const cells of rows) {
    const tr = el("tr");
    for (const [text, cls] of cells) tr.append(el("td", text === null || text === undefined ? "-" : text, cls));
    body.append(tr);
  }
}

function renderMachines(section, status) {
  renderTable(section.querySelector(".machines"), (status.machines || []).map((m) => [
    [m.instance_id], [m.state, "state-" + m.state], [m.hidden ? "(another team)" : m.project_id], [m.ip], [m.since],
  ]));
  const waiting = status.waiting || [];
  section.querySelector(".waiting-count").textContent = "(" + waiting.length + ")";
  renderTable(section.querySelector(".waiting-callers"), waiting.map((w) => [[w.project_id], [w.since], [w.deadline]]));
}

function renderChart(chart, history) {
  chart.replaceChildren();
  const W = 720, H = 220, L = 34, R = 8, T = 10, B = 22;
  const now = Date.now() / 1000;
  const start = now - windowS;
  const top = Math.max(2, ...history.flatMap((s) => SERIES.map((k) => s[k] || 0)));
  const x = (t) => L + ((Math.max(t, start) - start) / windowS) * (W - L - R);
  const y = (v) => H - B - (v / top) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = Math.round((top * i) / 4);
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    const label = svg("text", { x: 4, y: y(v) + 4 });
    label.textContent = String(v);
    chart.append(label);
  }
  for (let m = 60; m >= 0; m -= 15) {
    const label = svg("text", { x: x(now - m * 60) - 12, y: H - 6 });
    label.textContent = m ? "-" + m + "m" : "now";
    chart.append(label);
  }
  const shown = history.filter((s) => s.t >= start);
  for (const key of SERIES) {
    // A step line: each sample holds until the next one, the last one until now.
    const points = [];
    shown.forEach((s, i) => {
      const until = i + 1 < shown.length ? shown[i + 1].t : now;
      points.push(x(s.t).toFixed(1) + "," + y(s[key] || 0).toFixed(1));
      points.push(x(until).toFixed(1) + "," + y(s[key] || 0).toFixed(1));
    });
    chart.append(svg("polyline", { points: points.join(" "), class: key, "data-series": key }));
  }
}

async function refresh() {
  refreshTimer = null;
  try {
    const answer = await fetch("/ui/data", { credentials: "same-origin", cache: "no-store" });
    if (answer.status === 401) { window.location.reload(); return; }
    if (!answer.ok) throw new Error("status " + answer.status);
    const data = await answer.json();
    windowS = data.history_window_s || windowS;
    $("who").textContent = data.who ? "token: " + data.who : "";
    const refreshed = [];
    for (const pool of data.pools || []) {
      const section = poolSection(pool.pool);
      follow(pool.pool);
      section.querySelector(".pool-error").textContent = pool.error ? "this pool did not answer: " + pool.error : "";
      if (!pool.status) continue;
      renderCounts(section, pool.status);
      renderMachines(section, pool.status);
      renderChart(section.querySelector(".chart"), pool.history || []);
      section.dataset.assigned = String((pool.status.counts || {}).assigned || 0);
      if (pool.status.refreshed_at) refreshed.push(pool.pool + " refreshed from AWS at " + pool.status.refreshed_at);
    }
    $("foot").textContent = "updated " + new Date().toLocaleTimeString() + (refreshed.length ? "; " + refreshed.join("; ") : "");
  } catch (err) {
    $("foot").textContent = "cannot read the pool status (" + err.message + "): retrying";
  }
}

function soon() {
  if (refreshTimer === null) refreshTimer = setTimeout(refresh, 300);
}

function addEvent(event, notice) {
  const list = $("events");
  const item = el("li", null, notice ? "notice" : "");
  item.dataset.type = event.type || "";
  if (event.id) item.dataset.id = event.id;
  item.append(el("span", event.type, "type"));
  if (event.pool) item.append(el("span", event.pool, "pool"));
  const detail = ["project_id", "instance_id", "reason"].filter((k) => event[k]).map((k) => k.replace("_id", "") + "=" + event[k]);
  item.append(el("span", (event.at || "") + " " + detail.join(" ") + (event.message ? " " + event.message : "")));
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

const sources = new Map();  // pool -> its EventSource

function showLive() {
  const live = $("live");
  const open = [...sources.values()].every((s) => s.readyState === EventSource.OPEN);
  live.textContent = open ? "live" : "reconnecting";
  live.className = open ? "badge on" : "badge off";
}

function follow(pool) {
  if (sources.has(pool)) return;
  const source = new EventSource("/v1/pools/" + encodeURIComponent(pool) + "/events?last=50");
  sources.set(pool, source);
  source.onopen = showLive;
  source.onerror = showLive;
  const onEvent = (message) => {
    try { addEvent(JSON.parse(message.data), false); } catch (err) { return; }
    soon();
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, onEvent);
  source.addEventListener("message", onEvent);
  source.addEventListener("notice", (message) => addEvent(JSON.parse(message.data), true));
}

refresh();
setInterval(refresh, POLL_MS);
