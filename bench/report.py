"""Turn bench/results/*.json into the tables and plots of docs/benchmarks.md."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from bench.harness import RESULTS

DOCS = Path(__file__).resolve().parent.parent / "docs"
IMG = DOCS / "img"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return orjson.loads(path.read_bytes()) if path.exists() else None


def table(head: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 0.01 and v else f"{v:,.2f}"
        return str(v)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def overhead() -> str:
    parts = []
    for threads in (1, 2):
        r = load(f"overhead-threads{threads}")
        if not r:
            continue
        for mode in ("default", "greedy"):
            m = r.get(mode, r if mode == "default" else None)
            if not m:
                continue
            rows = [[p, m[p]["ttft_ms"]["p50"], m[p]["decode_tps"]["p50"], m[p]["tokens"]["p50"]]
                    for p in ("direct", "mesh", "server")]
            head = ["path", "TTFT p50 ms", "decode tok/s p50", "tokens p50"]
            sampling = "the agent's default sampling" if mode == "default" else "greedy (temperature 0)"
            parts.append(f"**{threads} thread(s)**, {sampling}, {r['rounds']} interleaved rounds of "
                         f"{r['max_tokens']} tokens ({r['meta']['when']}):\n\n" + table(head, rows)
                         + f"\n\nmesh/direct decode ratio **{m['mesh_over_direct_tps']:.3f}** (median of the "
                           f"rounds' ratios), mesh added TTFT **{m['mesh_added_ttft_ms']:.1f} ms** "
                           f"(llama-cpp-python's server: {m['server_added_ttft_ms']:.1f} ms, decode ratio "
                           f"{m['mesh_over_server_tps']:.2f} mesh/server).")
    return "\n\n".join(parts)


def dispatch() -> str:
    r = load("dispatch")
    if not r:
        return ""
    rows = [[x["rate"], x["jobs"], x["dispatch_ms"]["p50"], x["dispatch_ms"]["p99"], x["finish_ms"]["p50"],
             x["finish_ms"]["p99"]] for x in r["results"]]
    return table(["jobs/s", "jobs", "publish->start p50 ms", "p99 ms", "last token->final p50 ms", "p99 ms"], rows)


def scale() -> str:
    r = load("scale")
    if not r:
        return ""

    def decision(x: dict[str, Any], how: str) -> dict[str, float]:
        d = x["fogmesh"]["decision_ms"]
        return d.get(how, d) or {}  # results from before the index have the scan's figures only

    def coordinator(x: dict[str, Any], key: str) -> Any:
        return decision(x, "coordinator").get(key) or "-"  # results from before the coordinator timed its own

    rows = [[x["agents"], x["fogmesh"]["jobs_per_s"], x["shared_subscription"]["jobs_per_s"], x["throughput_ratio"],
             decision(x, "indexed")["p50"], decision(x, "indexed")["p99"], coordinator(x, "p50"),
             coordinator(x, "p99"), coordinator(x, "wall_p99"), decision(x, "upkeep")["p99"],
             decision(x, "scan")["p99"], x["fogmesh"]["coordinator_rss_mb"], x["fogmesh"]["balance_max_over_mean"],
             x["shared_subscription"]["balance_max_over_mean"]] for x in r["results"]]
    out = (f"{r['jobs']:,} jobs a run ({r['meta']['when']}); decisions timed alone in the benchmark's process,"
           " and by the coordinator during the run (processor time, and wall clock with the waits for the"
           " interpreter):\n\n"
           + table(["agents", "fogmesh jobs/s", "shared-sub jobs/s", "fogmesh/shared-sub", "decision p50 ms alone",
                    "p99 alone", "p50 in the coordinator", "p99 in the coordinator", "wall-clock p99",
                    "index upkeep p99 ms", "full scan p99 ms", "coordinator RSS MB",
                    "balance max/mean", "shared-sub balance"], rows))
    held = r.get("backlog")
    if held:
        filled = (f"all queued after {held['fill_s']:.1f} s" if held.get("queued") is not None else
                  f"**the mesh status never showed them all queued: the wait gave up after {held['fill_s']:.0f} s**")
        out += (f"\n\n**{held['jobs']:,} jobs queued** (behind 10 agents that hold every job they get; {filled}): "
                f"coordinator RSS **{held['queued_rss_mb']:.0f} MB**. Killed "
                f"(SIGKILL) and started again: online after **{held['online_s']:.2f} s**, a prompt sent as it "
                f"started answered ({held['answer']}) after **{held['answered_s']:.2f} s**; "
                f"RSS {held['restarted_rss_mb']:.0f} MB.")
    for x in r["results"]:
        p = x["fogmesh"].get("profile")
        if p:
            parts = sorted(p["parts"].items(), key=lambda kv: -kv[1])
            out += (f"\n\nWhere the coordinator's Python time goes at {x['agents']} agents (py-spy, GIL-holding "
                    f"samples, {p['samples']:,} in {p['seconds']:.1f} s; the GIL was busy "
                    f"{p['gil_busy'] * 100:.0f}% of the time; loop thread "
                    f"{p['threads'].get('loop', 0) * 100:.0f}%, paho's network thread "
                    f"{p['threads'].get('network (paho)', 0) * 100:.0f}%):\n\n"
                    + table(["part (inclusive)", "share"], [[k, f"{v * 100:.1f}%"] for k, v in parts])
                    + "\n\nHottest frames (self): "
                    + ", ".join(f"`{f}` {v * 100:.1f}%" for f, v in p["hottest"][:8]) + ".")
    return out


def cluster() -> str:
    r = load("cluster")
    if not r:
        return ""
    rows = [[x["pattern"], x["policy"], x["latency_mean_ms"], x["latency_p95_ms"], x["deadline_hit_rate"],
             x.get("expired", "-"), x.get("rejected", "-"), x.get("cloud_tokens", "-"), x["cloud_token_share"],
             x["cost_per_response"], x.get("pcr", "-"), *_errors(x), x["load_balance"]] for x in r["runs"]]
    out = table(["arrivals", "policy", "mean ms", "p95 ms", "deadline hit", "accepted, expired", "refused",
                 "cloud tokens", "cloud token share", "cost/response", "PCR", "prediction error edge",
                 "prediction error cloud", "balance"], rows)
    by = {(x["pattern"], x["policy"]): x for x in r["runs"]}
    lines = _targets(by)

    def change(new: float, old: float, less: str, more: str) -> str:
        if not old:
            return "none either way" if not new else f"{new:.2f} from none"
        ratio = 1 - new / old
        return f"{ratio * 100:.0f}% {less}" if ratio >= 0 else f"{-ratio * 100:.0f}% {more}"

    for pattern in ("steady", "bursty"):
        d, la, co = by.get((pattern, "deadline")), by.get((pattern, "load-aware")), by.get((pattern, "cloud-only"))
        if d and la:
            lines.append(f"- {pattern}: deadline vs load-aware: cloud tokens {d['cloud_token_share']:.2f} vs "
                         f"{la['cloud_token_share']:.2f} ("
                         f"{change(d['cloud_token_share'], la['cloud_token_share'], 'fewer', 'more')}), "
                         f"p95 {d['latency_p95_ms']:.0f} vs {la['latency_p95_ms']:.0f} ms.")
        for name in ("deadline", "load-aware"):
            e = by.get((pattern, name))
            if e and co:
                lines.append(f"- {pattern}: edge-first ({name}) vs cloud-only: mean latency "
                             f"{change(e['latency_mean_ms'], co['latency_mean_ms'], 'lower', 'higher')}, "
                             f"cost per response "
                             f"{change(e['cost_per_response'], co['cost_per_response'], 'lower', 'higher')}.")
    _plot_cluster(r["runs"])
    return out + "\n\n" + "\n".join(lines) + "\n\n![cluster](img/cluster.png)"


def _errors(x: dict[str, Any]) -> list[Any]:
    e = x.get("prediction_error") or {}
    return [f"{e[t] * 100:.0f}%" if isinstance(e.get(t), float) and e[t] == e[t] else "-" for t in ("edge", "cloud")]


def _targets(by: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Issue 15's targets on the bursty runs, each said met or not, with the figures behind it."""
    d, la = by.get(("bursty", "deadline")), by.get(("bursty", "load-aware"))
    if not d or not la or "pcr" not in d:
        return []
    others = [x for (p, pol), x in by.items() if p == "bursty" and pol not in ("deadline", "cloud-only")]
    fewest = all(d["expired"] <= x.get("expired", 0) for x in others)
    fewer_cloud = 1 - d["cloud_tokens"] / la["cloud_tokens"] if la["cloud_tokens"] else 0.0
    ratio = d["pcr"] / la["pcr"] if la["pcr"] else float("inf")
    # a tier a run never used has no error: NaN in the benchmark, null once written as JSON
    errs = [e for x in by.values() for e in (x.get("prediction_error") or {}).values()
            if isinstance(e, float) and e == e]
    worst = max(errs, default=float("nan"))
    cheaper = fewer_cloud >= 0.25 and d["deadline_hit_rate"] >= la["deadline_hit_rate"]

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    return [
        f"- bursty, deadline hit rate >= 99%: {d['deadline_hit_rate']:.3f} ({met(d['deadline_hit_rate'] >= 0.99)}).",
        f"- bursty, fewest accepted-then-expired: deadline {d['expired']}, the others "
        f"{', '.join(str(x['expired']) for x in others)} ({met(fewest)}; 0 is the goal).",
        f"- bursty, >= 25% fewer cloud tokens than load-aware at an equal or higher hit rate: {d['cloud_tokens']} vs "
        f"{la['cloud_tokens']} ({abs(fewer_cloud) * 100:.0f}% {'fewer' if fewer_cloud >= 0 else 'more'}), "
        f"hit {d['deadline_hit_rate']:.3f} vs "
        f"{la['deadline_hit_rate']:.3f} ({met(cheaper)}).",
        f"- bursty, PCR >= 1.25x load-aware's: {ratio:.2f}x ({met(ratio >= 1.25)}).",
        f"- prediction median absolute error <= 15% for every policy and tier: worst {worst * 100:.0f}% "
        f"({met(worst <= 0.15)}).",
    ]


def _plot_cluster(runs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (key, label) in zip(axes, (("latency_p95_ms", "p95 latency (ms)"), ("cloud_token_share",
                                                                              "share of tokens in the cloud"),
                                        ("cost_per_response", "cost per response")), strict=True):
        for i, pattern in enumerate(("steady", "bursty")):
            sel = [x for x in runs if x["pattern"] == pattern]
            ax.bar([j + i * 0.4 for j in range(len(sel))], [x[key] for x in sel], width=0.4, label=pattern)
            ax.set_xticks([j + 0.2 for j in range(len(sel))], [x["policy"] for x in sel], rotation=30, fontsize=8)
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "cluster.png", dpi=110)


def simulate() -> str:
    r = load("simulate")
    if not r:
        return ""
    out = ""
    if r.get("validation"):
        rows = [[x["pattern"], x["policy"], x["measured_mean_ms"], x["simulated_mean_ms"], f"{x['error'] * 100:+.1f}%",
                 *([x["placed_mean_ms"], f"{x['error_placed'] * 100:+.1f}%"] if "error_placed" in x else ["-", "-"])]
                for x in r["validation"]]
        within = sum(1 for x in r["validation"] if abs(x["error"]) <= 0.15)
        replayed = [x for x in r["validation"] if "error_placed" in x]
        placed = sum(1 for x in replayed if abs(x["error_placed"]) <= 0.15)
        out += "Validation against benchmark 4 (same traces, agents and cloud):\n\n" + table(
            ["arrivals", "policy", "measured mean ms", "simulated mean ms", "error",
             "placed as measured: mean ms", "placed as measured: error"], rows) + (
            f"\n\n{within} of {len(r['validation'])} runs within 15% (target: every run, bursts included: "
            f"{'met' if within == len(r['validation']) else '**not met**'})" + (
                f"; with every job placed where the measured run placed it, {placed} of {len(replayed)}"
                if replayed else "") + ".\n\n")
    rows = [[x["pattern"], x["policy"], x["agents"], x["jobs"], x["latency_mean_ms"], x["latency_p95_ms"],
             x["deadline_hit_rate"], x["cloud_token_share"], x["cost_per_response"], x["sim_seconds"]]
            for x in r["large"]]
    return out + "At scale:\n\n" + table(["arrivals", "policy", "agents", "jobs", "mean ms", "p95 ms", "deadline hit",
                                          "cloud token share", "cost/response", "simulated in s"], rows)


def structured() -> str:
    r = load("structured")
    if not r:
        return ""
    names = {"free": "free (no response_format)", "fogmesh": "json_schema, fogmesh's sampler",
             "llama-cpp-python": "json_schema, grammar in llama-cpp-python's chain"}
    rows = [[label, r[key]["decode_tps"]["p50"], r[key]["decode_tps"]["p50"] / r["free"]["decode_tps"]["p50"],
             r[key]["ttft_ms"]["p50"], r[key]["tokens"]["p50"]] for key, label in names.items()]
    return (f"{r['rounds']} interleaved rounds, {r['threads']} threads, the bundled Gemma 3 270M, up to "
            f"{r['max_tokens']} tokens ({r['meta']['when']}):\n\n"
            + table(["decoding", "decode tok/s p50", "x free", "TTFT p50 ms", "tokens p50"], rows)
            + f"\n\nConstrained at **{r['ratio_fogmesh']:.2f}x** the free rate (target >= 0.8x); invalid "
              f"answers: **{len(r['invalid'])}**.")


def batching(name: str = "batching") -> str:
    r = load(name)
    if not r:
        return ""
    dev = r.get("device") or {}
    where = (f"on {dev['device']} with {dev['gpu_layers']} of {dev['layers']} layers offloaded, "
             if dev.get("gpu_layers") else "")
    rows = [[run["jobs"], run["batched"]["tps"]["p50"], run["separate"]["tps"]["p50"], run["bare"]["tps"]["p50"],
             run["batched_over_separate"], run["batched_over_bare"], run["batched"]["job_tps"]["p50"],
             run["separate"]["job_tps"]["p50"]] for run in r["runs"]]
    return (f"{r['rounds']} interleaved rounds, {where}{r['threads']} threads, the bundled Gemma 3 270M, up to "
            f"{r['max_tokens']} tokens a job, the agent's default sampling on every side; the batched agent "
            f"has {r['slots']} slots, the separate one a slot per job ({r['meta']['when']}, "
            f"{r['meta']['machine']}, {r['meta']['cpus']} CPUs):\n\n"
            + table(["jobs", "batched agent tok/s", "separate contexts tok/s", "bare batched loop tok/s",
                     "x separate", "x bare", "batched per-job decode", "separate per-job decode"], rows))


def batching_gpu() -> str:
    return "\n\n".join(part for part in (batching("batching-gpu"), batching("batching-gpu-wide")) if part)


SECTIONS = {"OVERHEAD": overhead, "STRUCTURED": structured, "BATCHING": batching, "BATCHING_GPU": batching_gpu,
            "DISPATCH": dispatch,
            "SCALE": scale, "CLUSTER": cluster, "SIMULATE": simulate}


def main() -> int:
    path = DOCS / "benchmarks.md"
    text = path.read_text()
    for name, fn in SECTIONS.items():
        start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
        if start in text and end in text:
            body = fn() or "_not run yet_"
            text = text[: text.index(start) + len(start)] + "\n" + body + "\n" + text[text.index(end):]
    path.write_text(text)
    print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
