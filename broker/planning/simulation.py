"""A discrete-event simulation of a site that runs fogmesh's own scheduler (``decide()``,
``WaitQueue``), not a copy: simulated agents and a simulated cloud, real decisions.

``fogmesh plan`` uses it to predict a workload on probed devices; ``bench/simulate.py``
validates it against the measured cluster experiment and scales it to 1,000 agents.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.coordinator.scheduler import AgentView, CloudTier, DispatchPass, JobSpec, WaitQueue, decide, edge_cost
from broker.runtime.budget import TokenWindow


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


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
    privacy: str = "cloud-ok"


def simulate(jobs: list[SimJob], agents: list[SimAgent], cloud: CloudTier, cloud_workers: int,
             policy: str, seed: int = 1) -> dict[str, Any]:
    """Run the trace; returns per-job latency, tier and cost plus the run's figures."""
    rng = random.Random(seed)
    for a in agents:  # every run starts from idle agents, so one fleet can be run under several options
        a.window = TokenWindow(a.window_s)
        a.busy = a.busy_tokens = a.served = 0
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
        this_pass = DispatchPass()  # as the coordinator's _dispatch
        views = [a.view(now) for a in agents]  # as the coordinator does: built once, then patched
        index = {a.name: i for i, a in enumerate(agents)}
        while not this_pass.done:
            key = waiting.pop(now)
            if key is None:
                break
            j = pending[key]
            deadline = j.arrival + j.deadline_s if j.deadline_s else None
            spec = JobSpec(key=key, max_tokens=j.max_tokens, prompt_tokens=j.prompt_tokens, model="m",
                           deadline_at=deadline, privacy=j.privacy)
            if this_pass.set_aside(key, spec):
                continue
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
                this_pass.hold(key, spec)
        for key in this_pass.waiting():
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
            out[j.key] = {"tier": "edge", "node": a.name, "latency_s": now - j.arrival + DISPATCH_S,
                          "cost": edge_cost(a, j.tokens + j.prompt_tokens), "tokens": j.tokens}
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
    return {"latency_mean_ms": statistics.fmean(lat), "latency_p95_ms": percentile(lat, 95),
            "deadline_hit_rate": hit / len(jobs),
            "cloud_token_share": cloud_tokens / max(1, sum(o["tokens"] for o in out.values())),
            "cost_per_response": statistics.fmean(o["cost"] for o in out.values()),
            "load_balance": max(served) / mean_served if mean_served else float("nan")}
