// Small line charts in inline SVG, drawn here rather than by a chart library: the page has no
// build step and must work on a site with no internet.
"use strict";

const NS = "http://www.w3.org/2000/svg";
const W = 320;
const H = 96;
const PAD = { left: 40, right: 8, top: 8, bottom: 16 };

function svgNode(tag, attrs, parent, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  parent.append(node);
  return node;
}

/** The smallest 1, 2 or 5 times a power of ten at or above `v`: a y axis people can read. */
function roundUp(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
}

function label(v) {
  return v >= 1000 ? `${+(v / 1000).toFixed(1)}k` : String(+v.toFixed(2));
}

/**
 * Draw `series` ([{name, cls, values}], one value per step, oldest first; null where there is no
 * value, which leaves a gap) into `svg`. `span` says what the x axis covers ("15 min").
 * Returns the largest value drawn, which the caption shows.
 */
export function lineChart(svg, series, { span = "" } = {}) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const steps = Math.max(0, ...series.map((s) => s.values.length));
  const drawn = series.flatMap((s) => s.values.filter((v) => v !== null && Number.isFinite(v)));
  const peak = Math.max(0, ...drawn);
  const top = roundUp(peak);
  const x = (i) => PAD.left + (steps > 1 ? (i * (W - PAD.left - PAD.right)) / (steps - 1) : 0);
  const y = (v) => H - PAD.bottom - (v / top) * (H - PAD.top - PAD.bottom);
  svgNode("line", { x1: PAD.left, y1: y(0), x2: W - PAD.right, y2: y(0), class: "axis" }, svg);
  svgNode("line", { x1: PAD.left, y1: y(top), x2: W - PAD.right, y2: y(top), class: "grid" }, svg);
  svgNode("text", { x: PAD.left - 4, y: y(top) + 4, "text-anchor": "end" }, svg, label(top));
  svgNode("text", { x: PAD.left - 4, y: y(0) + 3, "text-anchor": "end" }, svg, "0");
  if (span) svgNode("text", { x: PAD.left, y: H - 3 }, svg, `-${span}`);
  svgNode("text", { x: W - PAD.right, y: H - 3, "text-anchor": "end" }, svg, "now");
  for (const s of series) {
    let d = "";
    let penDown = false;
    s.values.forEach((v, i) => {
      if (v === null || !Number.isFinite(v)) {
        penDown = false;
        return;
      }
      d += `${penDown ? "L" : "M"}${x(i).toFixed(1)} ${y(v).toFixed(1)} `;
      penDown = true;
    });
    if (!d) continue;
    const path = svgNode("path", { d: d.trim(), class: `line ${s.cls}`, "data-series": s.name }, svg);
    svgNode("title", {}, path, s.name);
  }
  svg.dataset.peak = String(peak);
  return peak;
}

/** The legend under a chart: one swatch and name per series. */
export function legend(node, series) {
  node.replaceChildren();
  for (const s of series) {
    const item = document.createElement("span");
    item.className = `key ${s.cls}`;
    item.textContent = s.name;
    node.append(item);
  }
}
