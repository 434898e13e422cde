"""Dispatch: place waiting jobs, most urgent first, on the agent (or the cloud) the scheduler picks.

Under the ``deadline`` policy a job that no tier is predicted to finish before its deadline is
refused (``rejected``, ``deadline_infeasible``) rather than run late: when it is first decided,
or, if no decision reached it in the pass after it was accepted, by a check of its own then.
A job decided to wait for a busy agent holds its place in that agent's queue for the rest of
the pass (``reserve``), so that the jobs decided after it are predicted behind it, as they will
run, not each as if it were next.
"""

from __future__ import annotations

import logging
import random
import time

from broker.coordinator.cloud import Cloud
from broker.coordinator.context import Core
from broker.coordinator.explain import explained
from broker.coordinator.feasible import refusal
from broker.coordinator.finals import Finals
from broker.coordinator.fleet import Fleet
from broker.coordinator.index import AgentIndex
from broker.coordinator.jobs import Job, JobState
from broker.coordinator.predict import estimate_prompt_tokens
from broker.coordinator.scheduler import AgentView, Decision, DispatchPass, JobSpec, Policy, held_behind
from broker.runtime.logs import kv
from schemas import encode
from schemas.messages import Assignment, request_of

log = logging.getLogger("fogmesh.coordinator")
# A dispatch pass yields to the inbox after this long: a pass over thousands of queued jobs would
# otherwise leave heartbeats unread for seconds (each decision costs tens of microseconds).
DISPATCH_BUDGET_S = 0.05


class Dispatcher:
    def __init__(self, core: Core, cloud: Cloud, finals: Finals) -> None:
        self.core = core
        self.cloud = cloud
        self.finals = finals
        self.rng = random.Random()
        self.pending = False  # a pass was cut short by its time budget: go on at once
        self.decided: set[str] = set()  # the jobs the last pass decided
        self.fleet = Fleet(core)

    def views(self) -> list[AgentView]:
        """Every known agent as the scheduler sees it, with the work this coordinator placed on it."""
        return self.fleet.views()

    def run(self, now: float, mono: float) -> None:
        """One pass: place waiting jobs while some agent has room (or the cloud is there)."""
        c = self.core
        self.pending = False
        cloud_usable = c.cloud.enabled
        index = self.fleet.refresh(budgets=True)
        admitted, c.admitted = c.admitted, []
        reserved: set[str] = set()
        self.decided.clear()
        try:
            self.place(index, now, mono, cloud_usable, reserved)
        finally:
            self.screen(index, [k for k in admitted if k not in self.decided], now, reserved)
            c.jobs.changed |= reserved  # their views are rebuilt from the truth in the next refresh

    def place(self, index: AgentIndex, now: float, mono: float, cloud_usable: bool, reserved: set[str]) -> None:
        c = self.core
        if not c.jobs.waiting or not (cloud_usable or index.accepting):
            return
        this_pass = DispatchPass()  # jobs that must wait this round (their agents are full, say)
        started, decided = time.perf_counter(), False
        while (index.room > 0 or cloud_usable) and not this_pass.done:
            if decided and time.perf_counter() - started > DISPATCH_BUDGET_S:
                self.pending = True  # the rest in the next step, after the inbox had its turn
                break
            decided = True
            key = c.jobs.waiting.pop(now)
            if key is None:
                break
            job = c.jobs[key]
            spec = self.spec(job)
            if this_pass.set_aside(key, spec):
                continue
            decision = self.decide(index, spec, now, self.policy)
            self.decided.add(key)
            if decision.at_risk and self.policy == "deadline" and job.deadline_at is not None:
                self.refuse(job, decision, now)
            elif decision.target == "cloud":
                self.cloud.offload(job, decision)
            elif decision.target == "agent" and decision.agent is not None:
                self.assign(job, decision, mono)
                self.fleet.refresh()  # only the chosen agent's load changed: its view alone is rebuilt
            else:
                this_pass.hold(key, spec)
                self.reserve(index, decision, spec, reserved)
        for key in this_pass.waiting():
            job = c.jobs[key]
            c.jobs.waiting.push(job.key, job.req.priority, job.created_at)

    def decide(self, index: AgentIndex, spec: JobSpec, now: float, policy: Policy) -> Decision:
        """The scheduler's decision, timed for the mesh status (``decision_p99_ms``)."""
        cpu, wall = time.thread_time(), time.perf_counter()
        decision = index.decide(spec, now, policy, cloud=self.cloud.tier(), rng=self.rng)
        self.core.stats.decided((time.thread_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000)
        return decision

    @staticmethod
    def reserve(index: AgentIndex, decision: Decision, spec: JobSpec, reserved: set[str]) -> None:
        """The job waits for ``decision.agent``: later decisions of this pass see it queued there."""
        v = index.get(decision.agent or "")
        if decision.target == "wait" and v is not None:
            index.put(held_behind(v, decision, spec))
            reserved.add(v.agent)

    def screen(self, index: AgentIndex, keys: list[str], now: float, reserved: set[str]) -> None:
        """Refuse the newly accepted jobs with deadlines no tier can meet that still wait undecided
        (every agent full and no cloud, or a long queue ahead of them)."""
        if self.policy != "deadline":
            return
        c = self.core
        for key in keys:
            job = c.jobs.get(key)
            if job is None or job.state is not JobState.QUEUED or key not in c.jobs.waiting:
                continue
            spec = self.spec(job)
            decision = self.decide(index, spec, now, "deadline")
            if decision.at_risk:
                self.refuse(job, decision, now)
            else:
                self.reserve(index, decision, spec, reserved)

    def refuse(self, job: Job, decision: Decision, now: float) -> None:
        c = self.core
        c.jobs.waiting.discard(job.key)
        job.decision = explained(decision, job.created_at, c.clock())
        c.count("infeasible")
        error = refusal(job, decision, now)
        log.info(kv("job_infeasible", job=job.key, predicted_ms=decision.predicted_s * 1000,
                    left_ms=((job.deadline_at or now) - now) * 1000))
        self.finals.finish(job, "rejected", error=error)

    @property
    def policy(self) -> Policy:
        return self.core.settings.policy  # type: ignore[return-value]  # checked when settings load

    def spec(self, job: Job) -> JobSpec:
        c = self.core
        if job.agent is None:  # not placed: its load on an agent will count the tokens planned now
            job.expect_tokens = c.lengths.expected(c.length_key(job.req.model), job.device, job.req.max_tokens)
        return JobSpec(key=job.key, max_tokens=job.req.max_tokens,
                       prompt_tokens=estimate_prompt_tokens(job.req.texts()), expect_tokens=job.expect_tokens,
                       chat=job.req.is_chat,
                       model=job.req.model or self.core.settings.default_model or None, priority=job.req.priority,
                       deadline_at=job.deadline_at, privacy=job.req.privacy, offline_ok=job.req.offline_ok,
                       exclude=job.exclude)

    def assign(self, job: Job, decision: Decision, mono: float) -> None:
        c = self.core
        agent = decision.agent
        assert agent is not None
        job.attempt += 1
        c.jobs.assign(job, agent, mono)
        job.agent_epoch = c.registry.agents[agent].status.epoch
        job.decision = explained(decision, job.created_at, c.clock())
        c.count("assigned")
        c.ledger.update(job.key, "assigned", job.decision, agent=agent, attempt=job.attempt, tier="edge")
        spec = Assignment(key=job.key, device=job.device, job=job.job, attempt=job.attempt, stream=job.req.stream,
                          result_topic=c.topics.results(job.device, job.job), **request_of(job.req),
                          response_topic=job.response_topic, correlation=job.correlation,
                          deadline_at=job.deadline_at, assigned_at=c.clock())
        c.pending.publish(c.topics.assign(agent), encode(spec))
        if log.isEnabledFor(logging.INFO):
            log.info(kv("job_assigned", job=job.key, agent=agent, attempt=job.attempt,
                        predicted_ms=decision.predicted_s * 1000, reason=decision.reason))
