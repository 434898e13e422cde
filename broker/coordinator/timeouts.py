"""What time decides: deadlines passed, heartbeats lapsed, assignments never accepted, jobs placed
on an agent that is gone, and queued jobs that nothing online can take.

The loop asks ten times a second. None of it walks every live job: deadlines come from a heap,
unaccepted assignments from a queue in the order they were made, and only the jobs placed on
agents that are not online are looked at. Whether a queued job can run anywhere is checked once
a second for ``STRAND_CHECKS`` live jobs, in turn, so 100,000 queued jobs are each looked at
every 5 s: a job nothing can take still ends after ``max_wait_no_agent_s`` (120 s by default),
at most one turn later.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

from broker.coordinator.context import Core
from broker.coordinator.edge import Edge
from broker.coordinator.finals import Finals
from broker.coordinator.jobs import Job, JobState
from broker.coordinator.registry import Known
from broker.runtime.logs import kv
from schemas.messages import ErrorInfo

log = logging.getLogger("fogmesh.coordinator")
STRAND_CHECKS = 20_000  # live jobs checked for a way to run, once a second
STRAND_EVERY_S = 1.0


class Timeouts:
    def __init__(self, core: Core, edge: Edge, finals: Finals) -> None:
        self.core = core
        self.edge = edge
        self.finals = finals
        self._turn: Iterator[str] = iter(())  # the live jobs' keys still to check in this turn
        self._stranded_at = float("-inf")  # monotonic time of the last strand check

    def scan(self, now: float, mono: float, judge: bool) -> None:
        """``judge``: the loop keeps up with its inbox, so silence means something (a heartbeat or an
        acceptance still waiting there is not missing: declaring its agent lost would requeue work
        the agent is doing, and with 1,000 agents that fed on itself)."""
        c = self.core
        for job in c.jobs.past_deadline(now):
            self.finals.finish(job, "expired", error=ErrorInfo(
                code="deadline", message="the job's deadline passed before it finished"))
        if not judge:
            return
        for agent in c.registry.sweep(mono):
            log.warning(kv("agent_lapsed", agent=agent, reason="no heartbeat"))
            self.edge.agent_gone(agent, "agent heartbeat lapsed")
        timeout = c.settings.accept_timeout_s
        for job in c.jobs.unaccepted_since(mono - timeout):
            self.edge.requeue(job, "agent did not accept in time")
        for agent in c.jobs.agents():
            if not c.registry.is_online(agent):
                for job in c.jobs.on(agent):
                    if mono - job.assigned_mono > timeout:
                        self.edge.requeue(job, "agent is not online")
        # once a second, or 4 times within a shorter max_wait_no_agent_s
        if mono - self._stranded_at >= min(STRAND_EVERY_S, c.settings.max_wait_no_agent_s / 4):
            self._stranded_at = mono
            self.strand_some(now)

    def strand_some(self, now: float) -> None:
        """Check the next ``STRAND_CHECKS`` live jobs that are queued for an agent or the cloud that
        could take them."""
        c = self.core
        if c.settings.max_wait_no_agent_s <= 0 or not c.jobs.waiting:
            return
        accepting = [k for k in c.registry.agents.values() if k.accepting]
        on_offer = frozenset().union(*(k.models for k in accepting))  # once a scan, not once a job
        checked = 0
        for key in itertools.islice(self._turn, STRAND_CHECKS):
            checked += 1
            job = c.jobs.get(key)
            if job is not None and job.state is JobState.QUEUED:
                self.strand(job, now, accepting, on_offer)
        if checked < STRAND_CHECKS:
            self._turn = iter(c.jobs.keys())  # every live job had its turn: the next scan starts over

    def strand(self, job: Job, now: float, accepting: list[Known], on_offer: frozenset[str]) -> None:
        """A queued job nothing can take: no agent online holds its model, and the cloud cannot
        have it. After ``max_wait_no_agent_s`` of that it ends, instead of waiting for ever."""
        c = self.core
        limit = c.settings.max_wait_no_agent_s
        model = job.req.model or c.settings.default_model or None
        if c.cloud.enabled and job.req.privacy != "edge-only":
            servable = True
        elif job.exclude:  # rare: agents it failed on do not count
            servable = any((model is None or model in k.models) and k.status.agent not in job.exclude
                           for k in accepting)
        else:
            servable = bool(accepting) if model is None else model in on_offer
        if servable:
            job.stranded_at = None
            return
        job.stranded_at = job.stranded_at or now
        if now - job.stranded_at >= limit:
            what = f"with model {model!r} " if model else ""
            self.finals.finish(job, "error", error=ErrorInfo(
                code="no_agent", message=f"no agent {what}was online to take it for {limit:.0f} s "
                "(max_wait_no_agent_s); check `fogmesh status`"))
