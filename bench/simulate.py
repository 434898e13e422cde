"""Benchmark 5: a trace-driven simulator that runs fogmesh's own scheduler (broker.scheduler) -
not a copy - over simulated agents and a simulated cloud, to take the cluster experiment
past one machine (1,000 agents, 100,000 jobs).

It is validated against benchmark 4: the same traces, agents (with the decode rates
and first-token times they measured) and cloud figures; the simulated mean latency
of each run is compared with the measured one.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench.harness import RESULTS, pct, write
from broker.coordinator import LOOK_PAST
from broker.scheduler import AgentView, CloudTier, JobSpec, WaitQueue, decide, edge_cost
from broker.views import TokenWindow

DISPATCH_S = 0.01  # the mesh's own latency per job (benchmark 2: a few ms each way)


@dataclass
class SimAgent:
    name: str
    slots: int
    tps: float  # decode tokens/s per slot
    ttft_s: float
    budget_tokens: int = 0
    window_s: float = 60.0
    energy_j_per_token: float = 0.0
    price_per_kwh: float = 0.30
    busy: int = 0
    busy_tokens: int = 0
    served: int = 0
    window: TokenWindow = field(default_factory=lambda: TokenWindow(60.0))

    def view(self, now: float) -> AgentView:
        return AgentView(agent=self.name, models=frozenset({"m"}), slots=self.slots, outstanding=self.busy,
                         outstanding_tokens=self.busy_tokens, decode_tps=self.tps, ttft_ms=self.ttft_s * 1000,
                         budget_tokens=self.budget_tokens, budget_used=self.window.used(now) + self.busy_tokens,
                         energy_j_per_token=self.energy_j_per_token, price_per_kwh=self.price_per_kwh, prefetch=0)


@dataclass
class SimJob:
    key: str
    arrival: float
    max_tokens: int
    tokens: int  # what the model actually generated
    prompt_tokens: int
    deadline_s: float | None
    priority: int = 5


def simulate(jobs: list[SimJob], agents: list[SimAgent], cloud: CloudTier, cloud_workers: int,
             policy: str, seed: int = 1) -> dict[str, Any]:
    """Run the trace; returns per-job latency, tier and cost plus the run's figures."""
    rng = random.Random(seed)
    for a in agents:
        a.window = TokenWindow(a.window_s)
    events: list[tuple[float, int, str, Any]] = []  # (time, order, kind, payload)
    n = 0
    for j in jobs:
        heapq.heappush(events, (j.arrival, n, "arrive", j))
        n += 1
    waiting = WaitQueue(10.0)
    pending: dict[str, SimJob] = {}
    cloud_free = [0.0] * cloud_workers
    out: dict[str, dict[str, Any]] = {}
    by_name = {a.name: a for a in agents}

    def dispatch(now: float) -> None:
        nonlocal n
        held = []
        views = [a.view(now) for a in agents]  # as the coordinator does: built once, then patched
        index = {a.name: i for i, a in enumerate(agents)}
        while True:
            key = waiting.pop(now)
            if key is None:
                break
            j = pending[key]
            deadline = j.arrival + j.deadline_s if j.deadline_s else None
            spec = JobSpec(key=key, max_tokens=j.max_tokens, prompt_tokens=j.prompt_tokens, model="m",
                           deadline_at=deadline)
            d = decide(spec, views, now, policy, cloud=cloud, rng=rng)  # type: ignore[arg-type]
            if d.target == "cloud":
                start = max(now, min(cloud_free))
                i = cloud_free.index(min(cloud_free))
                end = start + cloud.latency_s + j.tokens / cloud.decode_tps
                cloud_free[i] = end
                cost = j.prompt_tokens / 1000 * cloud.price_in_per_1k + j.tokens / 1000 * cloud.price_out_per_1k
                out[key] = {"tier": "cloud", "latency_s": end - j.arrival + DISPATCH_S, "cost": cost,
                            "tokens": j.tokens}
                del pending[key]
            elif d.target == "agent" and d.agent:
                a = by_name[d.agent]
                a.busy += 1
                a.busy_tokens += j.max_tokens
                views[index[a.name]] = a.view(now)
                end = now + DISPATCH_S + a.ttft_s + j.tokens / a.tps
                heapq.heappush(events, (end, n, "finish", (a, j)))
                n += 1
                del pending[key]
            else:
                held.append(key)
                if len(held) >= LOOK_PAST:  # as the coordinator: a bounded look past jobs that must wait
                    break
        for key in held:
            j = pending[key]
            waiting.push(key, j.priority, j.arrival)

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            pending[payload.key] = payload
            waiting.push(payload.key, payload.priority, payload.arrival)
        elif kind == "finish":
            a, j = payload
            a.busy -= 1
            a.busy_tokens -= j.max_tokens
            a.served += 1
            a.window.add(j.tokens, now)
            view = AgentView(agent=a.name, energy_j_per_token=a.energy_j_per_token, price_per_kwh=a.price_per_kwh)
            out[j.key] = {"tier": "edge", "node": a.name, "latency_s": now - j.arrival + DISPATCH_S,
                          "cost": edge_cost(view, j.tokens + j.prompt_tokens), "tokens": j.tokens}
        dispatch(now)
        if not events and pending:  # only budget-blocked jobs left: advance to when windows drain
            heapq.heappush(events, (now + 1.0, n, "tick", None))
            n += 1
    return out


def figures(jobs: list[SimJob], out: dict[str, dict[str, Any]], agents: list[SimAgent]) -> dict[str, Any]:
    lat = [out[j.key]["latency_s"] * 1000 for j in jobs if j.key in out]
    cloud_tokens = sum(o["tokens"] for o in out.values() if o["tier"] == "cloud")
    served = [a.served for a in agents]
    mean_served = statistics.fmean(served) if served else 0
    hit = sum(1 for j in jobs if j.key in out and (j.deadline_s is None or out[j.key]["latency_s"] <= j.deadline_s))
    return {"latency_mean_ms": statistics.fmean(lat), "latency_p95_ms": pct(lat, 95),
            "deadline_hit_rate": hit / len(jobs),
            "cloud_token_share": cloud_tokens / max(1, sum(o["tokens"] for o in out.values())),
            "cost_per_response": statistics.fmean(o["cost"] for o in out.values()),
            "load_balance": max(served) / mean_served if mean_served else float("nan")}


def validate(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    """Replay each run of benchmark 4 and compare simulated with measured mean latency."""
    cfg = cluster["config"]
    rows = []
    agent_status = cluster.get("agents") or {}
    for run in cluster["runs"]:
        measured = [r for r in run["rows"] if r["status"] == "done"]
        jobs = [SimJob(key=r["job"], arrival=r["offset_s"], max_tokens=cfg["max_tokens"],
                       tokens=r["tokens"] or cfg["max_tokens"], prompt_tokens=r["prompt_tokens"] or 12,
                       deadline_s=cfg["deadline_ms"] / 1000) for r in run["rows"]]
        agents = []
        for name, slots in (("edge-1slot", 1), ("edge-2slot", 2)):
            edge = [r for r in measured if r["node"] == name]
            tps = statistics.median([r["timings"]["decode_tps"] for r in edge if r["timings"].get("decode_tps")] or
                                    [(agent_status.get(name) or {}).get("decode_tps", 20.0)])
            ttft = statistics.median([r["timings"]["ttft_ms"] / 1000 for r in edge if r["timings"].get("ttft_ms")] or
                                     [0.05])
            st = agent_status.get(name) or {}
            agents.append(SimAgent(name=name, slots=slots, tps=tps, ttft_s=ttft, budget_tokens=cfg["budget_tokens"],
                                   window_s=cfg["budget_window_s"],
                                   energy_j_per_token=st.get("energy_j_per_token", 0.0)))
        cloud = CloudTier(enabled=True, latency_s=0.8, decode_tps=80, price_in_per_1k=0.0005, price_out_per_1k=0.0015)
        if run["policy"] == "cloud-only":
            agents = []
        policy = "deadline" if run["policy"] == "cloud-only" else run["policy"]
        sim = figures(jobs, simulate(jobs, agents, cloud, cfg.get("cloud_workers", 4), policy), agents)
        err = (sim["latency_mean_ms"] - run["latency_mean_ms"]) / run["latency_mean_ms"]
        rows.append({"pattern": run["pattern"], "policy": run["policy"], "measured_mean_ms": run["latency_mean_ms"],
                     "simulated_mean_ms": sim["latency_mean_ms"], "error": err})
        print(f"validate {run['pattern']:<7} {run['policy']:<10} measured {run['latency_mean_ms']:7.0f} ms"
              f"  simulated {sim['latency_mean_ms']:7.0f} ms  error {err * 100:+.1f}%", flush=True)
    return rows


def large(n_agents: int, n_jobs: int, seed: int = 7) -> list[dict[str, Any]]:
    """1,000 heterogeneous agents, 100,000 jobs in bursts, each policy against cloud-only."""
    rng = random.Random(seed)
    rows = []
    for pattern in ("steady", "bursty"):
        for policy in ("random", "weighted", "load-aware", "deadline", "cloud-only"):
            agents = [] if policy == "cloud-only" else [
                SimAgent(name=f"a{i}", slots=rng.choice((1, 1, 2, 4)), tps=rng.choice((15.0, 30.0, 50.0, 90.0)),
                         ttft_s=rng.uniform(0.03, 0.3), budget_tokens=2400, window_s=60.0,
                         energy_j_per_token=rng.uniform(0.1, 0.5)) for i in range(n_agents)]
            capacity = sum(a.slots * a.tps for a in agents) or 40_000.0
            span = n_jobs * 48 / (capacity * 0.7) if agents else n_jobs * 48 / (40_000.0 * 0.7)
            jrng = random.Random(seed + 1)
            if pattern == "steady":
                arrivals = sorted(jrng.uniform(0, span) for _ in range(n_jobs))
            else:
                bursts = max(1, n_jobs // 200)
                arrivals = sorted((b * span / bursts) + jrng.uniform(0, 0.5) for b in range(bursts) for _ in range(200))
            jobs = [SimJob(key=f"j{i}", arrival=t, max_tokens=64, tokens=jrng.randint(16, 64), prompt_tokens=20,
                           deadline_s=5.0) for i, t in enumerate(arrivals[:n_jobs])]
            cloud = CloudTier(enabled=True, latency_s=0.8, decode_tps=80, price_in_per_1k=0.0005,
                              price_out_per_1k=0.0015)
            t = time.perf_counter()
            out = simulate(jobs, agents, cloud, 400, "deadline" if policy == "cloud-only" else policy)
            res = {"pattern": pattern, "policy": policy, "agents": len(agents), "jobs": len(jobs),
                   "sim_seconds": time.perf_counter() - t, **figures(jobs, out, agents)}
            rows.append(res)
            print(f"large {pattern:<7} {policy:<10} mean {res['latency_mean_ms']:7.0f} ms p95 "
                  f"{res['latency_p95_ms']:7.0f} ms hit {res['deadline_hit_rate']:.3f} cloud "
                  f"{res['cloud_token_share']:.3f} CPR {res['cost_per_response']:.2e} "
                  f"({res['sim_seconds']:.1f} s)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=1000)
    # 100,000 jobs over 1,000 agents takes about 15 minutes a policy here (decide() is
    # ~3 ms with 1,000 candidates); the default keeps `make bench` within its hour.
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--cluster", default=str(RESULTS / "cluster.json"))
    args = ap.parse_args(argv)
    out: dict[str, Any] = {}
    if Path(args.cluster).exists():
        out["validation"] = validate(orjson.loads(Path(args.cluster).read_bytes()))
    out["large"] = large(args.agents, args.jobs)
    print(f"-> {write('simulate', out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
