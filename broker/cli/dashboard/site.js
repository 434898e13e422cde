// One site's page: its coordinator, mesh, cloud bridge, what it did lately (counters, charts), its
// live and last finished jobs (mesh/jobs), and its agents.
"use strict";

import { legend, lineChart } from "./charts.js";
import { $, cell, duration, el, guard, list, liveness, ms, num, obj, str } from "./util.js";

const STATUSES = ["done", "rejected", "expired", "error", "cancelled"];
const TIERS = ["edge", "cloud", "none"];
// At most what the coordinator sends (200 live jobs, 20 finished, 90 steps) and some: anyone allowed
// to write mesh/jobs or mesh/history may send more, and every table is rebuilt every second.
const MAX_JOBS = 200;
const MAX_FINISHED = 50;
const MAX_STEPS = 360;

function card(id, parts) {
  const node = $(id);
  node.replaceChildren(...parts);
  node.classList.toggle("muted", parts.length === 0);
  if (!parts.length) node.textContent = node.dataset.empty || "no status yet";
}

function badge(text, cls) {
  return el("span", text, cls || text);
}

function coordinatorCard(rec, now) {
  if (!rec) return card("coordinator", []);
  const c = rec.data;
  card("coordinator", [badge(liveness(rec, now)),
    ` · ${str(c.host) || "?"} pid ${str(c.pid) || "?"} · policy ${str(c.policy) || "?"}`]);
}

function meshCard(rec) {
  if (!rec) return card("mesh", []);
  const m = rec.data;
  const online = num(m.agents_online);
  const parts = [`${online} agent${online === 1 ? "" : "s"} online · slots ${num(m.slots_free)}/${num(m.slots_total)} free · ` +
    `queue ${num(m.queue_depth)} · running ${num(m.running)} · wait ${ms(m.predicted_wait_ms)}`];
  if (m.overloaded === true) parts.push(badge(" · OVERLOADED", "overloaded"));
  card("mesh", parts);
}

function latelyCard(rec) {
  const r = rec ? obj(rec.data.recent) : {};
  if (!rec || !Object.keys(r).length) return card("lately", []);
  const window = num(r.window_s, 60) || 60;
  card("lately", [
    `${(num(r.finished) * 60 / window).toFixed(1)} jobs/min · ${num(r.done)} done in the last ${duration(window)}` +
    ` · cloud share ${Math.round(num(r.cloud_share) * 100)}% · median latency ${ms(r.latency_p50_ms)}` +
    ` · TTFT ${ms(r.ttft_p50_ms)}`,
    el("br"), `scheduler decision ${num(r.decision_p50_ms).toFixed(3)} ms median, ` +
    `${num(r.decision_p99_ms).toFixed(3)} ms p99 (wall clock ${num(r.decision_wall_p99_ms).toFixed(3)} ms)`,
    el("br"), `cloud spend ${num(r.cloud_spend).toFixed(4)} since the coordinator started`]);
}

function bridgeCard(rec) {
  if (!rec) return card("bridge", []);
  const b = rec.data;
  const offline = b.state === "offline";
  const reachable = b.reachable === true;
  card("bridge", [badge(offline ? "offline" : (reachable ? "cloud reachable" : "cloud UNREACHABLE"),
    offline ? "offline" : (reachable ? "online" : "unreachable")),
  ` · outbox ${num(b.outbox_depth)} · dead letters ${num(b.dlq_depth)}`]);
}

/** Jobs by final status and tier, since the coordinator started (recent.totals). */
function counters(rec) {
  const totals = rec ? obj(obj(rec.data.recent).totals) : {};
  const statuses = [...STATUSES, ...Object.keys(totals).filter((s) => !STATUSES.includes(s)).sort()];
  const tiers = [...TIERS];
  for (const s of statuses) for (const t of Object.keys(obj(totals[s]))) if (!tiers.includes(t)) tiers.push(t);
  const table = $("totals");
  const head = table.tHead.rows[0];
  head.replaceChildren(el("th", "final status"), ...tiers.map((t) => el("th", t, "n")), el("th", "all", "n"));
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const status of statuses) {
    const row = body.insertRow();
    row.dataset.status = status;
    cell(row, status, status === "done" ? "" : "bad-status");
    let all = 0;
    for (const tier of tiers) {
      const n = num(obj(totals[status])[tier]);
      all += n;
      cell(row, String(n), n ? "n" : "n zero").dataset.tier = tier;
    }
    cell(row, String(all), "n").dataset.tier = "all";
  }
}

/** Throughput, latency and TTFT, tokens/s over the history (mesh/history, 10-second steps). */
function charts(rec) {
  const h = rec ? rec.data : {};
  const steps = list(h.steps).slice(-MAX_STEPS).map(obj);
  const stepS = num(h.step_s, 10) || 10;
  const span = duration(steps.length * stepS);
  // The newest step is still running when the history is published: its rate is over its part.
  const lasting = steps.map((s, i) => i < steps.length - 1 ? stepS : Math.min(stepS, Math.max(1, num(h.ts) - num(s.ts))));
  const throughput = [
    { name: "done", cls: "s-done" }, { name: "done in the cloud", cls: "s-cloud", key: "cloud" },
    { name: "rejected", cls: "s-rejected" }, { name: "expired", cls: "s-expired" },
    { name: "error", cls: "s-error" }, { name: "cancelled", cls: "s-cancelled" },
  ].map((s) => ({ ...s, values: steps.map((st) => num(st[s.key || s.name])) }))
    .filter((s) => s.name === "done" || s.values.some((v) => v > 0));
  const latency = [{ name: "median latency", cls: "s-latency", key: "latency_p50_ms" },
    { name: "median TTFT", cls: "s-ttft", key: "ttft_p50_ms" }]
    .map((s) => ({ ...s, values: steps.map((st) => num(st[s.key]) || null) })); // 0: no done job that step
  const tokens = [{ name: "tokens/s", cls: "s-tokens", values: steps.map((st, i) => num(st.tokens) / lasting[i]) }];
  const drawn = [["throughput", throughput, ` jobs/${stepS} s`], ["latency", latency, " ms"], ["tokens", tokens, ""]];
  for (const [name, series, unit] of drawn) {
    const peak = lineChart($(`chart-${name}`), series, { span });
    legend($(`legend-${name}`), series);
    $(`peak-${name}`).textContent = steps.length ? `peak ${+peak.toFixed(1)}${unit}` : "no history yet";
  }
}

/** The live jobs as the coordinator sees them, their elapsed times ticking in its clock. */
function jobs(rec, coordinatorNow, coordinatorUp) {
  const body = $("jobs").tBodies[0];
  body.replaceChildren();
  if (!rec) {
    $("jobs-note").textContent = "no jobs view from the coordinator yet";
    return;
  }
  const m = rec.data;
  const shown = list(m.jobs).slice(0, MAX_JOBS).map(obj).filter((j) => str(j.key));
  const live = Math.max(num(m.live), list(m.jobs).length);
  let note = `${live} live`;
  if (live > shown.length) note += ` (the oldest ${shown.length} shown)`;
  if (!coordinatorUp && num(m.ts)) {
    note += ` · as the coordinator last published them, ${duration(coordinatorNow - num(m.ts))} ago`;
  }
  $("jobs-note").textContent = note;
  for (const j of shown) {
    const row = body.insertRow();
    const state = str(j.state) || "?";
    row.dataset.job = str(j.key);
    row.dataset.state = state;
    cell(row, str(j.key));
    cell(row, state, `phase-${state}`);
    cell(row, str(j.node) || "-");
    cell(row, String(num(j.priority)), "n");
    cell(row, j.created_at ? duration(coordinatorNow - num(j.created_at)) : "-", "n");
    cell(row, j.started_at ? duration(coordinatorNow - num(j.started_at)) : "-", "n");
    cell(row, `${num(j.tokens)} / ${num(j.max_tokens) || "?"}`, "n").dataset.tokens = String(num(j.tokens));
  }
}

function finished(rec, coordinatorNow) {
  const body = $("finished").tBodies[0];
  body.replaceChildren();
  for (const f of rec ? list(rec.data.finished).slice(0, MAX_FINISHED).map(obj).filter((j) => str(j.key)) : []) {
    const row = body.insertRow();
    row.dataset.job = str(f.key);
    row.dataset.status = str(f.status);
    cell(row, str(f.key));
    cell(row, str(f.status), f.status === "done" ? "online" : "bad-status");
    cell(row, str(f.tier));
    cell(row, str(f.node) || "-");
    cell(row, ms(f.total_ms), "n");
    cell(row, String(num(f.tokens)), "n");
    cell(row, str(f.code));
    cell(row, f.ended_at ? `${duration(coordinatorNow - num(f.ended_at))} ago` : "-", "n");
  }
}

/**
 * The agents; those offline or stale for longer than `offlineAfterS` (since they were last known
 * alive: their last heartbeat, else when this page first saw them gone) are left out unless
 * `showOffline`. Returns how many were left out.
 */
// A model and where it runs, as `fogmesh status` shows it: gemma@CPU, gemma@CUDA0 19/19 (layers on the GPU / all).
function modelLabel(m) {
  const device = str(m.device).split(" ")[0];
  if (!device) return str(m.name);
  const onGpu = num(m.gpu_layers);
  return `${str(m.name)}@${device}` + (onGpu ? ` ${onGpu}/${num(m.layers)}` : "");
}

function agents(records, now, offlineAfterS, showOffline) {
  const body = $("agents").tBodies[0];
  body.replaceChildren();
  let hidden = 0;
  for (const name of [...records.keys()].sort()) {
    const rec = records.get(name);
    const a = rec.data;
    const health = liveness(rec, now);
    const since = rec.at ?? rec.received;
    if ((health === "offline" || health === "stale") && now - since > offlineAfterS) {
      hidden += 1;
      if (!showOffline) continue;
    }
    const row = body.insertRow();
    row.dataset.agent = name;
    row.dataset.state = health;
    const budget = obj(a.budget);
    cell(row, name);
    cell(row, health, health);
    cell(row, str(a.host));
    cell(row, `${num(a.slots_free)}/${num(a.slots_total)}`, "n");
    cell(row, String(num(a.queue_depth)), "n");
    cell(row, num(a.decode_tps).toFixed(1), "n");
    cell(row, String(Math.round(num(a.ttft_ms))), "n");
    cell(row, Object.keys(budget).length ? `${num(budget.used)}/${num(budget.tokens)}` : "-", "n");
    cell(row, list(a.models).map((x) => modelLabel(obj(x))).join(", "));
    cell(row, rec.at !== null ? `${duration(now - rec.at)} ago` : "-", "n");
  }
  return hidden;
}

function agentsNote(hidden, offlineAfterS, showOffline) {
  const note = $("agents-hidden");
  note.hidden = hidden === 0;
  $("agents-hidden-text").textContent = `${hidden} agent${hidden === 1 ? "" : "s"} offline for more than ` +
    `${duration(offlineAfterS)} ${showOffline ? "shown" : "hidden"}`;
  $("agents-toggle").textContent = showOffline ? "hide them" : "show them";
}

/** Render the whole site page from what the page holds for `view.site`. */
export function renderSite(view, now) {
  const entry = view.entry || {};
  const coordinatorNow = now + (entry.skew || 0);
  const up = liveness(entry.coordinator, now) === "online";
  guard("coordinator", () => coordinatorCard(entry.coordinator, now));
  guard("mesh", () => meshCard(entry.mesh));
  guard("lately", () => latelyCard(entry.mesh));
  guard("bridge", () => bridgeCard(entry.bridge));
  guard("counters", () => counters(entry.mesh));
  guard("charts", () => charts(view.history));
  guard("jobs", () => jobs(view.jobs, coordinatorNow, up));
  guard("finished", () => finished(view.jobs, coordinatorNow));
  guard("agents", () => agentsNote(agents(view.agents, now, view.offlineAfterS, view.showOffline),
    view.offlineAfterS, view.showOffline));
}
