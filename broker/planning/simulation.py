"""A discrete-event simulation of a site that runs fogmesh's own scheduler (``decide()``,
``WaitQueue``), not a copy: simulated agents and a simulated cloud, real decisions.

``fogmesh plan`` uses it to predict a workload on probed devices; ``bench/simulate.py``
validates it against the measured cluster experiment and scales it to 1,000 agents.

It models what the coordinator predicts with (``coordinator/predict.py``): an agent takes TTFT
+ prompt tokens / prefill rate, then decodes each job's tokens at its rate for the number of
jobs it runs at that moment (a job that starts or ends changes every other job's pace; on a
batched agent, so does a long prompt while it is evaluated, a piece beside each token); the
coordinator plans on answer lengths it learns (``lengths``) and on the cloud's times it learns
(``cloudtime``) from the jobs the simulation finishes; the cloud runs ``cloud_workers`` jobs at
once behind its queue; under ``deadline`` a job no tier can finish in time is refused; a job still
running on an agent at its deadline is stopped there, as the coordinator expires it; an agent
takes up to ``prefetch`` jobs beyond its slots, which wait there for a slot, first come first
served. An agent may run at other rates than it advertises (``advertised_*``): the scheduler
plans with what it is told, the agent runs at what it does.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.coordinator.cloudtime import CloudTime
from broker.coordinator.lengths import AnswerLengths
from broker.coordinator.predict import SHARED_PROMPT_TOKENS, agent_parts, prefill_s, prompt_bucket, rate_at, tokens_left
from broker.coordinator.scheduler import (
    AgentView,
    CloudTier,
    DispatchPass,
    JobSpec,
    WaitQueue,
    decide,
    edge_cost,
    held_behind,
)
from broker.planning.merit import Quality, pcr, relative_error, utility
from broker.runtime.budget import TokenWindow


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


DISPATCH_S = 0.01  # the mesh's own latency per job (benchmark 2: a few ms each way)
SCALES_OUT = 10_000  # cloud workers from which the cloud is taken to scale out (no queue to predict)


@dataclass
class _Run:
    job: SimJob
    left: float  # answer tokens still to decode
    decoding_at: float  # after its TTFT and prefill
    planned: int  # the answer tokens the scheduler planned for it
    crowds: float = 0.0  # a long prompt's prefill on a batched agent: the others' tokens wait for its pieces


@dataclass
class SimAgent:
    name: str
    slots: int
    tps: float  # decode tokens/s per slot
    ttft_s: float
    prefill_tps: float = 0.0  # prompt tokens/s (0: prompts cost nothing beyond TTFT)
    advertised_prefill_tps: float = 0.0  # what the scheduler is told, where it differs (0: prefill_tps)
    prefill_tps_at: tuple[tuple[int, float], ...] = ()  # ... by prompt length, as an agent advertises it
    advertised_prefill_tps_at: tuple[tuple[int, float], ...] = ()  # what the scheduler is told (): prefill_tps_at
    tps_at: tuple[float, ...] = ()  # one job's decode tokens/s with i + 1 slots busy (): tps at any
    advertised_tps_at: tuple[float, ...] = ()  # what the scheduler is told, where it differs (): tps_at
    batched: bool = False  # its slots share one batch: a long prompt being evaluated slows the others
    budget_tokens: int = 0
    window_s: float = 60.0
    energy_j_per_token: float = 0.0
    price_per_kwh: float = 0.30
    prefetch: int = 0  # jobs the coordinator may place on it beyond its slots: they wait there, first come
    busy_tokens: int = 0
    busy_expected: int = 0  # the answer tokens the scheduler planned for the busy jobs
    served: int = 0
    window: TokenWindow = field(default_factory=lambda: TokenWindow(60.0))
    running: dict[str, _Run] = field(default_factory=dict)
    queued: list[tuple[SimJob, int, float]] = field(default_factory=list)  # (job, planned tokens, first token s)
    since: float = 0.0  # when the running jobs' progress was last brought up to date
    version: int = 0  # finish events pushed before the last change in ``running`` are stale

    @property
    def busy(self) -> int:
        return len(self.running)

    def view(self, now: float) -> AgentView:
        """The agent as the coordinator sees it at ``now``: a full agent's backlog is the answer tokens
        still to come of what the scheduler planned, as its running jobs have decoded some, and the
        first-token time still ahead of them."""
        expected, first, ahead = self.busy_expected, 0.0, []
        full = self.busy + len(self.queued) >= self.slots
        if self.busy + len(self.queued):  # as fleet.py: a busy agent's jobs, one by one
            rate = self.pace()
            told = AgentView(self.name, decode_tps=self.tps, decode_tps_at=self.advertised_tps_at or self.tps_at)
            plan = rate_at(told, min(self.busy + len(self.queued) + 1, self.slots))  # as fleet.py
            for r in self.running.values():
                left = r.left - max(0.0, now - max(self.since, r.decoding_at)) * rate
                decoded = int(max(0.0, r.job.tokens - max(left, 0.0)))
                if full:  # only a full agent's backlog counts what its jobs decoded (fleet.py)
                    expected -= min(r.planned, decoded)
                    first += max(0.0, r.decoding_at - now)
                to_come = tokens_left(r.planned, decoded, r.job.max_tokens)
                ahead.append((max(0.0, r.decoding_at - now) + to_come / plan, r.job.time_left(now)))
            for j, planned, first_s in self.queued:  # after the running ones, in the order they came
                first += first_s
                ahead.append((first_s + planned / plan, j.time_left(now)))
        beside = sum(max(0.0, min(r.crowds, r.decoding_at - now)) for r in self.running.values())
        return AgentView(agent=self.name, models=frozenset({"m"}), slots=self.slots,
                         outstanding=self.busy + len(self.queued),
                         outstanding_tokens=expected, first_ahead_s=first, ahead_s=tuple(ahead), decode_tps=self.tps,
                         ttft_ms=self.ttft_s * 1000, prefill_ahead_s=beside, batched=self.batched,
                         prefill_tps=self.advertised_prefill_tps or self.prefill_tps,
                         prefill_tps_at=() if self.advertised_prefill_tps else (
                             self.advertised_prefill_tps_at or self.prefill_tps_at),
                         decode_tps_at=self.advertised_tps_at or self.tps_at,
                         budget_tokens=self.budget_tokens, budget_used=self.window.used(now) + self.busy_tokens,
                         energy_j_per_token=self.energy_j_per_token, price_per_kwh=self.price_per_kwh,
                         prefetch=self.prefetch)

    def prefill_s(self, prompt_tokens: int) -> float:
        """The time it takes to read a prompt: by its length where it has rates by length, as the
        coordinator predicts it (predict.prefill_s)."""
        if self.prefill_tps_at:
            return prefill_s(AgentView(self.name, prefill_tps=self.prefill_tps, prefill_tps_at=self.prefill_tps_at),
                             prompt_tokens)
        return prompt_tokens / self.prefill_tps if self.prefill_tps else 0.0

    def pace(self) -> float:
        """One running job's decode tokens/s with as many running as now (since the last change):
        beside a long prompt being evaluated, each token also waits for a piece of it."""
        rate = rate_at(AgentView(self.name, decode_tps=self.tps, decode_tps_at=self.tps_at), self.busy)
        if self.prefill_tps and any(r.crowds and r.decoding_at > self.since for r in self.running.values()):
            rate = 1 / (1 / rate + SHARED_PROMPT_TOKENS / self.prefill_tps)
        return rate


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
    placed: str = ""  # a replay of a measured run: where it ran there ("cloud" or an agent); "": decided here

    def time_left(self, now: float) -> float:
        """Seconds from ``now`` to its deadline (infinite without one)."""
        return self.arrival + self.deadline_s - now if self.deadline_s else float("inf")


def simulate(jobs: list[SimJob], agents: list[SimAgent], cloud: CloudTier, cloud_workers: int,
             policy: str, seed: int = 1) -> dict[str, Any]:
    """Run the trace; returns per job its tier, latency, cost and predicted latency."""
    rng = random.Random(seed)
    for a in agents:  # every run starts from idle agents, so one fleet can be run under several options
        a.window = TokenWindow(a.window_s)
        a.busy_tokens = a.busy_expected = a.served = a.version = 0
        a.running, a.queued, a.since = {}, [], 0.0
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
    lengths, learned = AnswerLengths(), CloudTime()
    prior = dataclasses.replace(cloud, workers=cloud_workers if cloud_workers < SCALES_OUT else 0)

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
                           expect_tokens=lengths.expected("m", "", j.max_tokens), deadline_at=deadline,
                           privacy=j.privacy)
            if this_pass.set_aside(key, spec):
                continue
            tier = learned.tier(prior)
            d = decide(spec, views, now, policy, cloud=tier, rng=rng)  # type: ignore[arg-type]
            if j.placed == "cloud":  # where the measured run placed it, to time the run apart from the choices
                d = dataclasses.replace(d, target="cloud", agent=None, at_risk=False, parts=d.cloud)
            elif j.placed in by_name:
                d = dataclasses.replace(d, target="agent", agent=j.placed, at_risk=False,
                                        parts=agent_parts(views[index[j.placed]], spec.tokens, spec.prompt_tokens))
            predicted = now - j.arrival + d.predicted_s + DISPATCH_S
            if d.at_risk and policy == "deadline" and deadline is not None:
                out[key] = {"tier": "none", "status": "rejected", "latency_s": now - j.arrival, "cost": 0.0,
                            "tokens": 0}
                del pending[key]
            elif d.target == "cloud":
                start = max(now, min(cloud_free))
                i = cloud_free.index(min(cloud_free))
                end = start + cloud.latency_s + j.tokens / cloud.decode_tps
                cloud_free[i] = end
                learned.sent(key, now, tier)
                heapq.heappush(events, (end, n, "cloud", (j, end - start - cloud.latency_s)))
                n += 1
                cost = j.prompt_tokens / 1000 * cloud.price_in_per_1k + j.tokens / 1000 * cloud.price_out_per_1k
                out[key] = {"tier": "cloud", "latency_s": end - j.arrival + DISPATCH_S, "cost": cost,
                            "tokens": j.tokens, "predicted_s": predicted}
                del pending[key]
            elif d.target == "agent" and d.agent:
                a = by_name[d.agent]
                if a.busy < a.slots:
                    n = begin(a, j, spec.tokens, now + DISPATCH_S, now, events, n)
                else:  # it waits on the agent for a slot, as a prefetched job does
                    a.queued.append((j, spec.tokens, d.parts.first_s if d.parts else a.ttft_s))
                if deadline is not None:  # the coordinator stops it there, and its slot frees (one that
                    # waited past it here, where the coordinator would have expired it waiting: at once)
                    heapq.heappush(events, (max(deadline, now), n, "expire", (a, j)))
                    n += 1
                a.busy_tokens += j.max_tokens
                a.busy_expected += spec.tokens
                views[index[a.name]] = a.view(now)
                out[key] = {"predicted_s": predicted}
                del pending[key]
            else:
                this_pass.hold(key, spec)
                if d.agent:  # it holds its place in that agent's queue for the rest of the pass, as in dispatch
                    views[index[d.agent]] = held_behind(views[index[d.agent]], d, spec)
        for key in this_pass.waiting():
            j = pending[key]
            waiting.push(key, j.priority, j.arrival)

    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "arrive":
            pending[payload.key] = payload
            waiting.push(payload.key, payload.priority, payload.arrival)
        elif kind == "cloud":
            j, service_s = payload
            learned.finished(j.key, now, {"ttft_ms": 0.0, "decode_tps": cloud.decode_tps,
                                          "generate_ms": service_s * 1000})
            lengths.record("m", "", j.tokens, cut_off=j.tokens >= j.max_tokens)
        elif kind == "expire":
            a, j = payload
            waiting_there = next((q for q in a.queued if q[0] is j), None)
            if j.key in a.running or waiting_there:
                if waiting_there:
                    a.queued.remove(waiting_there)
                    planned = waiting_there[1]
                else:
                    catch_up(a, now)
                    planned = a.running.pop(j.key).planned
                    n = slot_freed(a, now, events, n)
                a.busy_tokens -= j.max_tokens
                a.busy_expected -= planned
                out[j.key].update({"tier": "none", "status": "expired", "latency_s": now - j.arrival, "cost": 0.0,
                                   "tokens": 0})
        elif kind == "evaluated":
            catch_up(payload, now)
            n = reschedule(payload, now, events, n)
        elif kind == "finish":
            a, j, version = payload
            if version != a.version:
                continue  # a job started or ended on that agent since: its pace changed
            catch_up(a, now)
            run = a.running.pop(j.key)
            n = slot_freed(a, now, events, n)
            a.busy_tokens -= j.max_tokens
            a.busy_expected -= run.planned
            a.served += 1
            a.window.add(j.tokens, now)
            lengths.record("m", "", j.tokens, cut_off=j.tokens >= j.max_tokens)
            out[j.key].update({"tier": "edge", "node": a.name, "latency_s": now - j.arrival + DISPATCH_S,
                               "cost": edge_cost(a, j.tokens + j.prompt_tokens), "tokens": j.tokens})
        dispatch(now)
        if not events and pending:  # only budget-blocked jobs left: advance to when windows drain
            heapq.heappush(events, (now + 1.0, n, "tick", None))
            n += 1
    return out


def begin(a: SimAgent, j: SimJob, planned: int, at: float, now: float, events: list[tuple[float, int, str, Any]],
          n: int) -> int:
    """``j`` starts on ``a`` (its first token after TTFT and its prompt from ``at``): the others' pace
    changes, and again once a long prompt on a batched agent is evaluated."""
    prefill = a.prefill_s(j.prompt_tokens)
    catch_up(a, now)
    run = a.running[j.key] = _Run(j, j.tokens, at + a.ttft_s + prefill, planned,
                                  prefill if a.batched and prompt_bucket(j.prompt_tokens) else 0.0)
    if run.crowds:
        heapq.heappush(events, (run.decoding_at, n, "evaluated", a))
        n += 1
    return reschedule(a, now, events, n)


def slot_freed(a: SimAgent, now: float, events: list[tuple[float, int, str, Any]], n: int) -> int:
    """A job left ``a``: the first job waiting there starts, and the running jobs' pace changes."""
    if a.queued and a.busy < a.slots:
        j, planned, _ = a.queued.pop(0)
        return begin(a, j, planned, now, now, events, n)
    return reschedule(a, now, events, n)


def catch_up(a: SimAgent, now: float) -> None:
    """Bring the running jobs' decoding up to ``now``, at the pace of as many jobs as ran."""
    if a.running:
        rate = a.pace()
        for r in a.running.values():
            begun = max(a.since, r.decoding_at)
            if now > begun:
                r.left = max(0.0, r.left - (now - begun) * rate)
    a.since = now


def reschedule(a: SimAgent, now: float, events: list[tuple[float, int, str, Any]], n: int) -> int:
    """Each running job's finish at the pace of the jobs running now; earlier ones go stale."""
    a.version += 1
    if a.running:
        rate = a.pace()
        for r in a.running.values():
            heapq.heappush(events, (max(now, r.decoding_at) + r.left / rate, n, "finish", (a, r.job, a.version)))
            n += 1
    return n


def figures(jobs: list[SimJob], out: dict[str, dict[str, Any]], agents: list[SimAgent],
            quality: Quality | None = None) -> dict[str, Any]:
    """The run's figures: latency of the answered jobs, deadline hits over every job, jobs refused
    and jobs answered late or stopped at their deadline on an agent, tokens the cloud took, the
    research's utility and PCR, and how far predictions were from what happened, per tier."""
    quality = quality or Quality()
    answered = [(j, out[j.key]) for j in jobs if out.get(j.key, {}).get("tier") in ("edge", "cloud")]
    # the latency of the answers a device got: one past its deadline is expired, as the coordinator does
    lat = [o["latency_s"] * 1000 for j, o in answered if j.deadline_s is None or o["latency_s"] <= j.deadline_s]
    cloud_tokens = sum(o["tokens"] for _, o in answered if o["tier"] == "cloud")
    served = [a.served for a in agents]
    mean_served = statistics.fmean(served) if served else 0
    late = sum(1 for j, o in answered if j.deadline_s is not None and o["latency_s"] > j.deadline_s)
    expired = sum(1 for o in out.values() if o.get("status") == "expired")
    u, cpr, ratio = pcr((utility(out.get(j.key, {}).get("tier"), out.get(j.key, {}).get("latency_s", 0.0),
                                 j.deadline_s, quality), out.get(j.key, {}).get("cost", 0.0)) for j in jobs)
    errors = {tier: [relative_error(o["predicted_s"], o["latency_s"]) for _, o in answered
                     if o["tier"] == tier and "predicted_s" in o] for tier in ("edge", "cloud")}
    return {"latency_mean_ms": statistics.fmean(lat) if lat else float("nan"),
            "latency_p95_ms": percentile(lat, 95),
            "deadline_hit_rate": (len(answered) - late) / len(jobs),
            "rejected": sum(1 for o in out.values() if o.get("status") == "rejected"), "late": late + expired,
            "cloud_tokens": cloud_tokens,
            "cloud_token_share": cloud_tokens / max(1, sum(o["tokens"] for _, o in answered)),
            "cost_per_response": cpr, "utility": u, "pcr": ratio,
            "prediction_error": {t: statistics.median(e) if e else float("nan") for t, e in errors.items()},
            "load_balance": max(served) / mean_served if mean_served else float("nan")}
