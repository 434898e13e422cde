"""The cloud tier as the coordinator uses it: the bridge's retained status says whether it is
there and what it costs; jobs the scheduler sends it go out on ``cloud/requests``, and their
outcome comes back on ``cloud/events``. How long the cloud really takes is learned from the jobs
it answers (``cloudtime``)."""

from __future__ import annotations

import logging

from broker.coordinator.cloudtime import CloudTime
from broker.coordinator.context import Core
from broker.coordinator.explain import explained
from broker.coordinator.finals import Finals
from broker.coordinator.jobs import Job, JobState
from broker.coordinator.scheduler import OFFLOAD_REASONS, CloudTier, Decision, cloud_cost
from broker.runtime.logs import kv
from broker.runtime.mqtt import Message
from schemas import encode
from schemas.messages import CloudRequest, CloudResult, ErrorInfo, ServedBy, request_of
from schemas.status import BridgeStatus

log = logging.getLogger("fogmesh.coordinator")
OFFLOAD_CODES = {words: code for code, words in OFFLOAD_REASONS.items()}


class Cloud:
    def __init__(self, core: Core, finals: Finals) -> None:
        self.core = core
        self.finals = finals
        self.time = CloudTime()

    def tier(self) -> CloudTier:
        """The cloud tier as the next decision should see it: learned times, jobs in flight."""
        return self.time.tier(self.core.cloud)

    def on_bridge_status(self, msg: Message) -> None:
        c = self.core
        if not msg.payload:
            return
        st = msg.decoded(BridgeStatus, log, "bridge_status_invalid")
        if st is None:
            return
        was = c.cloud
        c.cloud = CloudTier(enabled=st.state == "online", reachable=st.reachable, latency_s=st.latency_s,
                            decode_tps=st.decode_tps, price_in_per_1k=st.price_in_per_1k,
                            price_out_per_1k=st.price_out_per_1k, models=frozenset(st.models),
                            workers=st.workers)
        self.time.bridge_in_flight = st.outbox_depth + st.in_flight
        for key in self.time.waiting_for():  # ended otherwise (cancelled, expired): no longer in flight
            job = c.jobs.get(key)
            if job is None or job.state is not JobState.OFFLOADED:
                self.time.forget(key)
        if (was.enabled, was.reachable) != (c.cloud.enabled, c.cloud.reachable):
            log.info(kv("cloud_tier", enabled=c.cloud.enabled, reachable=c.cloud.reachable))

    def offload(self, job: Job, decision: Decision) -> None:
        c = self.core
        job.attempt += 1
        c.jobs.offload(job)
        job.decision = explained(decision, job.created_at, c.clock())
        c.count("offloaded")
        c.m.offloads.labels(OFFLOAD_CODES.get(decision.reason, "other")).inc()
        c.ledger.update(job.key, "offloaded", job.decision, agent=None, attempt=job.attempt, tier="cloud")
        req = CloudRequest(key=job.key, site=c.settings.site, device=job.device, job=job.job, attempt=job.attempt,
                           priority=job.req.priority, deadline_at=job.deadline_at, offline_ok=job.req.offline_ok,
                           created_at=job.created_at, **request_of(job.req))
        self.time.sent(job.key, c.clock(), self.tier())
        c.pending.publish(c.topics.cloud_requests, encode(req))
        log.info(kv("job_offloaded", job=job.key, attempt=job.attempt, reason=decision.reason,
                    predicted_ms=decision.predicted_s * 1000))

    def on_event(self, msg: Message) -> None:
        c = self.core
        res = msg.decoded(CloudResult, log, "cloud_event_invalid")
        if res is None:
            return
        job = c.jobs.get(res.key)
        if job is None or job.state is not JobState.OFFLOADED or job.attempt != res.attempt:
            c.count("duplicates")
            log.info(kv("cloud_result_dropped", job=res.key, kind=res.kind, reason="job no longer waits for it"))
            return
        self.time.finished(job.key, c.clock(), (res.timings or {}) if res.kind == "done" else None)
        if res.kind == "done":
            cost = ({"cloud": round(cloud_cost(c.cloud, res.usage.prompt_tokens, res.usage.completion_tokens), 9)}
                    if res.usage else None)
            self.finals.finish(job, "done", text=res.text, usage=res.usage, agent_timings=res.timings,
                               served_by=ServedBy(tier="cloud", node=res.node), cost=cost,
                               finish_reason=res.finish_reason)
        elif res.kind == "expired":
            self.finals.finish(job, "expired", error=res.error)
        elif res.kind == "failed":
            self.finals.finish(job, "error", error=res.error or ErrorInfo(code="cloud_error", message="cloud failed"))
