// hybrid-lb dashboard: history first, then one snapshot per second over SSE.
"use strict";

const KEEP = 300; // points per series: five minutes at one per second
const COLORS = ["#0b62c4", "#c2410c", "#15803d", "#7c3aed", "#be123c", "#0e7490", "#a16207", "#4b5563"];
const charts = {};
const rows = new Map();
let token = sessionStorage.getItem("hlb-token") || "";
// The pool shown (its upstreams, its charts); the first if unset or gone.
let pool = sessionStorage.getItem("hlb-pool") || "";
let lastSnapshot = null;

const $ = (sel) => document.querySelector(sel);
const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
const color = (i) => COLORS[i % COLORS.length];

function makeChart(id, yTitle) {
  return new Chart(document.getElementById(id), {
    type: "line",
    data: { datasets: [] },
    options: {
      animation: false,
      maintainAspectRatio: false,
      parsing: false,
      normalized: true,
      spanGaps: true,
      elements: { point: { radius: 0 }, line: { borderWidth: 2 } },
      interaction: { mode: "nearest", axis: "x", intersect: false },
      scales: {
        // The axis ends with the data, not at the next round tick.
        x: { type: "linear", bounds: "data", ticks: { callback: (v) => clock(v), maxTicksLimit: 6 } },
        y: { beginAtZero: true, title: { display: !!yTitle, text: yTitle } },
      },
      // The legend lists the shown pool's upstreams only.
      // Line-shaped legend marks, so a dashed series reads as dashed; only
      // the shown pool's upstreams.
      plugins: {
        legend: {
          labels: {
            usePointStyle: true,
            pointStyle: "line",
            filter: (item, data) => !data.datasets[item.datasetIndex].hidden,
          },
        },
      },
    },
  });
}

// Each chart: which series to draw per upstream.
const SERIES = {
  latency: [
    { key: "ewma", label: (n) => `${n} EWMA` },
    { key: "p95", label: (n) => `${n} p95`, dash: [4, 3] },
  ],
  weights: [
    { key: "effective_weight", label: (n) => `${n} effective` },
    { key: "base_weight", label: (n) => `${n} base`, dash: [4, 3] },
  ],
  rps: [{ key: "rps", label: (n) => n }],
  inflight: [
    { key: "inflight_avg", label: (n) => `${n} average` },
    { key: "inflight", label: (n) => `${n} now`, dash: [4, 3] },
  ],
  errors: [
    { key: "server_error_rate", label: (n) => `${n} 5xx`, scale: 100 },
    { key: "error_rate", label: (n) => `${n} failures`, dash: [4, 3], scale: 100 },
  ],
};

function dataset(chart, series, upstream, index) {
  const label = series.label(upstream);
  let ds = chart.data.datasets.find((d) => d.label === label);
  if (!ds) {
    ds = { label, data: [], borderColor: color(index), backgroundColor: color(index), borderDash: series.dash || [] };
    ds.upstream = upstream;
    ds.hidden = shownNames !== null && !shownNames.has(upstream);
    chart.data.datasets.push(ds);
  }
  return ds;
}

// A point is the server's HistoryPoint (src/dashboard/hub.rs), from /api/history
// and from the stream's "point" events alike.
let lastTime = 0;

function addPoint(point) {
  if (point.time <= lastTime) return; // the stream starts with the latest point again
  lastTime = point.time;
  point.upstreams.forEach((u, i) => {
    for (const [name, list] of Object.entries(SERIES)) {
      for (const s of list) {
        const ds = dataset(charts[name], s, u.name, i);
        const v = u[s.key];
        ds.data.push({ x: point.time, y: v === null || v === undefined ? null : v * (s.scale || 1) });
        if (ds.data.length > KEEP) ds.data.shift();
      }
    }
  });
}

function badge(cls, text) {
  const b = document.createElement("span");
  b.className = `badge ${cls}`;
  b.textContent = text;
  return b;
}

function row(u) {
  let r = rows.get(u.name);
  if (r) return r;
  const tr = document.createElement("tr");
  tr.dataset.upstream = u.name;
  tr.innerHTML = `
    <td><div class="name"></div><div class="addr"></div></td>
    <td class="status"></td>
    <td class="num weight"></td>
    <td class="num inflight"></td>
    <td class="num rps"></td>
    <td class="num errors"></td>
    <td class="num latency"></td>
    <td class="why"></td>
    <td class="demo"></td>
    <td class="admin">
      <button type="button" class="drain">Drain</button>
      <button type="button" class="enable">Enable</button>
      <input type="number" min="1" max="10000" class="weight-input" aria-label="new weight">
      <button type="button" class="set-weight">Set weight</button>
    </td>`;
  tr.querySelector(".name").textContent = u.name;
  tr.querySelector(".addr").textContent = u.addr;
  tr.querySelector(".drain").addEventListener("click", () => admin(u.name, "POST", "drain"));
  tr.querySelector(".enable").addEventListener("click", () => admin(u.name, "POST", "enable"));
  tr.querySelector(".set-weight").addEventListener("click", () => {
    const w = Number(tr.querySelector(".weight-input").value);
    admin(u.name, "PUT", "weight", { weight: w });
  });
  $("#upstreams tbody").appendChild(tr);
  rows.set(u.name, tr);
  return tr;
}

const DEMO_ACTIONS = ["slow", "failing", "unhealthy", "normal"];

// The demo controls of a row whose upstream is a demo backend, built once.
function demoControls(tr, name) {
  const cell = tr.querySelector(".demo");
  if (cell.childElementCount > 0) return cell;
  for (const action of DEMO_ACTIONS) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `demo-${action}`;
    b.textContent = action;
    b.addEventListener("click", () => demo(name, action));
    cell.appendChild(b);
  }
  return cell;
}

async function demo(name, action) {
  const status = $("#admin-status");
  const resp = await fetch(`/api/demo/${encodeURIComponent(name)}/${action}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: "{}",
  });
  status.textContent = resp.ok ? `${name}: made ${action}` : `${name}: ${resp.status} ${(await resp.text()).trim()}`;
  status.className = resp.ok ? "ok" : "error";
}

// The names of the shown pool's upstreams: the charts draw only theirs.
let shownNames = null;

function showOnly(names) {
  shownNames = names;
  for (const c of Object.values(charts)) {
    for (const ds of c.data.datasets) ds.hidden = !names.has(ds.upstream);
    c.update("none");
  }
}

// One button per pool, when there are several; the shown one pressed.
function renderPools(pools) {
  const nav = $("#pools");
  nav.hidden = pools.length < 2;
  const names = pools.map((p) => p.name).join(",");
  if (nav.dataset.names !== names) {
    nav.dataset.names = names;
    nav.replaceChildren(...pools.map((p) => {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.pool = p.name;
      b.addEventListener("click", () => {
        pool = p.name;
        sessionStorage.setItem("hlb-pool", pool);
        if (lastSnapshot) render(lastSnapshot);
      });
      return b;
    }));
  }
  for (const b of nav.querySelectorAll("button")) {
    const p = pools.find((x) => x.name === b.dataset.pool);
    b.textContent = `${p.name} · ${p.upstreams.length}${p.panic ? " · PANIC" : ""}`;
    b.classList.toggle("panic", p.panic);
    b.setAttribute("aria-pressed", String(p.name === pool));
  }
}

function render(s) {
  lastSnapshot = s;
  const pools = s.pools && s.pools.length > 0 ? s.pools : [{ name: "default", algorithm: s.algorithm, sticky: s.sticky, panic: s.panic, upstreams: s.upstreams }];
  if (!pools.some((p) => p.name === pool)) pool = pools[0].name;
  const shown = pools.find((p) => p.name === pool);
  renderPools(pools);
  $("#pool-name").textContent = shown.name;
  $("#algorithm").textContent = shown.algorithm;
  // The pool's queue under concurrency limits: waiting now, and since start
  // how many were served after a wait and how many refused (503).
  const q = shown.queue;
  $("#queue").textContent = q ? `${q.waiting} waiting · ${q.served_after_wait_total} served after a wait · ${q.refused_total} refused` : "off";
  const demos = new Map((s.demo || []).map((d) => [d.name, d.action]));
  document.body.classList.toggle("demo-on", demos.size > 0);
  const ratio = s.sticky_stats && s.sticky_stats.hit_ratio;
  $("#sticky").textContent = shown.sticky === "off" ? "off" : `${shown.sticky}${ratio == null ? "" : ` · ${(ratio * 100).toFixed(0)}% hits`}`;
  // Requests and 5xx answers across every pool: what clients saw.
  const clients = s.clients || { rps: 0, error_rate: 0 };
  for (const u of shown.upstreams) {
    const tr = row(u);
    const out = u.health !== "up" || u.breaker === "open" || u.drained;
    tr.classList.toggle("out", out);
    const status = tr.querySelector(".status");
    status.replaceChildren(
      badge(u.health === "up" ? "up" : "down", u.health === "up" ? "UP" : "DOWN"),
      badge(u.breaker, `breaker ${u.breaker.replace("_", "-")}`),
      ...(u.drained ? [badge("drained", "DRAINED")] : []),
      ...(u.sidelined ? [badge("sidelined", "SIDELINED")] : []),
    );
    tr.querySelector(".weight").textContent = `${u.base_weight} → ${fmt(u.effective_weight, 2)}`;
    // In flight, against its learned concurrency limit when there is one.
    tr.querySelector(".inflight").textContent = u.concurrency_limit == null ? u.inflight : `${u.inflight} / ${u.concurrency_limit}`;
    tr.querySelector(".rps").textContent = fmt(u.rps);
    // The 5xx share of its answers; the breaker's failure rate beside it
    // when it differs (failure_status, connections refused or broken).
    const fivexx = `${fmt((u.server_error_rate || 0) * 100)}%`;
    const differs = Math.abs(u.error_rate - (u.server_error_rate || 0)) >= 0.0005;
    tr.querySelector(".errors").textContent = differs ? `${fivexx} · breaker ${fmt(u.error_rate * 100)}%` : fivexx;
    tr.querySelector(".latency").textContent = `${fmt(u.latency_ms.ewma)} · ${fmt(u.latency_ms.p95)} · ${fmt(u.latency_ms.probe)}`;
    tr.querySelector(".why").textContent = u.reason;
    if (demos.has(u.name)) {
      for (const b of demoControls(tr, u.name).querySelectorAll("button")) {
        b.setAttribute("aria-pressed", String(b.textContent === demos.get(u.name)));
      }
    }
    tr.querySelector(".drain").disabled = u.drained;
    tr.querySelector(".enable").disabled = !u.drained;
  }
  // Upstreams that left the table (or another pool's) leave the page; their
  // chart history stays.
  const present = new Set(shown.upstreams.map((u) => u.name));
  if (!shownNames || [...present].join() !== [...shownNames].join()) showOnly(present);
  for (const [name, tr] of rows) {
    if (!present.has(name)) {
      tr.remove();
      rows.delete(name);
    }
  }
  $("#total-rps").textContent = fmt(clients.rps);
  $("#total-errors").textContent = `${fmt(clients.error_rate * 100, 2)}%`;
  renderRoutes(s.routes || []);
  renderEvents(s.events);
  renderListeners(s.listeners, s.certificates || []);
  renderFleet(s.fleet);
}

// The routes of the file, first match first, each with its recent rates.
function renderRoutes(routes) {
  $("#routes-section").hidden = routes.length === 0;
  $("#routes tbody").replaceChildren(...routes.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.route = r.name;
    const to = r.pool ? `pool ${r.pool}` : `redirect ${r.redirect}`;
    const cells = [r.name, r.match, to, fmt(r.rps), `${fmt(r.error_rate * 100)}%`, fmt(r.p99_ms), r.requests_total];
    cells.forEach((text, i) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (i >= 3) td.className = "num";
      tr.appendChild(td);
    });
    return tr;
  }));
}

// Asks the balancer which route a request would take, and shows why.
async function explain() {
  const out = $("#explain-result");
  const q = new URLSearchParams({
    method: $("#explain-method").value,
    url: $("#explain-url").value.trim(),
    headers: $("#explain-headers").value.trim(),
  });
  const resp = await fetch(`/api/explain?${q}`);
  if (!resp.ok) {
    out.textContent = (await resp.text()).trim();
    return;
  }
  const e = await resp.json();
  const lines = e.skipped.map((x) => `route ${x.route}: no, ${x.why}`);
  if (e.route && e.pool) lines.push(`route ${e.route}: yes, to pool ${e.pool}`);
  else if (e.route) lines.push(`route ${e.route}: yes, redirect ${e.redirect}`);
  else lines.push("no route matches: 404");
  out.textContent = lines.join("\n");
}

// The instances sharing this one's etcd prefix, and whether it is connected
// (while it is not, the last known state serves).
function renderFleet(fleet) {
  const section = $("#fleet");
  section.hidden = !fleet;
  if (!fleet) return;
  const status = $("#fleet-status");
  status.classList.toggle("warn", !fleet.connected);
  status.textContent = fleet.connected
    ? `this instance: ${fleet.id} · etcd ${fleet.endpoints.join(", ")} connected since ${fleet.since} · prefix ${fleet.prefix}`
    : `this instance: ${fleet.id} · etcd unreachable since ${fleet.since || "start"} (${fleet.error || "no answer"}): serving the last known state`;
  const body = $("#fleet-instances tbody");
  body.replaceChildren(...fleet.instances.map((i) => {
    const tr = document.createElement("tr");
    tr.classList.toggle("self", i.id === fleet.id);
    for (const text of [i.id, i.listen.join(", "), i.dashboard, i.started]) {
      const td = document.createElement("td");
      // Another instance's dashboard is a link, if it is a plain web address
      // (the entry comes from etcd: never a javascript: or other scheme).
      if (text === i.dashboard && /^https?:\/\//.test(text) && i.id !== fleet.id) {
        const a = document.createElement("a");
        a.href = text;
        a.textContent = text;
        td.appendChild(a);
      } else {
        td.textContent = text;
      }
      tr.appendChild(td);
    }
    return tr;
  }));
}

// Connections by protocol on each kind of listener, and the certificates in
// force with their expiry (flagged under 14 days).
function renderListeners(mix, certs) {
  if (mix) {
    const parts = [`plain: ${mix.plain_h1} HTTP/1.1, ${mix.plain_h2} h2c`];
    const versions = Object.entries(mix.tls_handshakes || {});
    if (versions.length > 0) {
      const hs = versions.map(([v, n]) => `${v} ${n}`).join(", ");
      parts.push(`TLS: ${mix.tls_h1} HTTP/1.1, ${mix.tls_h2} h2 (handshakes: ${hs})`);
    }
    $("#listener-mix").textContent = `connections since start · ${parts.join(" · ")}`;
  }
  const table = $("#certificates");
  table.hidden = certs.length === 0;
  const body = table.querySelector("tbody");
  body.replaceChildren(...certs.map((c) => {
    const tr = document.createElement("tr");
    tr.classList.toggle("expiring", c.expiring);
    const days = c.days_left === null ? "–" : c.expiring ? `${fmt(c.days_left)} ⚠ renew soon` : fmt(c.days_left);
    for (const text of [c.cert, c.names.join(", "), c.issuer || "–", c.expires || "not issued yet", days, renewal(c.acme)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.appendChild(td);
    }
    return tr;
  }));
}

// An ACME certificate's renewal in words: when it is due, the last order's
// result and, after a failure, why and when it is tried again.
function renewal(acme) {
  if (!acme) return "by file";
  const at = (t) => new Date(t * 1000).toISOString().replace(/\.\d+Z$/, "Z");
  const parts = [];
  if (acme.renew_at) parts.push(`renews ${at(acme.renew_at)}`);
  if (acme.last_result === "failed") {
    parts.push(`last order failed: ${acme.last_error || "?"}`);
    if (acme.retry_at) parts.push(`next try ${at(acme.retry_at)}`);
  } else if (acme.last_result === "ok") {
    parts.push(`last order ok ${acme.last_at ? at(acme.last_at) : ""}`.trim());
  } else if (acme.last_result) {
    parts.push(`${acme.last_result === "served" ? "renewed by another instance" : "from storage"}`);
  } else {
    parts.push("ordering…");
  }
  return parts.join(" · ");
}

function renderEvents(events) {
  const list = $("#events");
  const items = events.slice(0, 100).map((e) => {
    const li = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = clock(e.time);
    const kind = document.createElement("span");
    kind.className = `kind ${e.kind}`;
    kind.textContent = e.kind;
    const who = document.createElement("span");
    who.textContent = e.upstream || "";
    const detail = document.createElement("span");
    detail.textContent = e.detail;
    li.append(time, kind, who, detail);
    return li;
  });
  if (items.length === 0) {
    const li = document.createElement("li");
    li.textContent = "No events yet: health flips, breaker transitions and admin actions appear here.";
    items.push(li);
  }
  list.replaceChildren(...items);
}

async function admin(name, method, action, body) {
  const status = $("#admin-status");
  try {
    const base = pool === "default" ? "/api/upstreams" : `/api/pools/${encodeURIComponent(pool)}/upstreams`;
    const resp = await fetch(`${base}/${encodeURIComponent(name)}/${action}`, {
      method,
      headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    status.textContent = resp.ok ? `${name}: ${action} done` : `${name}: ${resp.status} ${(await resp.text()).trim()}`;
    status.className = resp.ok ? "ok" : "error";
  } catch (e) {
    status.textContent = `${name}: ${e}`;
  }
}

function connect() {
  const live = $("#live");
  const source = new EventSource("/api/stream");
  source.addEventListener("snapshot", (ev) => {
    render(JSON.parse(ev.data));
    live.textContent = "live";
    live.className = "badge live";
  });
  source.addEventListener("point", (ev) => {
    addPoint(JSON.parse(ev.data));
    for (const c of Object.values(charts)) c.update("none");
  });
  source.onerror = () => {
    live.textContent = "reconnecting…";
    live.className = "badge off";
  };
}

async function start() {
  charts.latency = makeChart("chart-latency", "ms");
  charts.weights = makeChart("chart-weights", "weight");
  charts.rps = makeChart("chart-rps", "req/s");
  charts.inflight = makeChart("chart-inflight", "requests");
  charts.errors = makeChart("chart-errors", "%");

  $("#explain-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    explain();
  });
  $("#token").value = token;
  document.body.classList.toggle("admin-on", token !== "");
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("#token").value.trim();
    sessionStorage.setItem("hlb-token", token);
    document.body.classList.toggle("admin-on", token !== "");
  });

  const [history, state] = await Promise.all([
    fetch("/api/history").then((r) => r.json()),
    fetch("/api/state").then((r) => r.json()),
  ]);
  history.forEach(addPoint);
  render(state);
  for (const c of Object.values(charts)) c.update("none");
  connect();
}

start();
