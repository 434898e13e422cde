"""Where a job should run: a pure function of (job, agent views, clock, policy). No I/O.

Policies:

* ``random`` - any eligible agent with room (the research's Random).
* ``weighted`` - eligible agents with room, drawn in proportion to decode tokens/s x slots (Weighted).
* ``load-aware`` - the eligible agent with the least load per slot (the research's Load-Aware).
* ``deadline`` - fogmesh's: predict each agent's completion time (``predict``); among agents
  that meet the job's deadline, the cheapest; if none can, the cloud when the job's privacy
  allows it and its prediction meets the deadline; else the fastest agent, flagged at risk (the
  coordinator refuses such a job as ``deadline_infeasible``).

Eligible: online, fresh, holding the model (with a chat template, for chat messages), in budget.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from broker.coordinator.predict import EDGE_MARGIN, Ahead, Parts, agent_parts, cloud_parts, prompt_bucket

POLICIES = ("random", "weighted", "load-aware", "deadline")
Policy = Literal["random", "weighted", "load-aware", "deadline"]
J_PER_KWH = 3_600_000.0
DEADLINE_SLACK = 0.25  # `deadline` trades at most 25% (+50 ms) of predicted completion for a lower cost


@dataclass(frozen=True)
class AgentView:
    """What the coordinator knows of one agent at decision time."""

    agent: str
    online: bool = True
    fresh: bool = True
    models: frozenset[str] = frozenset()
    chat_models: frozenset[str] = frozenset()  # the models it can render chat messages for
    default_model: str = ""  # what it runs for a job that names no model
    slots: int = 1
    outstanding: int = 0  # jobs the coordinator has assigned and not seen finish
    outstanding_tokens: int = 0  # their expected answer tokens, summed (a full agent: less those decoded)
    first_ahead_s: float = 0.0  # a full agent: the TTFT and prefill still ahead of its jobs, summed
    ahead_s: Ahead = ()  # a busy agent: each job's (time still to run, time left before its deadline)
    decode_tps: float = 0.0
    ttft_ms: float = 0.0
    prefill_tps: float = 0.0  # prompt tokens/s past the calibration prompt's (0: not advertised)
    prefill_tps_at: tuple[tuple[int, float], ...] = ()  # ... by prompt length: (tokens, tokens/s), the shortest first
    decode_tps_at: tuple[float, ...] = ()  # one job's decode tokens/s with i + 1 slots busy (0: not measured)
    prefill_ahead_s: float = 0.0  # slots in one batch: its jobs' prompt evaluation still ahead
    batched: bool = False  # its slots share one batch: a long prompt's pieces slow every job beside it
    budget_tokens: int = 0  # 0: no budget
    budget_used: int = 0
    energy_j_per_token: float = 0.0
    price_per_kwh: float = 0.0
    prefetch: int = 1  # jobs that may wait on the agent beyond its slots

    @property
    def has_room(self) -> bool:
        return self.outstanding < self.slots + self.prefetch


@dataclass(frozen=True)
class CloudTier:
    """The cloud path as the scheduler sees it."""

    enabled: bool = False  # a bridge is online
    reachable: bool = True  # the bridge can reach the queue now (else only offline_ok jobs may go)
    latency_s: float = 1.0  # WAN + the queue service before a worker starts (learned when jobs finish)
    decode_tps: float = 50.0
    ttft_s: float = 0.0  # a worker's time to first token (learned; 0: counted in latency_s)
    workers: int = 0  # jobs the cloud runs at once (the bridge advertises it; 0: as many as come)
    in_flight: int = 0  # jobs sent to the cloud and not answered yet
    service_s: float = 0.0  # a worker's time per job (learned; 0: not known yet)
    price_in_per_1k: float = 0.0
    price_out_per_1k: float = 0.0
    models: frozenset[str] = frozenset()  # the model names it answers to (bridge.cloud_models)


@dataclass(frozen=True)
class JobSpec:
    key: str
    max_tokens: int
    prompt_tokens: int = 0
    expect_tokens: int = 0  # the answer length to plan for (a learned quantile); 0: max_tokens
    model: str | None = None
    chat: bool = False  # the job is chat messages: only agents whose model has a chat template
    priority: int = 5
    deadline_at: float | None = None  # same clock as ``now``
    privacy: str = "cloud-ok"
    offline_ok: bool = False  # may wait in the bridge's outbox while the cloud is unreachable
    exclude: frozenset[str] = frozenset()  # agents that already failed this job

    @property
    def tokens(self) -> int:
        """The answer tokens predictions assume: the expected length, at most ``max_tokens``."""
        return min(self.expect_tokens, self.max_tokens) if self.expect_tokens > 0 else self.max_tokens

    @property
    def size(self) -> tuple[int, int]:
        """What an agent's prediction depends on, of the job: (answer tokens, prompt tokens bucketed)."""
        return self.tokens, prompt_bucket(self.prompt_tokens)


@dataclass(frozen=True)
class Candidate:
    agent: str
    eligible: bool
    reason: str  # why not eligible, or "ok"
    wait_s: float = 0.0
    completion_s: float = 0.0
    cost: float = 0.0
    meets_deadline: bool = True
    has_room: bool = False
    parts: Parts | None = None


# Why a job goes to the cloud: a short code (the offloads metric's label) and the words the decision
# (and `fogmesh explain`) gives.
OFFLOAD_REASONS = {
    "no_eligible_agent": "no eligible edge agent",
    "deadline": "no edge agent meets the deadline; the cloud does",
    "edge_full": "every eligible agent is full",
}


@dataclass(frozen=True)
class Decision:
    """``target`` is ``agent`` (run there now), ``cloud``, or ``wait`` (stay queued: see ``agent``)."""

    target: Literal["agent", "cloud", "wait"]
    policy: str
    agent: str | None = None
    predicted_s: float = 0.0
    cost: float = 0.0
    at_risk: bool = False
    reason: str = ""
    candidates: tuple[Candidate, ...] = field(default=())
    parts: Parts | None = None  # the chosen tier's prediction in parts
    cloud: Parts | None = None  # the cloud's prediction, when the job may go there


class Priced(Protocol):
    """What edge cost needs of an agent: an AgentView, or the agent's own AgentStatus."""

    @property
    def energy_j_per_token(self) -> float: ...
    @property
    def price_per_kwh(self) -> float: ...


def edge_cost(agent: Priced, tokens: int) -> float:
    """Energy x price: joules per token x tokens / 3.6e6 J per kWh x price per kWh."""
    return agent.energy_j_per_token * tokens / J_PER_KWH * agent.price_per_kwh


def cloud_cost(cloud: CloudTier, prompt_tokens: int, completion_tokens: int) -> float:
    return prompt_tokens / 1000 * cloud.price_in_per_1k + completion_tokens / 1000 * cloud.price_out_per_1k


def held_behind(view: AgentView, d: Decision, job: JobSpec) -> AgentView:
    """``view`` with ``job``, decided to wait for it, in its queue: as the rest of a pass sees it."""
    first, runs = (d.parts.first_s, d.parts.first_s + d.parts.decode_s) if d.parts else (0.0, 0.0)
    return dataclasses.replace(view, outstanding=view.outstanding + 1, outstanding_tokens=view.outstanding_tokens
                               + job.tokens, first_ahead_s=view.first_ahead_s + first,
                               ahead_s=(*view.ahead_s, (runs, float("inf"))) if view.ahead_s else ())


def predict(view: AgentView, job: JobSpec) -> tuple[float, float]:
    """(queue wait, completion) in seconds from now if ``job`` went to ``view``."""
    return predict_tokens(view, *job.size)


def predict_tokens(view: AgentView, tokens: int, prompt_tokens: int = 0) -> tuple[float, float]:
    """:func:`predict` for a job of this size: the index ranks agents by it, bit for bit as the scan does."""
    p = agent_parts(view, tokens, prompt_tokens)
    return p.wait_s, p.completion_s


def assess(view: AgentView, job: JobSpec, now: float) -> Candidate:
    reason = "ok"
    if not view.online:
        reason = "offline"
    elif not view.fresh:
        reason = "stale"
    elif job.model and job.model not in view.models:
        reason = "model_missing"
    elif job.chat and (job.model or view.default_model) not in view.chat_models:
        reason = "no_chat_template"
    elif view.agent in job.exclude:
        reason = "failed_before"
    elif view.budget_tokens and view.budget_used + job.max_tokens > view.budget_tokens:
        reason = "over_budget"
    parts = agent_parts(view, *job.size)
    completion = parts.completion_s
    meets = job.deadline_at is None or now + completion * (1 + EDGE_MARGIN) <= job.deadline_at
    return Candidate(
        agent=view.agent, eligible=reason == "ok", reason=reason, wait_s=parts.wait_s,
        completion_s=completion, cost=edge_cost(view, job.tokens),
        meets_deadline=meets, has_room=view.has_room, parts=parts,
    )


def decide(
    job: JobSpec,
    agents: Sequence[AgentView],
    now: float,
    policy: Policy = "deadline",
    cloud: CloudTier | None = None,
    rng: random.Random | None = None,
) -> Decision:
    """Choose where ``job`` runs. Pure: the same inputs (and rng state) give the same decision."""
    cloud = cloud or CloudTier()
    cands = tuple(assess(v, job, now) for v in agents)
    eligible = [c for c in cands if c.eligible]
    by_name = {v.agent: v for v in agents}
    cloud_allowed = cloud.enabled and job.privacy != "edge-only"
    cloud_ok = cloud_allowed and (cloud.reachable or job.offline_ok)
    c_parts = cloud_parts(cloud, job.tokens) if cloud_allowed else None
    cloud_s = c_parts.completion_s if c_parts else 0.0
    c_cost = cloud_cost(cloud, job.prompt_tokens, job.tokens)

    def to_agent(c: Candidate, reason: str, at_risk: bool = False) -> Decision:
        # The cost shown is what the job's own tokens cost on that agent.
        target: Literal["agent", "wait"] = "agent" if c.has_room else "wait"
        return Decision(target, policy, c.agent, c.completion_s, c.cost, at_risk, reason, cands, c.parts, c_parts)

    def to_cloud(code: str) -> Decision:
        return Decision("cloud", policy, None, cloud_s, c_cost, False, OFFLOAD_REASONS[code], cands, c_parts,
                        c_parts)

    if not eligible:
        # No edge agent can take it at all: the cloud, even while unreachable (the bridge
        # holds offline_ok jobs and fails the others after its send timeout).
        if cloud_allowed:
            late = policy == "deadline" and job.deadline_at is not None and now + cloud_s > job.deadline_at
            return dataclasses.replace(to_cloud("no_eligible_agent"), at_risk=late)
        # Over budget, offline or missing the model: the job waits until an agent can take it.
        return Decision("wait", policy, reason="no eligible edge agent", candidates=cands)

    if policy == "deadline":
        meeting = [c for c in eligible if c.meets_deadline]
        # An agent that can start now is preferred; waiting for a busy one only when no free
        # agent meets the deadline (its prediction already counts the queue wait).
        pool = [c for c in meeting if c.has_room] or meeting
        if pool:
            # The cheapest of the agents that meet the deadline and are nearly as quick as
            # the quickest: cost decides between near-equals, never at the price of queueing.
            quickest = min(c.completion_s for c in pool)
            near = [c for c in pool if c.completion_s <= quickest * (1 + DEADLINE_SLACK) + 0.05]
            # Between equals, the least loaded: otherwise identical idle agents all lose to the
            # first by name, which took every job (max/mean 81 with 1,000 agents).
            best = min(near, key=lambda c: (round(c.cost, 12), c.completion_s,
                                            by_name[c.agent].outstanding / max(by_name[c.agent].slots, 1), c.agent))
            return to_agent(best, "cheapest agent that meets the deadline")
        if cloud_ok and (job.deadline_at is None or now + cloud_s <= job.deadline_at):
            return to_cloud("deadline")
        fastest = min(eligible, key=lambda c: (c.completion_s, c.agent))
        return to_agent(fastest, "no tier meets the deadline: fastest agent", at_risk=True)

    roomy = [c for c in eligible if c.has_room]
    if not roomy:
        # The research's policies offload demand the edge cannot take now.
        if cloud_ok:
            return to_cloud("edge_full")
        best = min(eligible, key=lambda c: (c.wait_s, c.agent))
        return to_agent(best, "every eligible agent is full: wait for the first free")
    rng = rng or random.Random()
    if policy == "random":
        return to_agent(rng.choice(sorted(roomy, key=lambda c: c.agent)), "random choice")
    if policy == "weighted":
        ordered = sorted(roomy, key=lambda c: c.agent)
        weights = [max(by_name[c.agent].decode_tps, 0.01) * by_name[c.agent].slots for c in ordered]
        return to_agent(rng.choices(ordered, weights=weights)[0], "drawn by capability")
    if policy == "load-aware":
        def load(c: Candidate) -> tuple[float, float, str]:
            v = by_name[c.agent]
            return (v.outstanding / max(v.slots, 1), -v.decode_tps, c.agent)
        return to_agent(min(roomy, key=load), "least loaded agent")
    raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")


def urgency(priority: int, waited_s: float, aging_s: float) -> float:
    """Effective priority: the job's priority plus one level per ``aging_s`` waited.

    A job of priority 0 that has waited 9 x ``aging_s`` outranks a fresh priority-9
    job, so no priority starves however busy the site is.
    """
    return priority + max(waited_s, 0.0) / aging_s


LOOK_PAST = 8  # waiting jobs a dispatch pass decides past when the most urgent must wait
SKIM = 256  # edge-only jobs a pass may set aside undecided once their model's agents are full


class DispatchPass:
    """One pass over the wait queue: which jobs were set aside, and when to stop looking.

    The pass stops after ``LOOK_PAST`` jobs that had to wait, which bounds the
    decisions it makes. Edge-only jobs are the exception: once one for a model had
    to wait, the agents holding that model have no room for the next one either,
    so later ones are set aside without a decision and without using up the look
    past. Otherwise a backlog of edge-only jobs would block cloud-ok jobs queued
    behind it while the cloud sits idle (head-of-line blocking).
    """

    def __init__(self, look_past: int = LOOK_PAST, skim: int = SKIM) -> None:
        self.look_past, self.skim = look_past, skim
        self.held: list[str] = []
        self.skimmed: list[str] = []
        self._edge_full: set[tuple[str | None, bool]] = set()  # (model, chat) whose agents are full

    @property
    def done(self) -> bool:
        return len(self.held) >= self.look_past or len(self.skimmed) >= self.skim

    def set_aside(self, key: str, job: JobSpec) -> bool:
        """True (and ``key`` set aside) if ``job`` must wait without a decision."""
        if job.privacy == "edge-only" and (job.model, job.chat) in self._edge_full:
            self.skimmed.append(key)
            return True
        return False

    def hold(self, key: str, job: JobSpec) -> None:
        """``job`` was decided and must wait."""
        if job.privacy == "edge-only":
            self._edge_full.add((job.model, job.chat))
            self.skimmed.append(key)
        else:
            self.held.append(key)

    def waiting(self) -> list[str]:
        """The keys to put back in the queue."""
        return self.held + self.skimmed


class WaitQueue:
    """Waiting jobs by urgency, without sorting them all on every pass.

    One heap per priority level, oldest first. Within a level the oldest job is the
    most urgent (it has aged the most), so the most urgent job overall is the most
    urgent of at most ten heads: O(levels + log n) a pick however long the queue.
    Removal is lazy: a job that left the queue (assigned, cancelled, expired) is
    skipped when it reaches a head.
    """

    def __init__(self, aging_s: float) -> None:
        self.aging_s = aging_s
        self._levels: dict[int, list[tuple[float, str]]] = {}
        self._live: dict[str, tuple[int, float]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: str) -> bool:
        return key in self._live

    def push(self, key: str, priority: int, created_at: float) -> None:
        self._live[key] = (priority, created_at)
        heapq.heappush(self._levels.setdefault(priority, []), (created_at, key))

    def discard(self, key: str) -> None:
        self._live.pop(key, None)

    def _head(self, level: int) -> tuple[float, str] | None:
        heap = self._levels[level]
        while heap and self._live.get(heap[0][1]) != (level, heap[0][0]):
            heapq.heappop(heap)
        return heap[0] if heap else None

    def pop(self, now: float) -> str | None:
        """Remove and return the most urgent job; equal urgency goes to the oldest."""
        best: tuple[float, float, str] | None = None
        for level in list(self._levels):
            head = self._head(level)
            if head is None:
                continue
            rank = (-urgency(level, now - head[0], self.aging_s), head[0], head[1])
            if best is None or rank < best:
                best = rank
        if best is None:
            return None
        key = best[2]
        del self._live[key]
        return key


def order(waiting: Sequence[JobSpec], created_at: dict[str, float], now: float, aging_s: float) -> list[JobSpec]:
    """Waiting jobs, most urgent first, as the coordinator's :class:`WaitQueue` gives them out."""
    q = WaitQueue(aging_s)
    by_key = {j.key: j for j in waiting}
    for j in waiting:
        q.push(j.key, j.priority, created_at[j.key])
    out = []
    while (key := q.pop(now)) is not None:
        out.append(by_key[key])
    return out
