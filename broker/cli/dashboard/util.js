// What every view of the dashboard shares: building the page from text only (broker data never
// goes through innerHTML), reading payload fields defensively (a retained message may be malformed,
// older or newer than this page, or not fogmesh's at all), and telling times.
"use strict";

export const $ = (id) => document.getElementById(id);

/** A finite number from a payload field, else `fallback`. */
export function num(value, fallback = 0) {
  return typeof value === "number" && Number.isFinite(value) ? value : fallback;
}

/** A string from a payload field (numbers are shown as they are), else "". */
export function str(value) {
  if (typeof value === "string") return value;
  return typeof value === "number" && Number.isFinite(value) ? String(value) : "";
}

/** A plain object from a payload field, else {} (so `obj(x).field` never throws). */
export function obj(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value) ? value : {};
}

export function list(value) {
  return Array.isArray(value) ? value : [];
}

/** The JSON object in a payload; null for an empty one (a cleared retained topic); undefined when
 * it is not a JSON object, which the page then ignores. */
export function decode(payload) {
  if (!payload.length) return null;
  try {
    const data = JSON.parse(new TextDecoder().decode(payload));
    return data !== null && typeof data === "object" && !Array.isArray(data) ? data : undefined;
  } catch {
    return undefined;
  }
}

export function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

export function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

/** Run one part of a render; a payload it cannot handle spoils that part only, never the page. */
export function guard(part, fn) {
  try {
    fn();
  } catch (err) {
    console.warn(`dashboard: cannot render ${part}:`, err);
  }
}

/** "4.2 s", "3 min 5 s", "2 h 10 min": how long, for people. */
export function duration(seconds) {
  const s = Math.max(0, seconds);
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return two(Math.floor(s / 60), "min", Math.floor(s % 60), "s");
  if (s < 86400) return two(Math.floor(s / 3600), "h", Math.floor((s % 3600) / 60), "min");
  return two(Math.floor(s / 86400), "d", Math.floor((s % 86400) / 3600), "h");
}

function two(big, bigUnit, small, smallUnit) {
  return small ? `${big} ${bigUnit} ${small} ${smallUnit}` : `${big} ${bigUnit}`;
}

export function ms(value) {
  const v = num(value);
  return v >= 10000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`;
}

/**
 * A status message as received: `at` is when its sender was last known alive, in this browser's
 * clock: now for a live message; the sender's own timestamp for a retained one (null when it has
 * none, as a Last Will); `received` is when this page got it.
 */
export function received(data, retained) {
  const now = Date.now() / 1000;
  return { data, at: retained ? (num(data.ts) || null) : now, received: now };
}

/** online, draining, offline, or stale: says it is up but has missed three heartbeats (a hung
 * process, a cut network). */
export function liveness(record, now) {
  if (!record) return "unknown";
  const d = record.data;
  const state = ["online", "draining", "offline"].includes(d.state) ? d.state : "unknown";
  const every = num(d.heartbeat_s, 5) || 5;
  if (state !== "offline" && record.at !== null && now - record.at > 3 * every) return "stale";
  return state;
}
