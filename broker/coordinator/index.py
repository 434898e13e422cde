"""Agents indexed by model and free capacity, so that a decision looks at a handful of them.

``scheduler.decide`` is the reference: a pure scan that assesses every agent, ~2 ms a job with
1,000 agents. :class:`AgentIndex` holds the same views, kept in step as statuses and jobs change
them (``put``, ``remove``): one pool per model (and one of every agent, for jobs that name
none), each split into the agents with room and those without. Only online, fresh agents are in
a pool: no job may go to any other. :meth:`AgentIndex.decide` walks a pool in the order its
policy ranks agents and stops as soon as no later agent could win:

* ``load-aware``: agents with room by (load, -tokens/s, name); the first eligible one wins.
* ``deadline``: agents by (predicted completion, load, name), one heap per job size
  (answer tokens assumed, prompt tokens bucketed: ``JobSpec.size``) in use, the last
  ``SIZES_KEPT`` kept; the walk ends past the deadline, past
  the 25% slack of the quickest, or once the best so far costs the least any agent there can.
* ``random``, ``weighted``: drawn from the agents with room (weighted: a draw is kept in
  proportion to its capability), drawn again when ineligible for this job; after ``DRAWS``
  tries every agent with room is assessed, as the scan does. Either way the pick is uniform
  (or in proportion to capability) among the eligible agents with room.
* Without an eligible agent with room: the agents without room, by their queue wait.

Heaps are never searched: an entry whose agent changed since (its serial moved on) is skipped
when met, and a side rebuilds its heaps once they hold four times more entries than agents.
What "the same decision" means, per policy, is written and checked in tests/test_index.py.
Candidates are the agents the walk assessed, not the whole fleet.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import random
from collections import OrderedDict
from collections.abc import Iterator

from broker.coordinator.predict import cloud_parts
from broker.coordinator.scheduler import (
    DEADLINE_SLACK,
    J_PER_KWH,
    OFFLOAD_REASONS,
    POLICIES,
    AgentView,
    Candidate,
    CloudTier,
    Decision,
    JobSpec,
    Policy,
    assess,
    cloud_cost,
    predict_tokens,
)

Size = tuple[int, int]  # (answer tokens, prompt tokens bucketed)

SIZES_KEPT = 8  # job sizes with a completion heap of their own; another size builds one (O(agents))
DRAWS = 64  # random and weighted draws before assessing every agent with room
Entry = tuple[float, float, str, int]  # two rank keys, the agent, its serial when pushed


def _load(v: AgentView) -> float:
    return v.outstanding / max(v.slots, 1)


def _weight(v: AgentView) -> float:
    return max(v.decode_tps, 0.01) * v.slots


def _ascending(heap: list[Entry]) -> Iterator[Entry]:
    """A heap's entries in order, without popping them: O(k log k) for the first k."""
    if not heap:
        return
    frontier = [(heap[0], 0)]
    n = len(heap)
    while frontier:
        entry, i = heapq.heappop(frontier)
        yield entry
        for j in (2 * i + 1, 2 * i + 2):
            if j < n:
                heapq.heappush(frontier, (heap[j], j))


class _Side:
    """The agents of one pool with room (or without): drawn at random, or ranked."""

    def __init__(self, roomy: bool, serial: dict[str, int]) -> None:
        self.roomy = roomy
        self.serial = serial  # the index's: an entry counts while it carries its agent's serial
        self.views: dict[str, AgentView] = {}
        self.names: list[str] = []  # for drawing one at random in O(1)
        self.pos: dict[str, int] = {}
        self.wmax = 0.0  # at least the largest weight here (a weighted draw is kept with w / wmax)
        self.ep_floor = math.inf  # at most the least energy x price here (the cheapest an agent can be)
        self.ranked: list[Entry] = []  # with room: (load, -tokens/s); without: (queue wait, 0)
        self.by_size: OrderedDict[Size, list[Entry]] = OrderedDict()  # size -> (completion, load)
        self.pushed = 0

    def _rank(self, v: AgentView) -> Entry:
        if self.roomy:
            return (_load(v), -v.decode_tps, v.agent, self.serial[v.agent])
        return (predict_tokens(v, 0)[0], 0.0, v.agent, self.serial[v.agent])

    def _timed(self, v: AgentView, size: Size) -> Entry:
        return (predict_tokens(v, *size)[1], _load(v), v.agent, self.serial[v.agent])

    def add(self, v: AgentView) -> None:
        self.views[v.agent] = v
        self.pos[v.agent] = len(self.names)
        self.names.append(v.agent)
        self.wmax = max(self.wmax, _weight(v))
        self.ep_floor = min(self.ep_floor, v.energy_j_per_token * v.price_per_kwh)
        heapq.heappush(self.ranked, self._rank(v))
        for size, heap in self.by_size.items():
            heapq.heappush(heap, self._timed(v, size))
        self.pushed += 1 + len(self.by_size)
        if self.pushed > 4 * len(self.views) + 64:
            self._rebuild()

    def discard(self, agent: str) -> None:
        if self.views.pop(agent, None) is None:
            return
        i, last = self.pos.pop(agent), self.names.pop()
        if last != agent:
            self.names[i], self.pos[last] = last, i
        if not self.views:
            self._rebuild()

    def _rebuild(self) -> None:
        views = list(self.views.values())
        self.wmax = max(map(_weight, views), default=0.0)
        self.ep_floor = min((v.energy_j_per_token * v.price_per_kwh for v in views), default=math.inf)
        self.ranked = [self._rank(v) for v in views]
        heapq.heapify(self.ranked)
        for size in self.by_size:
            self.by_size[size] = [self._timed(v, size) for v in views]
            heapq.heapify(self.by_size[size])
        self.pushed = 0

    def _current(self, entry: Entry) -> AgentView | None:
        v = self.views.get(entry[2])
        return v if v is not None and self.serial[entry[2]] == entry[3] else None

    def _walk(self, heap: list[Entry]) -> Iterator[tuple[Entry, AgentView]]:
        while heap and self._current(heap[0]) is None:
            heapq.heappop(heap)
        for entry in _ascending(heap):
            v = self._current(entry)
            if v is not None:
                yield entry, v

    def by_rank(self) -> Iterator[AgentView]:
        return (v for _, v in self._walk(self.ranked))

    def by_completion(self, size: Size) -> Iterator[tuple[float, AgentView]]:
        heap = self.by_size.get(size)
        if heap is None:
            heap = self.by_size[size] = [self._timed(v, size) for v in self.views.values()]
            heapq.heapify(heap)
            if len(self.by_size) > SIZES_KEPT:
                self.by_size.popitem(last=False)
        else:
            self.by_size.move_to_end(size)
        return ((entry[0], v) for entry, v in self._walk(heap))

    def cost_floor(self, tokens: int) -> float:
        """No agent here costs less than this for ``tokens`` (a margin over float rounding)."""
        x = self.ep_floor * tokens / J_PER_KWH
        return x - abs(x) * 1e-9


class AgentIndex:
    """The agents' views by model and room, for :meth:`decide`; the same answers as ``scheduler.decide``."""

    def __init__(self) -> None:
        self._views: dict[str, AgentView] = {}
        self._serial: dict[str, int] = {}
        self._pools: dict[str | None, tuple[_Side, _Side]] = {}  # None: every agent
        self._none = (_Side(True, self._serial), _Side(False, self._serial))  # a model no agent holds
        self.accepting = 0  # agents that take new work (online, not draining)
        self.room = 0  # jobs they can take now: slots + prefetch - outstanding, summed over them

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, agent: str) -> bool:
        return agent in self._views

    def views(self) -> list[AgentView]:
        return list(self._views.values())

    def get(self, agent: str) -> AgentView | None:
        return self._views.get(agent)

    def put(self, v: AgentView) -> None:
        """Add an agent's view, or replace the one held."""
        self.remove(v.agent)
        self._views[v.agent] = v
        self._serial[v.agent] = self._serial.get(v.agent, 0) + 1
        if v.online:
            self.accepting += 1
            self.room += max(0, v.slots + v.prefetch - v.outstanding)
        if not (v.online and v.fresh):
            return  # no job may go there: kept for views(), in no pool
        for model in (None, *v.models):
            pool = self._pools.get(model)
            if pool is None:
                pool = self._pools[model] = (_Side(True, self._serial), _Side(False, self._serial))
            pool[0 if v.has_room else 1].add(v)

    def remove(self, agent: str) -> None:
        old = self._views.pop(agent, None)
        if old is not None and old.online:
            self.accepting -= 1
            self.room -= max(0, old.slots + old.prefetch - old.outstanding)
        if old is None or not (old.online and old.fresh):
            return
        for model in (None, *old.models):
            roomy, full = pool = self._pools[model]
            pool[0 if old.has_room else 1].discard(agent)
            if not roomy.views and not full.views:
                del self._pools[model]

    def decide(self, job: JobSpec, now: float, policy: Policy = "deadline", cloud: CloudTier | None = None,
               rng: random.Random | None = None) -> Decision:
        """Where ``job`` runs, as ``scheduler.decide(job, self.views(), ...)`` would have it."""
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
        roomy, full = self._pools.get(job.model or None, self._none)
        q = _Query(job, now, policy, cloud or CloudTier())
        if policy == "deadline":
            return q.deadline(roomy, full)
        return q.research(roomy, full, rng or random.Random())


class _Query:
    """One decision: the candidates it assessed, and the ways it can end."""

    def __init__(self, job: JobSpec, now: float, policy: Policy, cloud: CloudTier) -> None:
        self.job, self.now, self.policy, self.cloud = job, now, policy, cloud
        self.seen: dict[str, Candidate] = {}
        self.cloud_allowed = cloud.enabled and job.privacy != "edge-only"
        self.cloud_ok = self.cloud_allowed and (cloud.reachable or job.offline_ok)
        self.cloud_parts = cloud_parts(cloud, job.tokens) if self.cloud_allowed else None
        self.cloud_s = self.cloud_parts.completion_s if self.cloud_parts else 0.0

    def look(self, v: AgentView) -> Candidate | None:
        """The agent assessed for this job (once); None when it is not eligible."""
        c = self.seen.get(v.agent)
        if c is None:
            c = self.seen[v.agent] = assess(v, self.job, self.now)
        return c if c.eligible else None

    def agent(self, c: Candidate, reason: str, at_risk: bool = False) -> Decision:
        return Decision("agent" if c.has_room else "wait", self.policy, c.agent, c.completion_s, c.cost, at_risk,
                        reason, tuple(self.seen.values()), c.parts, self.cloud_parts)

    def to_cloud(self, code: str) -> Decision:
        cost = cloud_cost(self.cloud, self.job.prompt_tokens, self.job.tokens)
        return Decision("cloud", self.policy, None, self.cloud_s, cost, False, OFFLOAD_REASONS[code],
                        tuple(self.seen.values()), self.cloud_parts, self.cloud_parts)

    def nowhere(self) -> Decision:
        if self.cloud_allowed:
            deadline = self.job.deadline_at
            late = self.policy == "deadline" and deadline is not None and self.now + self.cloud_s > deadline
            return dataclasses.replace(self.to_cloud("no_eligible_agent"), at_risk=late)
        return Decision("wait", self.policy, reason="no eligible edge agent", candidates=tuple(self.seen.values()))

    def deadline(self, roomy: _Side, full: _Side) -> Decision:
        # An agent with room that meets the deadline; else one without room that does (the scan's pool).
        fastest = []
        for side in (roomy, full):
            best, first = self.cheapest_in_time(side)
            if best is not None:
                return self.agent(best, "cheapest agent that meets the deadline")
            if first is not None:
                fastest.append(first)
        if not fastest:
            return self.nowhere()
        deadline = self.job.deadline_at
        if self.cloud_ok and (deadline is None or self.now + self.cloud_s <= deadline):
            return self.to_cloud("deadline")
        c = min(fastest, key=lambda c: (c.completion_s, c.agent))
        return self.agent(c, "no tier meets the deadline: fastest agent", at_risk=True)

    def cheapest_in_time(self, side: _Side) -> tuple[Candidate | None, Candidate | None]:
        """(the scan's pick among this side's agents that meet the deadline, the quickest eligible one)."""
        size = self.job.size
        floor = side.cost_floor(size[0])
        best: Candidate | None = None
        first: Candidate | None = None
        key: tuple[float, float, float, str] | None = None
        limit = math.inf
        for completion, v in side.by_completion(size):
            if completion > limit:
                break  # slower than the quickest by more than the slack: no longer a near-equal
            c = self.look(v)
            if c is None:
                continue
            first = first or c
            if not c.meets_deadline:
                break  # every later agent completes later still
            if best is None:
                limit = completion * (1 + DEADLINE_SLACK) + 0.05
            k = (round(c.cost, 12), completion, _load(v), v.agent)
            if key is None or k < key:
                best, key = c, k
            if floor >= key[0]:
                break  # none later is cheaper, and each later one is slower
        return best, first

    def research(self, roomy: _Side, full: _Side, rng: random.Random) -> Decision:
        if self.policy == "load-aware":
            for v in roomy.by_rank():
                if (c := self.look(v)) is not None:
                    return self.agent(c, "least loaded agent")
        else:
            weighted = self.policy == "weighted"
            c = self.draw(roomy, rng, weighted)
            if c is not None:
                return self.agent(c, "drawn by capability" if weighted else "random choice")
        for v in full.by_rank():  # nothing eligible has room: the research's policies offload
            if (c := self.look(v)) is not None:
                if self.cloud_ok:
                    return self.to_cloud("edge_full")
                return self.agent(c, "every eligible agent is full: wait for the first free")
        return self.nowhere()

    def draw(self, side: _Side, rng: random.Random, weighted: bool) -> Candidate | None:
        n = len(side.names)
        for _ in range(DRAWS if n else 0):
            v = side.views[side.names[rng.randrange(n)]]
            if weighted and rng.random() * side.wmax >= _weight(v):
                continue
            if (c := self.look(v)) is not None:
                return c
        # Many draws were not eligible for this job (excluded, over budget): assess them all.
        roomy = sorted((c for v in side.views.values() if (c := self.look(v)) is not None), key=lambda c: c.agent)
        if not roomy:
            return None
        if weighted:
            return rng.choices(roomy, weights=[_weight(side.views[c.agent]) for c in roomy])[0]
        return rng.choice(roomy)
