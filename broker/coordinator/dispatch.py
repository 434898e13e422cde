"""Dispatch: place waiting jobs, most urgent first, on the agent (or the cloud) the scheduler picks."""

from __future__ import annotations

import dataclasses
import logging
import random
import time

from broker.coordinator.cloud import Cloud
from broker.coordinator.context import Core
from broker.coordinator.explain import explained
from broker.coordinator.jobs import Job, JobState
from broker.coordinator.scheduler import AgentView, Decision, DispatchPass, JobSpec, Policy, decide
from broker.runtime.logs import kv
from schemas import encode
from schemas.messages import Assignment, request_of

log = logging.getLogger("fogmesh.coordinator")
# A dispatch pass yields to the inbox after this long: deciding over 1,000 agents costs ~2 ms a
# job, and a pass over thousands of queued jobs would leave heartbeats unread for seconds.
DISPATCH_BUDGET_S = 0.05


class Dispatcher:
    def __init__(self, core: Core, cloud: Cloud) -> None:
        self.core = core
        self.cloud = cloud
        self.rng = random.Random()
        self.pending = False  # a pass was cut short by its time budget: go on at once

    def views(self) -> list[AgentView]:
        """Every known agent as the scheduler sees it, with the work this coordinator placed on it."""
        c = self.core
        load = c.jobs.load()
        views = []
        for k in c.registry.agents.values():
            st = k.status
            n, toks = load.get(st.agent, (0, 0))
            views.append(AgentView(
                agent=st.agent, online=k.accepting, fresh=k.online, models=k.models, slots=st.slots_total,
                chat_models=k.chat_models, default_model=st.models[0].name if st.models else "",
                outstanding=n, outstanding_tokens=toks, decode_tps=st.decode_tps, ttft_ms=st.ttft_ms,
                budget_tokens=st.budget.tokens if st.budget else 0,
                budget_used=max(st.budget.used if st.budget else 0, k.window.used()) + toks,
                energy_j_per_token=st.energy_j_per_token, price_per_kwh=st.price_per_kwh,
                prefetch=c.settings.prefetch,
            ))
        return views

    def run(self, now: float, mono: float) -> None:
        """One pass: place waiting jobs while some agent has room (or the cloud is there)."""
        c = self.core
        self.pending = False
        cloud_usable = c.cloud.enabled
        if not c.jobs.waiting or not (cloud_usable or any(k.accepting for k in c.registry.agents.values())):
            return
        views = self.views()
        index = {v.agent: i for i, v in enumerate(views)}
        room = sum(max(0, v.slots + v.prefetch - v.outstanding) for v in views if v.online)
        this_pass = DispatchPass()  # jobs that must wait this round (their agents are full, say)
        started, decided = time.perf_counter(), False
        while (room > 0 or cloud_usable) and not this_pass.done:
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
            decision = decide(spec, views, now, self.policy, cloud=c.cloud, rng=self.rng)
            if decision.target == "cloud":
                self.cloud.offload(job, decision)
            elif decision.target == "agent" and decision.agent is not None:
                self.assign(job, decision, mono)
                # only the chosen agent's load changed: update its view, not all of them
                i = index[decision.agent]
                v = views[i]
                views[i] = dataclasses.replace(v, outstanding=v.outstanding + 1,
                                               outstanding_tokens=v.outstanding_tokens + spec.max_tokens,
                                               budget_used=v.budget_used + spec.max_tokens)
                room -= 1
            else:
                this_pass.hold(key, spec)
        for key in this_pass.waiting():
            job = c.jobs[key]
            c.jobs.waiting.push(job.key, job.req.priority, job.created_at)

    @property
    def policy(self) -> Policy:
        return self.core.settings.policy  # type: ignore[return-value]  # checked when settings load

    def spec(self, job: Job) -> JobSpec:
        return JobSpec(key=job.key, max_tokens=job.req.max_tokens, prompt_tokens=job.req.text_size() // 4,
                       chat=job.req.is_chat,
                       model=job.req.model or self.core.settings.default_model or None, priority=job.req.priority,
                       deadline_at=job.deadline_at, privacy=job.req.privacy, offline_ok=job.req.offline_ok,
                       exclude=frozenset(job.exclude))

    def assign(self, job: Job, decision: Decision, mono: float) -> None:
        c = self.core
        agent = decision.agent
        assert agent is not None
        job.attempt += 1
        c.jobs.place(job, agent)
        job.state, job.assigned_mono = JobState.ASSIGNED, mono
        job.agent_epoch = c.registry.agents[agent].status.epoch
        job.decision = explained(decision)
        c.count("assigned")
        c.ledger.update(job.key, "assigned", job.decision, agent=agent, attempt=job.attempt, tier="edge")
        spec = Assignment(key=job.key, device=job.device, job=job.job, attempt=job.attempt, stream=job.req.stream,
                          result_topic=c.topics.results(job.device, job.job), **request_of(job.req),
                          response_topic=job.response_topic, correlation=job.correlation,
                          deadline_at=job.deadline_at, assigned_at=c.clock())
        c.pending.publish(c.topics.assign(agent), encode(spec))
        log.info(kv("job_assigned", job=job.key, agent=agent, attempt=job.attempt,
                    predicted_ms=decision.predicted_s * 1000, reason=decision.reason))
