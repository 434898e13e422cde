// fogmesh's web dashboard: the site's retained status topics over MQTT over WebSockets.
// Query parameters: broker (ws:// or wss:// URL), site, username. A password never travels in a
// URL: the page asks for it, and keeps it in this tab's sessionStorage.
// It reads status topics only, so a `dashboard` user of the generated ACL is enough.
"use strict";

const params = new URLSearchParams(location.search);
const site = params.get("site") || "site";
const brokerUrl = params.get("broker") || `ws://${location.hostname || "127.0.0.1"}:9001`;
const prefix = `fogmesh/${site}`;
const state = { agents: {}, coordinator: null, mesh: null, bridge: null };

const $ = (id) => document.getElementById(id);
$("site").textContent = site;

function liveness(status) {
  // "stale": says online but has missed three heartbeats (a hung process, a cut network).
  if (!status) return "unknown";
  const every = status.heartbeat_s || 5;
  if (status.state !== "offline" && status.ts && Date.now() / 1000 - status.ts > 3 * every) return "stale";
  return status.state || "unknown";
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function render() {
  const now = Date.now() / 1000;
  const c = state.coordinator;
  $("coordinator").innerHTML = "";
  if (c) {
    const s = document.createElement("span");
    s.className = liveness(c);
    s.textContent = liveness(c);
    $("coordinator").append(s, ` · ${c.host || "?"} pid ${c.pid || "?"} · policy ${c.policy || "?"}`);
    $("coordinator").classList.remove("muted");
  }
  const m = state.mesh;
  if (m) {
    $("mesh").classList.remove("muted");
    $("mesh").innerHTML = "";
    $("mesh").append(`${m.agents_online} agents · slots ${m.slots_free}/${m.slots_total} free · ` +
      `queue ${m.queue_depth} · running ${m.running} · wait ${Math.round(m.predicted_wait_ms || 0)} ms`);
    if (m.overloaded) {
      const o = document.createElement("span");
      o.className = "overloaded";
      o.textContent = " · OVERLOADED";
      $("mesh").append(o);
    }
  }
  const b = state.bridge;
  if (b) {
    $("bridge").classList.remove("muted");
    $("bridge").innerHTML = "";
    const s = document.createElement("span");
    s.className = b.reachable ? "online" : "unreachable";
    s.textContent = b.state === "offline" ? "offline" : (b.reachable ? "cloud reachable" : "cloud UNREACHABLE");
    $("bridge").append(s, ` · outbox ${b.outbox_depth || 0} · dead letters ${b.dlq_depth || 0}`);
  }
  const agents = $("agents").tBodies[0];
  const jobs = $("jobs").tBodies[0];
  agents.innerHTML = "";
  jobs.innerHTML = "";
  for (const name of Object.keys(state.agents).sort()) {
    const a = state.agents[name];
    const health = liveness(a);
    const row = agents.insertRow();
    row.dataset.agent = name;
    row.dataset.state = health;
    cell(row, name);
    cell(row, health, health);
    cell(row, a.host || "");
    cell(row, `${a.slots_free || 0}/${a.slots_total || 0}`, "n");
    cell(row, String(a.queue_depth || 0), "n");
    cell(row, (a.decode_tps || 0).toFixed(1), "n");
    cell(row, String(Math.round(a.ttft_ms || 0)), "n");
    cell(row, a.budget ? `${a.budget.used}/${a.budget.tokens}` : "-", "n");
    cell(row, (a.models || []).map((x) => x.name).join(", "));
    cell(row, a.ts ? `${Math.max(0, Math.round(now - a.ts))} s ago` : "-", "n");
    if (health === "offline") continue;
    for (const job of a.jobs || []) {
      const j = jobs.insertRow();
      j.dataset.job = job;
      cell(j, job);
      cell(j, name);
      cell(j, health === "stale" ? "agent stale" : "assigned");
    }
  }
}

function start(password) {
  let connected = false;
  const client = mqtt.connect(brokerUrl, {
    username: params.get("username") || undefined,
    password: password || undefined,
    protocolVersion: 5,
    reconnectPeriod: 2000,
    clientId: `fogmesh-dashboard-${Math.random().toString(16).slice(2, 10)}`,
  });
  client.on("connect", () => {
    connected = true;
    $("conn").textContent = `connected to ${brokerUrl}`;
    $("conn").dataset.connected = "true";
    client.subscribe([`${prefix}/agents/+/status`, `${prefix}/coordinator/status`, `${prefix}/mesh/status`,
      `${prefix}/bridge/status`], { qos: 1 });
  });
  client.on("close", () => {
    $("conn").dataset.connected = "false";
    if (connected) {
      $("conn").textContent = `disconnected from ${brokerUrl}; retrying`;
    } else if (brokerUrl.startsWith("wss:")) {
      // A browser says nothing to a page about a certificate it refused.
      $("conn").textContent = `cannot connect to ${brokerUrl}; retrying. If the broker's certificate is from the ` +
        "site's own CA, this browser must trust it first: import certs/ca.crt as an authority (docs/deploy.md)";
    } else {
      $("conn").textContent = `cannot connect to ${brokerUrl}; retrying (is the broker's WebSockets listener there?)`;
    }
  });
  client.on("error", (err) => {
    $("conn").textContent = `broker error: ${err.message}` +
      (/auth|password/i.test(err.message) ? " (wrong user name or password?)" : "");
    if (/auth|password/i.test(err.message)) sessionStorage.removeItem(passwordKey);
  });
  client.on("message", (topic, payload) => {
    const level = topic.slice(prefix.length + 1).split("/");
    let data = null;
    try {
      data = payload.length ? JSON.parse(new TextDecoder().decode(payload)) : null;
    } catch (e) {
      return; // not ours to render
    }
    if (level[0] === "agents") {
      if (data) state.agents[level[1]] = data; else delete state.agents[level[1]];
    } else if (["coordinator", "mesh", "bridge"].includes(level[0])) {
      state[level[0]] = data;
    }
    render();
  });
}

const passwordKey = `fogmesh-password ${brokerUrl} ${params.get("username") || ""}`;
if (params.get("username") && !sessionStorage.getItem(passwordKey)) {
  $("login-user").textContent = params.get("username");
  $("login").hidden = false;
  $("conn").textContent = `log in to ${brokerUrl}`;
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(passwordKey, $("password").value);
    $("login").hidden = true;
    start($("password").value);
  });
} else {
  start(sessionStorage.getItem(passwordKey));
}
setInterval(render, 1000); // "last seen" and staleness move with the clock
