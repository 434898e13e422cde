"""The edge tier as the coordinator follows it: agents' retained statuses and their events about
the jobs it gave them; a job whose agent refused, failed or went away goes back to the queue, or
ends after ``max_attempts``."""

from __future__ import annotations

import logging
import time

from broker.coordinator.context import Core
from broker.coordinator.finals import Finals
from broker.coordinator.jobs import Job, JobState
from broker.coordinator.scheduler import edge_cost
from broker.runtime.logs import kv
from broker.runtime.mqtt import Message
from schemas.messages import AgentEvent, ErrorInfo, ServedBy, Usage
from schemas.status import AgentStatus

log = logging.getLogger("fogmesh.coordinator")
# Failures that another agent would repeat: the request itself is at fault.
NOT_RETRYABLE = {"cancelled", "output_truncated", "bad_messages", "schema_unsupported"}


class Edge:
    def __init__(self, core: Core, finals: Finals) -> None:
        self.core = core
        self.finals = finals

    def on_status(self, msg: Message) -> None:
        c = self.core
        if not msg.payload:  # a cleared retained status: `fogmesh forget` retired the agent
            self.forgotten(c.topics.parse(msg.topic)[1])
            return
        status = msg.decoded(AgentStatus, log, "status_invalid", topic=msg.topic)
        if status is None:
            return
        if status.agent != c.topics.parse(msg.topic)[1]:
            # The ACL lets an agent write its own status topic only: a status speaks for that agent
            # alone, or one agent could declare another offline and take its jobs away.
            log.warning(kv("status_invalid", topic=msg.topic, code="wrong_agent",
                           detail=f"the status names agent {status.agent!r}, not the one of its topic"))
            return
        # Liveness counts from when the status arrived, not from when this loop got to it:
        # a coordinator behind on its inbox must not declare live agents dead.
        arrived = time.monotonic() - max(0.0, time.time() - msg.received_at)
        change = c.registry.update(status, arrived)
        if change == "ignored":
            return
        if change in ("new", "restarted", "draining", "offline"):
            log.info(kv("agent_" + change, agent=status.agent, epoch=status.epoch, state=status.state,
                        host=status.host, pid=status.pid, tps=status.decode_tps))
        if change in ("offline", "restarted"):
            self.agent_gone(status.agent, f"agent {change}")
            return
        # An agent that no longer lists a job we gave it a while ago has lost it.
        held = set(status.jobs)
        grace = c.settings.accept_timeout_s
        now = time.monotonic()
        for job in c.jobs.on(status.agent):
            if job.state.accepted and job.key not in held and now - job.assigned_mono > grace:
                self.lost(job, "agent no longer holds the job")

    def forgotten(self, agent: str) -> None:
        """Drop a retired agent, so that neither the scheduler nor the site's views count it any longer.
        One forgotten while it still held jobs (``forget --force``) has lost them."""
        known = self.core.registry.forget(agent)
        if known is None:
            return
        log.info(kv("agent_forgotten", agent=agent, was="online" if known.online else "offline"))
        if known.online:
            self.agent_gone(agent, "agent forgotten")

    def on_event(self, msg: Message) -> None:
        c = self.core
        ev = msg.decoded(AgentEvent, log, "event_invalid", topic=msg.topic)
        if ev is None:
            return
        job = c.jobs.get(ev.key)
        if job is None or job.agent != ev.agent or job.attempt != ev.attempt:
            log.debug(kv("event_stale", job=ev.key, kind=ev.kind, agent=ev.agent, attempt=ev.attempt))
            return
        if ev.kind == "accepted":
            job.state = JobState.ACCEPTED
            c.ledger.note(job.key, "accepted", {"agent": ev.agent, "attempt": ev.attempt})
        elif ev.kind == "started":
            job.state = JobState.RUNNING
            job.started_at = c.clock()
            c.m.queue_wait.observe(job.started_at - job.created_at)
            known = c.registry.agents.get(ev.agent)
            if known is not None and c.jobs.load_of(ev.agent)[0] >= known.status.slots_total:
                c.jobs.changed.add(ev.agent)  # a full agent's wait now counts this job's tokens as they come
            c.ledger.update(job.key, "running", {"agent": ev.agent, "attempt": ev.attempt})
        elif ev.kind == "done":
            known = c.registry.agents.get(ev.agent)
            if known and ev.usage:
                known.window.add(ev.usage.completion_tokens)
                c.registry.touch(ev.agent)  # its budget use changed
            self.finals.finish(job, "done", text=ev.text, usage=ev.usage, agent_timings=ev.timings,
                               served_by=ServedBy(tier="edge", node=ev.agent), cost=self.cost(ev.agent, ev.usage),
                               finish_reason=ev.finish_reason)
        elif ev.kind == "refused":
            if ev.error and ev.error.code == "draining":
                job.exclude |= {ev.agent}
            self.requeue(job, f"agent refused: {ev.error.message if ev.error else ''}")
        elif ev.kind == "failed":
            self.failed(job, ev.error or ErrorInfo(code="agent_error", message="agent failed"))

    def cost(self, agent: str, usage: Usage | None) -> dict[str, float] | None:
        """What the answer cost at the edge: the agent's energy per token x its price per kWh."""
        known = self.core.registry.agents.get(agent)
        if usage is None:
            return None
        if known is None:
            return {"edge": 0.0}
        st = known.status
        tokens = usage.prompt_tokens + usage.completion_tokens
        return {"edge": round(edge_cost(st, tokens), 9),
                "energy_j": round(st.energy_j_per_token * tokens, 4)}

    def failed(self, job: Job, error: ErrorInfo) -> None:
        c = self.core
        job.failures += 1
        c.ledger.note(job.key, "failed", {"agent": job.agent, "code": error.code, "message": error.message})
        if job.agent:
            job.exclude |= {job.agent}
        others = [k for k in c.registry.agents.values()
                  if k.online and k.status.agent not in job.exclude
                  and (not job.req.model or job.req.model in k.models)]
        if error.code in NOT_RETRYABLE or job.failures >= c.settings.max_attempts or not others:
            why = ("not retryable" if error.code in NOT_RETRYABLE else
                   f"failed {job.failures} times" if others else "no other agent can take it")
            self.finals.give_up(job, ErrorInfo(code=error.code, message=f"{error.message} ({why})"))
            return
        self.requeue(job, f"attempt failed: {error.code}")

    def lost(self, job: Job, why: str) -> None:
        """The agent running ``job`` went away (died, restarted, lost it). That counts as an attempt:
        a job that makes every agent it reaches fail must end, not circle the site for ever."""
        c = self.core
        job.failures += 1
        c.ledger.note(job.key, "failed", {"agent": job.agent, "code": "agent_lost", "message": why})
        if job.failures >= c.settings.max_attempts:
            self.finals.give_up(job, ErrorInfo(code="agent_lost", message=f"{why}; the job's agent was lost "
                                               f"{job.failures} times, so it is not tried again"))
        else:
            self.requeue(job, why)

    def agent_gone(self, agent: str, why: str) -> None:
        """Every job placed on an agent that is gone counts an attempt (an assignment that kills its
        agent before it could even be accepted included)."""
        for job in self.core.jobs.on(agent):
            self.lost(job, why)

    def requeue(self, job: Job, why: str) -> None:
        c = self.core
        if job.agent:
            self.finals.send_cancel(job)
        log.info(kv("job_requeued", job=job.key, agent=job.agent, attempt=job.attempt, reason=why))
        c.jobs.requeue(job)
        c.count("reassigned")
        c.ledger.update(job.key, "queued", {"reason": why}, agent=None)
