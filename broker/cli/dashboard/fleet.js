// The fleet page: one row per site on the broker (those whose statuses this user may read), with
// its health at a glance; a click opens the site's page.
"use strict";

import { $, cell, duration, el, guard, liveness, num, obj } from "./util.js";

function cloud(rec, now) {
  if (!rec) return ["none", "muted"];
  const health = liveness(rec, now);
  if (health === "offline" || health === "stale") return [`bridge ${health}`, health];
  return rec.data.reachable === true ? ["reachable", "online"] : ["UNREACHABLE", "unreachable"];
}

function row(body, site, entry, now, open) {
  const health = entry.coordinator ? liveness(entry.coordinator, now) : "unknown";
  const m = entry.mesh ? entry.mesh.data : {};
  const recent = obj(m.recent);
  const tr = body.insertRow();
  tr.dataset.site = site;
  tr.dataset.state = health;
  const link = el("a", site);
  link.href = open.href(site);
  link.addEventListener("click", (event) => {
    if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return; // a new tab
    event.preventDefault();
    open.site(site);
  });
  tr.insertCell().append(link);
  cell(tr, health, health);
  const known = Boolean(entry.mesh);
  cell(tr, known ? String(num(m.agents_online)) : "-", "n");
  cell(tr, known ? String(num(m.queue_depth)) : "-", "n");
  cell(tr, !known ? "-" : (m.overloaded === true ? "OVERLOADED" : "no"), m.overloaded === true ? "overloaded" : "");
  const window = num(recent.window_s, 60) || 60;
  cell(tr, known && recent.window_s ? (num(recent.finished) * 60 / window).toFixed(1) : "-", "n");
  const [reach, cls] = cloud(entry.bridge, now);
  cell(tr, reach, cls);
  const seen = Math.max(...[entry.coordinator, entry.mesh].map((r) => (r && r.at) || 0));
  cell(tr, seen ? `${duration(now - seen)} ago` : "-", "n");
}

/**
 * `sites`: site -> {coordinator, mesh, bridge} as received; `note`: why the list may be partial;
 * `open`: {href(site), site(site)} to link and switch to a site's page.
 */
export function renderFleet(sites, note, now, open) {
  guard("fleet", () => {
    const body = $("sites").tBodies[0];
    body.replaceChildren();
    const names = [...sites.keys()].sort();
    for (const site of names) guard(`site ${site}`, () => row(body, site, sites.get(site), now, open));
    const online = names.filter((s) => liveness(sites.get(s).coordinator, now) === "online").length;
    $("fleet-summary").textContent = names.length
      ? `${names.length} site${names.length === 1 ? "" : "s"} · ${online} with the coordinator online`
      : "no site has published a status on this broker yet";
    $("fleet-note").textContent = note;
    $("fleet-note").hidden = !note;
  });
}
