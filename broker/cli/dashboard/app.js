// fogmesh's web dashboard: the retained status topics of one site, or of every site on the broker,
// over MQTT over WebSockets. Query parameters: broker (ws:// or wss:// URL), site, username,
// view=fleet (every site), offline_after (seconds before an offline agent is hidden; 600).
// A password never travels in a URL: the page asks for it, and keeps it in this tab's sessionStorage.
// It reads status topics only, so a `dashboard` user of the generated ACL is enough; that ACL covers
// one site, and the page then shows that site alone.
"use strict";

import { renderFleet } from "./fleet.js";
import { renderSite } from "./site.js";
import { $, decode, num, received } from "./util.js";

const params = new URLSearchParams(location.search);
const brokerUrl = params.get("broker") || `ws://${location.hostname || "127.0.0.1"}:9001`;
const username = params.get("username") || "";
const passwordKey = `fogmesh-password ${brokerUrl} ${username}`;
const STATUS = ["coordinator/status", "mesh/status", "bridge/status"]; // every site's, for the fleet
const SITE = ["agents/+/status", "mesh/jobs", "mesh/history"]; // the site shown
const NOT_AUTHORIZED = new Set([4, 5, 134, 135]); // CONNACK: bad user name or password, not authorized

const state = {
  site: params.get("site") || "site",
  view: params.get("view") === "fleet" ? "fleet" : "site",
  offlineAfterS: Math.max(0, num(Number(params.get("offline_after") ?? 600), 600)),
  showOffline: false,
  sites: new Map(), // site -> {coordinator, mesh, bridge: as received, skew: its clock minus ours}
  agents: new Map(), // the shown site's: agent id -> as received
  jobs: null,
  history: null,
  fleetReadable: null, // false: the broker refused `fogmesh/+/...` (an ACL for one site)
  siteReadable: null,
};
let client = null;

function siteEntry(site) {
  if (!state.sites.has(site)) state.sites.set(site, { coordinator: null, mesh: null, bridge: null, skew: 0 });
  return state.sites.get(site);
}

function urlFor(view, site) {
  const q = new URLSearchParams(location.search);
  q.set("site", site);
  if (view === "fleet") q.set("view", "fleet"); else q.delete("view");
  return `?${q}`;
}

// ------------------------------------------------------------------ rendering

let pending = false;

function render() {
  pending = false;
  const now = Date.now() / 1000;
  const fleet = state.view === "fleet";
  $("fleet").hidden = !fleet;
  $("site-view").hidden = fleet;
  document.title = fleet ? "fogmesh fleet" : `fogmesh site ${state.site}`;
  $("title").textContent = fleet ? "fleet" : `site ${state.site}`;
  picker();
  if (fleet) {
    const note = state.fleetReadable === false
      ? `The broker lets ${username || "this user"} read site ${state.site} only (its ACL), so only that site is listed.`
      : "";
    renderFleet(state.sites, note, now, { href: (site) => urlFor("site", site), site: (site) => show("site", site) });
  } else {
    $("site-denied").hidden = state.siteReadable !== false;
    $("site-denied").textContent = `The broker does not let ${username || "this user"} read site ${state.site}: ` +
      "a dashboard user reads the site its ACL was generated for (fogmesh broker config).";
    renderSite({ entry: state.sites.get(state.site), agents: state.agents, jobs: state.jobs, history: state.history,
      offlineAfterS: state.offlineAfterS, showOffline: state.showOffline }, now);
  }
}

function soon() {
  if (!pending) {
    pending = true;
    requestAnimationFrame(render);
  }
}

function picker() {
  const select = $("site-picker");
  const names = [...new Set([...state.sites.keys(), state.site])].sort();
  if ([...select.options].map((o) => o.value).join("\n") !== names.join("\n")) {
    select.replaceChildren(...names.map((name) => new Option(name, name)));
  }
  select.value = state.site;
}

// ------------------------------------------------------------------ navigation

/** Show a site's page or the fleet, without reloading (the broker connection stays). */
function show(view, site, push = true) {
  const changed = site !== state.site;
  if (changed) {
    if (client && client.connected) client.unsubscribe(siteTopics(state.site));
    state.site = site;
    state.agents.clear();
    state.jobs = state.history = null;
    state.siteReadable = null;
    state.showOffline = false;
    if (client && client.connected) subscribeSite();
  }
  state.view = view;
  if (push) history.pushState(null, "", urlFor(view, site));
  render();
}

$("site-picker").addEventListener("change", (event) => show("site", event.target.value));
$("fleet-link").addEventListener("click", (event) => {
  event.preventDefault();
  show("fleet", state.site);
});
$("fleet-link").href = urlFor("fleet", state.site);
window.addEventListener("popstate", () => {
  const q = new URLSearchParams(location.search);
  show(q.get("view") === "fleet" ? "fleet" : "site", q.get("site") || "site", false);
});
$("agents-toggle").addEventListener("click", () => {
  state.showOffline = !state.showOffline;
  render();
});

// ------------------------------------------------------------------ MQTT

function siteTopics(site) {
  const topics = state.fleetReadable === false ? [...SITE, ...STATUS] : SITE;
  return topics.map((t) => `fogmesh/${site}/${t}`);
}

/** Subscribe to each filter alone, so that the broker's ACL refusing one (MQTT 5 SUBACK reason
 * code 0x87) refuses only that one. Resolves to true (granted), false (refused) or null (no answer). */
function subscribe(filter) {
  return new Promise((resolve) => {
    client.subscribe(filter, { qos: 1 }, (err) => {
      if (!err) return resolve(true);
      const codes = err.packet && err.packet.granted;
      resolve(Array.isArray(codes) && codes.some((c) => c >= 0x80) ? false : null);
    });
  });
}

async function subscribeSite() {
  const site = state.site;
  const granted = await Promise.all(siteTopics(site).map(subscribe));
  if (site !== state.site) return; // switched meanwhile
  if (granted.every((g) => g === false)) state.siteReadable = false;
  else if (granted.some((g) => g === true)) state.siteReadable = true;
  soon();
}

async function subscribeAll() {
  const granted = await Promise.all(STATUS.map((t) => subscribe(`fogmesh/+/${t}`)));
  // Refused: the ACL is for one site; the site in the URL is the one to show.
  state.fleetReadable = granted.includes(false) ? false : true;
  await subscribeSite();
}

function onMessage(topic, payload, packet) {
  const level = topic.split("/");
  if (level[0] !== "fogmesh" || level.length < 4) return;
  const site = level[1];
  const rest = level.slice(2).join("/");
  const data = decode(payload);
  if (data === undefined) return; // not a JSON object: not ours to render, and not to spoil the page
  const rec = data && received(data, packet.retain);
  if (STATUS.includes(rest)) {
    const entry = siteEntry(site);
    entry[level[2]] = rec;
    if (rec && !packet.retain && num(data.ts) && level[2] !== "bridge") entry.skew = data.ts - rec.received;
  } else if (site === state.site) {
    if (level[2] === "agents" && level.length === 5 && level[4] === "status") {
      if (rec) state.agents.set(level[3], rec); else state.agents.delete(level[3]);
    } else if (rest === "mesh/jobs") {
      state.jobs = rec;
      if (rec && !packet.retain && num(data.ts)) siteEntry(site).skew = data.ts - rec.received;
    } else if (rest === "mesh/history") {
      state.history = rec;
    }
  }
  soon();
}

function say(text, connected) {
  $("conn").textContent = text;
  $("conn").dataset.connected = connected ? "true" : "false";
}

/** Why a connection that never opened failed: a browser tells a page nothing more than "closed". */
function cannotConnect() {
  if (location.protocol === "https:" && brokerUrl.startsWith("ws:")) {
    return `cannot connect to ${brokerUrl}: a page served over https may only open wss:// connections; ` +
      "give the broker's secure WebSockets listener (wss://host:port, ws_port in [broker]).";
  }
  if (brokerUrl.startsWith("wss:")) {
    const https = brokerUrl.replace(/^wss:/, "https:");
    return `cannot connect to ${brokerUrl}; retrying. If the broker's certificate comes from the site's own CA, ` +
      "this browser must trust that CA first: import certs/ca.crt (from fogmesh broker certs) as an authority " +
      "(Chromium and Chrome: Settings, Privacy and security, Security, Manage certificates, Authorities, Import; " +
      "Firefox: Settings, Certificates, View Certificates, Authorities, Import), and use a host name the " +
      `certificate lists. Opening ${https} in this browser shows what it thinks of the certificate. See docs/deploy.md.`;
  }
  return `cannot connect to ${brokerUrl}; retrying. Is there an MQTT-over-WebSockets listener on that port ` +
    "(a listener with protocol websockets: ws_port in [broker], or fogmesh up's own)? A plain MQTT port " +
    "(1883, 8883) does not speak WebSockets.";
}

function login(message) {
  $("login-user").textContent = username;
  $("login-username").value = username; // for the browser's password manager
  $("login-error").textContent = message || "";
  $("login").hidden = false;
  say(`log in to ${brokerUrl}`, false);
  $("password").focus();
}

function start(password) {
  let opened = false;
  let refused = false;
  client = mqtt.connect(brokerUrl, {
    username: username || undefined,
    password: password || undefined,
    protocolVersion: 5,
    reconnectPeriod: 2000,
    resubscribe: false, // subscribeAll decides again on every connection
    clientId: `fogmesh-dashboard-${Math.random().toString(16).slice(2, 10)}`,
  });
  client.on("connect", () => {
    opened = true;
    say(`connected to ${brokerUrl}` + (username ? ` as ${username}` : ""), true);
    subscribeAll();
  });
  client.on("close", () => {
    if (refused) return;
    say(opened ? `disconnected from ${brokerUrl}; retrying` : cannotConnect(), false);
  });
  client.on("error", (err) => {
    if (NOT_AUTHORIZED.has(err.code)) {
      // Retrying with the same password only fills the broker's log: ask again.
      refused = true;
      client.end(true);
      sessionStorage.removeItem(passwordKey);
      if (username) login(`the broker refused ${username} with that password (${err.message}); try again`);
      else say(`the broker wants a user name and password (${err.message}): open this page with ` +
        "&username=NAME in its address (fogmesh dashboard --username NAME prints it); the page then asks for the password", false);
      return;
    }
    say(`broker error: ${err.message}`, false);
  });
  client.on("message", onMessage);
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(passwordKey, $("password").value);
  $("password").value = "";
  $("login").hidden = true;
  say(`connecting to ${brokerUrl}…`, false);
  start(sessionStorage.getItem(passwordKey));
});

render();
if (username && !sessionStorage.getItem(passwordKey)) login();
else start(sessionStorage.getItem(passwordKey));
setInterval(render, 1000); // elapsed times, "last seen" and staleness move with the clock
