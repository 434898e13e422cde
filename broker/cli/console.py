"""The site on a terminal: ``fogmesh status`` once, ``fogmesh status --watch`` live (rich), and every
site on the broker at a glance (``fogmesh status --all-sites``)."""

from __future__ import annotations

import math
import os
import re
import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from broker.runtime.client import Fleet

JOB_COUNTS = ("accepted", "done", "rejected", "cancelled", "expired", "error")  # of the coordinator's counters
STATE_STYLE = {"online": "green", "draining": "yellow", "offline": "red", "stale": "bold red", "missing": "bold red"}


# What a terminal would act on rather than show: C0 and C1 controls (ESC starts escape sequences).
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


# Any client the broker lets write a status topic decides what is in it: every field is read as
# what it should be, or its default, and every string is shown as text, never as rich markup or as
# the escape sequences a terminal would run.

def num(value: Any, default: float = 0.0) -> float:
    """A finite number from a status field, else ``default``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else default


def count(value: Any) -> int:
    """A count from a status field: a whole number 0 or more, else 0."""
    return max(0, int(num(value)))


def text(value: Any) -> str:
    """A string from a status field (a number shown as it is, anything else empty), without control
    characters."""
    if isinstance(value, str):
        return _CONTROLS.sub("", value)
    return str(value) if num(value, math.nan) == value else ""


def obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def liveness(status: dict[str, Any] | None, now: float) -> str:
    """A status's state, or ``stale`` when an online daemon has missed three heartbeats."""
    if not status or not isinstance(status, dict):
        return "unknown"
    state = text(status.get("state", "?")) or "?"
    ts, every = num(status.get("ts")), num(status.get("heartbeat_s"), 5.0)
    if state != "offline" and ts and now - ts > 3 * (every if every > 0 else 5.0):
        return "stale"
    return state


def _styled(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def _cells(*values: Any) -> list[Any]:
    """A table row's cells, a plain string as plain text: rich would read one as markup."""
    return [Text(v) if isinstance(v, str) else v for v in values]



def model_label(m: dict[str, Any]) -> str:
    """A model and where it runs: ``gemma@CPU``, ``gemma@CUDA0 19/19`` (layers on the GPU / all);
    the name alone from an agent that does not say."""
    name, device = text(m.get("name")), text(m.get("device")).split(" ")[0]
    if not device:
        return name
    on_gpu = count(m.get("gpu_layers"))
    return f"{name}@{device}" + (f" {on_gpu}/{count(m.get('layers'))}" if on_gpu else "")

def render(snap: dict[str, Any], now: float | None = None) -> Group:
    now = now or time.time()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    coord = obj(snap["coordinator"])
    head.add_row(*_cells("site", f"{text(snap['site'])} on {snap['broker']}"))
    line = Text.assemble(_styled(liveness(coord, now)), f"  host {text(coord.get('host')) or '-'}  pid "
                         f"{text(coord.get('pid')) or '-'}  policy {text(coord.get('policy')) or '-'}")
    head.add_row("coordinator", line)
    mesh = obj(snap["mesh"])
    if mesh:
        # with no agent there is no wait to predict: say so, not "predicted wait 0 ms"
        wait = (f"predicted wait {num(mesh.get('predicted_wait_ms')):.0f} ms" if count(mesh.get("agents_online"))
                else "no agent online: jobs wait for one")
        line = Text(f"{count(mesh.get('agents_online'))} agents · slots {count(mesh.get('slots_free'))}/"
                    f"{count(mesh.get('slots_total'))} free · queue {count(mesh.get('queue_depth'))} · running "
                    f"{count(mesh.get('running'))} · {wait}")
        if mesh.get("overloaded") is True:
            line.append("  OVERLOADED", style="bold red")
        head.add_row("mesh", line)
    bridge = obj(snap["bridge"])
    if bridge:
        reach = (Text("reachable", style="green") if bridge.get("reachable") is True
                 else Text("UNREACHABLE", style="bold red"))
        head.add_row("cloud bridge", Text.assemble(
            _styled(liveness(bridge, now)), "  cloud ", reach,
            f" · outbox {count(bridge.get('outbox_depth'))} (oldest {num(bridge.get('oldest_age_s')):.0f} s)"
            f" · dead letters {count(bridge.get('dlq_depth'))}"))
    agents = Table(show_edge=False, pad_edge=False, header_style="bold")
    for name, justify in (("agent", "left"), ("state", "left"), ("host", "left"), ("pid", "right"),
                          ("slots free", "right"), ("queue", "right"), ("jobs", "right"), ("tok/s", "right"),
                          ("TTFT ms", "right"), ("budget", "right"), ("seen", "right"), ("models", "left")):
        agents.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for name, a in sorted(snap["agents"].items()):
        a, ts = obj(a), num(obj(a).get("ts"))
        budget = obj(a.get("budget"))
        agents.add_row(*_cells(
            text(name), _styled(liveness(a, now)), text(a.get("host"))[:16], text(a.get("pid")),
            f"{count(a.get('slots_free'))}/{count(a.get('slots_total'))}", str(count(a.get("queue_depth"))),
            str(len(items(a.get("jobs")))), f"{num(a.get('decode_tps')):.1f}", f"{num(a.get('ttft_ms')):.0f}",
            f"{count(budget.get('used'))}/{count(budget.get('tokens'))}" if budget else "-",
            f"{max(0.0, now - ts):.0f} s ago" if ts else "-",
            ",".join(model_label(obj(m)) for m in items(a.get("models")))))
    if not snap["agents"]:
        agents.add_row("(no agent has reported on this site)", *[""] * 11)
    return Group(head, Text(""), agents)


def site_health(snap: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """One site at a glance (a line of ``status --all-sites``, an item of its ``--json``): healthy
    when its coordinator is online and heartbeating, an agent is online, it is not overloaded and
    its cloud, where it has a bridge, is reachable; ``problems`` says what is not so."""
    now = now or time.time()
    coord, mesh, bridge = snap["coordinator"], obj(snap["mesh"]), snap["bridge"]
    coordinator = liveness(coord, now) if coord else "missing"
    agents = [liveness(a, now) for a in snap["agents"].values()]
    online = sum(1 for state in agents if state in ("online", "draining"))
    counters = obj(obj(coord).get("counters"))
    cloud = None
    if bridge:
        state = liveness(bridge, now)
        reachable = obj(bridge).get("reachable") is True
        cloud = ("reachable" if reachable else "unreachable") if state == "online" else f"bridge {state}"
    problems = [f"coordinator {coordinator}"] if coordinator != "online" else []
    if not online:
        problems.append("no agent online")
    if mesh.get("overloaded") is True:
        problems.append("overloaded")
    if cloud not in (None, "reachable"):
        problems.append(f"cloud {cloud}" if cloud == "unreachable" else str(cloud))
    return {"site": snap["site"], "healthy": not problems, "problems": problems, "coordinator": coordinator,
            "agents_online": online, "agents_total": len(agents), "queue_depth": count(mesh.get("queue_depth")),
            "overloaded": mesh.get("overloaded") is True, "cloud": cloud,
            "jobs": {key: count(counters.get(key)) for key in JOB_COUNTS}}


def sites_table(rows: list[dict[str, Any]], broker: str) -> Group:
    """``fogmesh status --all-sites``: one line per site, its health first."""
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for name, justify in (("site", "left"), ("health", "left"), ("coordinator", "left"), ("agents", "right"),
                          ("queue", "right"), ("cloud", "left"), ("jobs done/rejected/expired/error", "right"),
                          ("problems", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in rows:
        jobs = r["jobs"]
        table.add_row(*_cells(
            text(r["site"]), Text("ok", style="green") if r["healthy"] else Text("UNHEALTHY", style="bold red"),
            _styled(r["coordinator"]), f"{r['agents_online']}/{r['agents_total']}",
            f"{r['queue_depth']}" + (" OVERLOADED" if r["overloaded"] else ""), r["cloud"] or "-",
            f"{jobs['done']}/{jobs['rejected']}/{jobs['expired']}/{jobs['error']}", ", ".join(r["problems"])))
    unhealthy = sum(1 for r in rows if not r["healthy"])
    return Group(Text(f"{len(rows)} site(s) on {broker}, {unhealthy} unhealthy"), Text(""), table)


def wide_console() -> Console:
    """The terminal's width on a terminal; a wide one in a pipe or a log, where rich would assume 80."""
    return Console() if sys.stdout.isatty() else Console(width=int(os.environ.get("COLUMNS", "160")))


def print_once(snap: dict[str, Any], console: Console | None = None) -> None:
    (console or wide_console()).print(render(snap))


def watch(fleet: Fleet, every_s: float = 1.0, count: int = 0, console: Console | None = None) -> None:
    """Redraw the site every ``every_s`` until interrupted (or ``count`` redraws, when set)."""
    console = console or wide_console()
    drawn = 0
    with Live(render(fleet.snapshot()), console=console, auto_refresh=False, transient=False) as live:
        while not count or drawn < count:
            live.update(render(fleet.snapshot()), refresh=True)
            drawn += 1
            if count and drawn >= count:
                break
            time.sleep(every_s)


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def busy_rate(advertises: dict[str, Any]) -> str:
    at = advertises.get("decode_tps_at") or []
    return f", {at[-1]:.1f} tok/s each with {len(at)} at once" if len(at) > 1 and at[-1] else ""


def probe_table(report: dict[str, Any]) -> Group:
    """``fogmesh probe``: the device, then one row per model and prompt size."""
    head = Text(f"{report['host']}: {report['cores']} cores ({report['threads']} threads used), memory "
                f"{_mb(report['mem_total_bytes'])} total, {_mb(report['mem_available_bytes'])} available")
    table = Table(show_edge=False, header_style="bold")
    for name, justify in (("model", "left"), ("fits", "left"), ("max context", "right"), ("load s", "right"),
                          ("resident", "right"), ("KV/token", "right"), ("prompt tok", "right"),
                          ("TTFT ms", "right"), ("prefill tok/s", "right"), ("decode tok/s", "right")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for m in report["models"]:
        if m["error"]:
            table.add_row(m["name"], Text("no", style="red"), "-", "-", "-", "-", "-", "-", "-", m["error"][:60])
            continue
        fits = Text("yes", style="green") if m["fits"] else Text("no", style="red")
        for i, run in enumerate(m["runs"]):
            first = i == 0
            table.add_row(m["name"] if first else "", fits if first else "",
                          f"{m['max_context']:,}" if first else "", f"{m['load_s']:.2f}" if first else "",
                          _mb(m["rss_bytes"]) if first else "", f"{m['kv_bytes_per_token'] / 1024:.0f} KiB"
                          if first else "", str(run["prompt_tokens"]), f"{run['ttft_ms']:.0f}",
                          f"{run['prefill_tps']:.0f}", f"{run['decode_tps']:.1f}")
    adv = [f"{m['name']}: {m['advertises'].get('decode_tps', 0):.1f} tok/s, TTFT "
           f"{m['advertises'].get('ttft_ms', 0):.0f} ms" + busy_rate(m["advertises"])
           for m in report["models"] if m["advertises"]]
    return Group(head, Text(""), table, Text(""), Text("an agent here advertises  " + "; ".join(adv)),
                 offload_lines(report))


def offload_lines(report: dict[str, Any]) -> Text:
    """GPU offload: each model's device and layers beside its CPU-only figures, or why there is none."""
    if not report.get("gpus"):
        return Text("GPU offload: unavailable, llama-cpp-python was built without a GPU backend (CUDA, Metal, "
                    "Vulkan; docs/deploy.md)")
    lines = [f"GPU offload: {', '.join(report['gpus'])}"]
    for m in report["models"]:
        cpu, gpu = m.get("without_offload") or {}, m.get("advertises") or {}
        if not cpu:
            lines.append(f"  {m['name']}: on {m.get('device') or 'CPU'}, no layers offloaded")
            continue
        lines.append(f"  {m['name']}: {m['gpu_layers']}/{m['layers']} layers on {m['device']}: "
                     f"{gpu.get('decode_tps', 0):.1f} tok/s, TTFT {gpu.get('ttft_ms', 0):.0f} ms; on the CPU alone "
                     f"{cpu.get('decode_tps', 0):.1f} tok/s, TTFT {cpu.get('ttft_ms', 0):.0f} ms")
    return Text("\n".join(lines))


def plan_table(rows: list[dict[str, Any]], choice: str, why: str, workload: Any, devices: int) -> Group:
    """``fogmesh plan``: each option's predicted latency, cost, utility and PCR, and the recommendation."""
    head = Text(f"{workload.rate_per_s:g} jobs/s of {workload.completion_tokens} tokens, deadline "
                f"{workload.deadline_ms:.0f} ms, {workload.edge_only_share:.0%} edge-only, on {devices} device(s)")
    table = Table(show_edge=False, header_style="bold")
    for name in ("option", "mean ms", "p95 ms", "deadlines met", "cloud tokens", "$ per 1,000 answers", "utility",
                 "PCR", "unservable"):
        table.add_column(name, justify="left" if name == "option" else "right", no_wrap=True)
    notes = []
    for r in rows:
        style = "bold green" if r["option"] == choice else ""
        over = r.get("over_capacity")
        table.add_row(Text(r["option"], style=style), "unbounded" if over else f"{r['latency_mean_ms']:,.0f}",
                      "unbounded" if over else f"{r['latency_p95_ms']:,.0f}",
                      f"{r['deadline_hit_rate']:.1%}", f"{r['cloud_token_share']:.1%}",
                      money(r["cost_per_response"] * 1000), f"{r['utility']:.3f}",
                      "inf" if r["pcr"] == float("inf") else f"{r['pcr']:,.0f}", str(r["unservable"]))
        if over:
            notes.append(Text(f"{r['option']}: the devices serve about {r['capacity_jobs_per_s']:g} jobs/s, fewer than "
                              f"the {workload.rate_per_s:g} that arrive: its queue grows without bound", style="red"))
        if r["unservable"]:
            notes.append(Text(f"{r['option']}: {r['unservable']} edge-only jobs cannot go there at all (counted as "
                              "missed deadlines)"))
    return Group(head, Text(""), table, *notes, Text(""), Text.assemble(("recommended: ", "bold"),
                                                                        (choice, "bold green"), f" - {why}"))


def money(amount: float) -> str:
    """Dollars a person reads: 0.0295, 1.20, 1,234.50 (never 2.95e-05)."""
    if amount == 0:
        return "0"
    if amount >= 1:
        return f"{amount:,.2f}"
    digits = max(2, 3 - math.floor(math.log10(amount)))
    return f"{amount:.{digits}f}"
