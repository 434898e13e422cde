"""The coordinator: takes prompts, keeps the agents' view, assigns jobs, answers devices.

One thread owns all state. paho's network thread only hands messages to an
inbox; the loop takes a batch, applies it in one ledger transaction (group
commit), and only then acts: publishes assignments and final messages and
acknowledges the prompts. A prompt is therefore acknowledged to the broker only
once it is durable, and a coordinator killed at any point resumes from the
ledger and the broker's persistent session.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import random
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from broker.coordinator.inbox import Inbox
from broker.coordinator.ledger import Ledger
from broker.coordinator.registry import Registry
from broker.coordinator.scheduler import (
    AgentView,
    CloudTier,
    Decision,
    DispatchPass,
    JobSpec,
    WaitQueue,
    cloud_cost,
    decide,
    edge_cost,
)
from broker.coordinator.settings import CoordinatorSettings
from broker.runtime import __version__
from broker.runtime.logs import kv
from broker.runtime.metrics import TOKENS_PER_S, Metrics
from broker.runtime.mqtt import Delivery, Message, Session
from broker.runtime.notify import Notifier
from schemas import DecodeError, decode, encode
from schemas.codec import convert
from schemas.messages import (
    AgentEvent,
    AgentStatus,
    Assignment,
    BridgeStatus,
    Cancel,
    CloudRequest,
    CloudResult,
    Control,
    CoordinatorStatus,
    ErrorInfo,
    Final,
    MeshStatus,
    Prompt,
    ServedBy,
    Status,
    Usage,
)
from schemas.topics import Topics, is_valid_id

log = logging.getLogger("fogmesh.coordinator")
NOT_RETRYABLE = {"cancelled"}
# A dispatch pass yields to the inbox after this long: deciding over 1,000 agents costs ~2 ms a
# job, and a pass over thousands of queued jobs would leave heartbeats unread for seconds.
DISPATCH_BUDGET_S = 0.05
BEHIND_S = 1.0  # an inbox this far behind means silence cannot be judged yet
PRUNE_EVERY_S = 10.0  # a flood's worth of finished jobs goes in a few passes of 5,000


def new_job_id() -> str:
    """Time-ordered, unique: milliseconds then 6 random bytes, hex."""
    return f"{time.time_ns() // 1_000_000:x}-{secrets.token_hex(6)}"


@dataclass
class Job:
    key: str
    device: str
    job: str
    req: Prompt
    created_at: float  # wall clock
    deadline_at: float | None = None  # wall clock
    response_topic: str | None = None
    correlation: str | None = None
    state: str = "queued"  # queued | assigned | running | offloaded
    agent: str | None = None
    agent_epoch: int = 0
    attempt: int = 0
    assigned_mono: float = 0.0
    accepted: bool = False
    started_at: float | None = None
    failures: int = 0
    exclude: set[str] = field(default_factory=set)
    size: int = 0  # bytes of the prompt held in memory (max_queue_bytes)
    decision: dict[str, Any] | None = None

    def request_row(self) -> str:
        data = {"prompt": orjson.loads(encode(self.req)), "response_topic": self.response_topic,
                "correlation": self.correlation}
        return orjson.dumps(data).decode()


class Coordinator:
    def __init__(self, settings: CoordinatorSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.topics = Topics(settings.site)
        self.clock = clock
        self.ledger = Ledger(settings.ledger, settings.ledger_sync)
        self.registry = Registry(settings.agent_timeout_factor)
        self.jobs: dict[str, Job] = {}
        self.by_agent: dict[str, set[str]] = {}  # agent -> keys of the live jobs placed on it
        self.rng = random.Random()
        self.counters: dict[str, int] = {"accepted": 0, "assigned": 0, "reassigned": 0, "done": 0,
                                          "rejected": 0, "cancelled": 0, "expired": 0, "error": 0,
                                          "duplicates": 0, "unanswered": 0}
        self._inbox = Inbox()  # None in it: a PUBACK arrived, wake up
        self._effects: list[Callable[[], object]] = []
        self._unconfirmed: list[tuple[str, Delivery]] = []
        self._held_bytes = 0  # prompt bytes of the live jobs
        self._last_prune = 0.0
        self._stop = False
        self._last_scan = 0.0
        self.waiting = WaitQueue(settings.aging_s)  # keys of the jobs in state "queued"
        self.cloud = CloudTier()  # enabled while a bridge's retained status says it is online
        self._last_mesh: MeshStatus | None = None
        self._last_mesh_at = 0.0
        self._dispatch_pending = False
        self._warned_behind = 0.0
        self.notifier = Notifier()
        self.metrics = Metrics("coordinator", self.counters)
        m = self.metrics
        self.m_finals = m.counter("jobs_total", "Jobs finished, by final status and the tier that served them",
                                  ("status", "tier"))
        self.m_rejections = m.counter("rejections_total", "Prompts rejected, by error code", ("code",))
        self.m_unanswered = m.counter("prompts_unanswered_total",
                                      "Prompts that could not be answered on a result topic, by reason", ("reason",))
        self.m_queue_wait = m.histogram("queue_wait_seconds", "From accepted to started on an agent or the cloud")
        self.m_ttft = m.histogram("ttft_seconds", "Time to first token of finished jobs", labels=("tier",))
        self.m_latency = m.histogram("latency_seconds", "From accepted to the final message, done jobs",
                                     labels=("tier",))
        self.m_tps = m.histogram("decode_tokens_per_second", "Decode rate of done jobs", TOKENS_PER_S, ("tier",))
        m.gauge("queue_depth", "Jobs waiting for an agent", lambda: len(self.waiting))
        m.gauge("jobs_in_flight", "Jobs accepted and not yet finished", lambda: len(self.jobs))
        m.gauge("agents_online", "Agents online", lambda: len(self.registry.online()))
        m.gauge("slots_free", "Free slots across online agents",
                lambda: self._last_mesh.slots_free if self._last_mesh else 0)
        m.reconnects(lambda: self.session.reconnects)
        will = CoordinatorStatus(state="offline", host=socket.gethostname(), pid=os.getpid(),
                                 policy=settings.policy, version=__version__)
        self.session = Session(
            settings.address(),
            client_id=f"fogmesh-coordinator-{settings.site}",
            on_message=self._inbox.put,
            will=(self.topics.coordinator_status, encode(will)),
            keepalive_s=settings.keepalive_s,
            manual_ack=True,
        )
        # a PUBACK for a final wakes the loop, so its delivery is recorded at once: a coordinator
        # killed after the broker took a final re-sends it on restart only inside this short window
        self.session.set_on_delivered(lambda: self._inbox.put(None))

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._recover()
        self.session.start()
        t = self.topics
        for topic in (t.prompts(), t.cancel(), t.events(), t.agent_status(), t.explain, t.bridge_status,
                      t.cloud_events):
            self.session.subscribe(topic, qos=1)
        self._publish_status("online")
        log.info(kv("coordinator_online", broker=self.session.address.url, site=self.settings.site,
                    policy=self.settings.policy, ledger=self.ledger.path, open_jobs=len(self.jobs)))

    def run(self) -> int:
        self.start()
        self.metrics.serve(self.settings.metrics_port, self.settings.metrics_bind)
        self.notifier.ready(f"coordinator of site {self.settings.site}, policy {self.settings.policy}")
        while not self._stop:
            self.step(timeout_s=0.1)
            self.notifier.tick()
        self.notifier.stopping()
        self.stop()
        return 0

    def request_stop(self) -> None:
        self._stop = True

    def stop(self) -> None:
        self._confirm_deliveries(wait_s=2.0)
        self._publish_status("offline", wait=True)
        self.session.stop()
        self.ledger.close()
        log.info(kv("coordinator_stopped", **self.counters))

    def _recover(self) -> None:
        """Rebuild live jobs from the ledger; re-send finals the broker never acknowledged."""
        now_mono = time.monotonic()
        for row in self.ledger.open_jobs():
            req = orjson.loads(row["request"])
            job = Job(key=row["key"], device=row["device"], job=row["job"],
                      req=convert(req["prompt"], Prompt), created_at=row["created_at"],
                      deadline_at=row["deadline_at"], response_topic=req.get("response_topic"),
                      correlation=req.get("correlation"), state=row["state"], agent=row["agent"],
                      attempt=row["attempt"], assigned_mono=now_mono, accepted=row["state"] == "running",
                      size=len(row["request"]))
            self._held_bytes += job.size
            if job.state not in ("assigned", "running", "offloaded"):
                job.state, job.agent = "queued", None
                self.waiting.push(job.key, job.req.priority, job.created_at)
            self.jobs[job.key] = job
            self._place(job, job.agent)
        for row in self.ledger.undelivered():
            final = orjson.loads(row["final"])
            req = orjson.loads(row["request"])
            self._effects.append(self._publish_final_fn(row["key"], row["device"], row["job"], final,
                                                        req.get("response_topic"), req.get("correlation")))

    # ------------------------------------------------------------------ the loop

    def step(self, timeout_s: float = 0.1) -> int:
        """Take a batch from the inbox, apply it in one transaction, then act. Returns messages handled."""
        batch: list[Message | None] = []
        try:
            # a dispatch pass cut short by its time budget goes on at once, not after a wait
            batch.append(self._inbox.get(timeout=0.0 if self._dispatch_pending else timeout_s))
            while len(batch) < 512:
                batch.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        with self.ledger.transaction():
            for msg in batch:
                if msg is not None:
                    self._handle(msg)
            self._tick()
        effects, self._effects = self._effects, []
        for effect in effects:
            effect()
        self._confirm_deliveries()
        self._publish_mesh()
        return len(batch)

    def _handle(self, msg: Message) -> None:
        try:
            kind, *rest = self.topics.parse(msg.topic)
            if kind == "prompts" and len(rest) == 1:
                self._on_prompt(rest[0], msg)
            elif kind == "cancel" and len(rest) == 1:
                self._on_cancel(rest[0], msg)
            elif kind == "agents" and rest[-1] == "status":
                self._on_status(msg)
            elif kind == "agents" and rest[-1] == "events":
                self._on_event(msg)
            elif kind == "coordinator" and rest == ["explain"]:
                self._on_explain(msg)
            elif kind == "bridge" and rest == ["status"]:
                self._on_bridge_status(msg)
            elif kind == "cloud" and rest == ["events"]:
                self._on_cloud_event(msg)
        except Exception:  # one bad message must never stop the coordinator
            log.exception(kv("message_failed", topic=msg.topic))
        self._effects.append(lambda: self.session.ack(msg))

    # ------------------------------------------------------------------ prompts

    def _on_prompt(self, device: str, msg: Message) -> None:
        if not is_valid_id(device):
            self._unanswered("bad_device_id", device, msg,
                             "the device id in the topic must be 1-128 characters of letters, digits and _ . : @ -; "
                             "no result topic can be built for it")
            return
        problem = self._response_topic_problem(device, msg.response_topic)
        if problem:
            self._reject(device, _peek_id(msg.payload), "bad_response_topic", problem,
                         dataclasses.replace(msg, response_topic=None))
            return
        if len(msg.payload) > self.settings.max_prompt_bytes:
            self._reject(device, None, "too_large",
                         f"prompt payload is {len(msg.payload)} bytes; this site accepts at most "
                         f"{self.settings.max_prompt_bytes}", msg)
            return
        try:
            req = decode(msg.payload, Prompt)
        except DecodeError as exc:
            code = exc.code
            if exc.field == "prompt" and code == "invalid_value":
                code = "empty_prompt"
            self._reject(device, _peek_id(msg.payload), code, exc.message, msg)
            return
        if not req.prompt.strip():
            self._reject(device, req.id, "empty_prompt", "prompt is empty or only whitespace", msg)
            return
        if req.max_tokens > self.settings.max_tokens_limit:
            self._reject(device, req.id, "max_tokens_too_large",
                         f"max_tokens {req.max_tokens} is over this site's limit of "
                         f"{self.settings.max_tokens_limit}", msg)
            return
        model = req.model or self.settings.default_model or None
        known = self.registry.models()
        if model and known and model not in known:
            self._reject(device, req.id, "unknown_model",
                         f"no agent on this site holds model {model!r}; known: {', '.join(sorted(known))}", msg)
            return
        job_id = req.id or new_job_id()
        key = f"{device}/{job_id}"
        if key in self.jobs:
            self.counters["duplicates"] += 1
            log.info(kv("prompt_duplicate", job=key, state=self.jobs[key].state))
            return
        done = self.ledger.get(key)
        if done is not None and done["state"] != "rejected":  # answered: the same answer again, not a second run
            self.counters["duplicates"] += 1
            corr = msg.correlation.hex() if msg.correlation else None
            final = orjson.loads(done["final"] or "{}")
            self._effects.append(self._publish_final_fn(key, device, job_id, final, msg.response_topic, corr))
            return
        queued = len(self.waiting)
        if queued >= self.settings.max_queue:
            self._reject(device, job_id, "overloaded",
                         f"the site's queue is full ({queued} jobs waiting); retry later", msg)
            return
        if self._held_bytes + len(msg.payload) > self.settings.max_queue_bytes:
            self._reject(device, job_id, "overloaded",
                         f"the site holds {self._held_bytes} bytes of prompts, its limit is "
                         f"{self.settings.max_queue_bytes}; retry later", msg)
            return
        now = self.clock()
        deadline = now + req.deadline_ms / 1000 if req.deadline_ms else None
        if msg.expiry_s:
            expiry = msg.received_at + msg.expiry_s
            deadline = min(deadline, expiry) if deadline else expiry
        job = Job(key=key, device=device, job=job_id, req=req, created_at=now, deadline_at=deadline,
                  response_topic=msg.response_topic,
                  correlation=msg.correlation.hex() if msg.correlation else None, size=len(msg.payload))
        self.jobs[key] = job
        self._held_bytes += job.size
        self.waiting.push(key, req.priority, now)
        self.ledger.insert({"key": key, "device": device, "job": job_id, "state": "queued",
                            "priority": req.priority, "request": job.request_row(), "created_at": now,
                            "deadline_at": deadline})
        self.counters["accepted"] += 1
        log.info(kv("job_accepted", job=key, max_tokens=req.max_tokens, priority=req.priority))

    def _response_topic_problem(self, device: str, topic: str | None) -> str | None:
        """Why a prompt's MQTT 5 Response Topic cannot be honoured, if it cannot.

        Only a topic under the device's own results is honoured: it is what the device may
        read, and the one subtree where the coordinator and the agents may write for it. A
        topic anywhere else would either let a device make them write where its own ACL does
        not let it (another device's results, an agent's assignments), or, outside
        ``fogmesh/``, make the broker disconnect them for an ACL-denied publish (mosquitto
        closes the connection instead of answering with a reason code), which once took a
        whole site down in a retry loop.
        """
        if topic is None:
            return None
        own = self.topics.results(device, "")
        if not topic or "+" in topic or "#" in topic or topic.startswith("$") or len(topic) > 512:
            return f"response topic {topic[:128]!r} must be a plain topic name without wildcards or '$'"
        if not topic.startswith(own) or topic == own:
            return (f"response topic {topic[:128]!r} is not under this device's results; "
                    f"use one under {own} (or none: answers always go to {own}<job id>)")
        return None

    def _reject(self, device: str, job_id: str | None, code: str, message: str, msg: Message) -> None:
        """Answer a prompt that was not accepted. A rejection does not hold on to its id: the device
        may send a corrected prompt, or retry after ``overloaded``, under the same id."""
        job_id = job_id if job_id and is_valid_id(job_id) else new_job_id()
        key = f"{device}/{job_id}"
        stored = None if key in self.jobs else self.ledger.get(key)
        if key in self.jobs or (stored is not None and stored["state"] != "rejected"):
            # A bad copy under the id of an accepted job: its rejection on that job's topic would be
            # a second final there, and a device that stops at the first would lose the real answer.
            self._unanswered("id_in_use", device, msg, f"{code}: {message} (job id {job_id!r} is taken by an "
                             "accepted job, whose answer goes to its result topic)", job_id)
            return
        final = Final(job=job_id, status="rejected", error=ErrorInfo(code=code, message=message))
        now = self.clock()
        corr = msg.correlation.hex() if msg.correlation else None
        request = orjson.dumps({"raw": msg.payload[:512].decode("utf-8", "replace"),
                                "response_topic": msg.response_topic, "correlation": corr}).decode()
        self.ledger.insert({"key": key, "device": device, "job": job_id, "state": "rejected",
                            "request": request, "created_at": now, "final": encode(final).decode()},
                           {"code": code, "message": message})
        self.counters["rejected"] += 1
        self.m_finals.labels("rejected", "none").inc()
        self.m_rejections.labels(code).inc()
        log.info(kv("job_rejected", job=key, code=code, detail=message))
        self._effects.append(self._publish_final_fn(key, device, job_id, orjson.loads(encode(final)),
                                                    msg.response_topic, corr))

    def _unanswered(self, reason: str, device: str, msg: Message, detail: str, job_id: str | None = None) -> None:
        """A prompt that no result topic can carry an answer for: counted, logged and, when it names
        a job, kept in the ledger (under a key of its own) so that ``fogmesh explain`` finds it."""
        self.counters["unanswered"] += 1
        self.m_unanswered.labels(reason).inc()
        log.warning(kv("prompt_unanswered", reason=reason, device=repr(device[:64]), topic=repr(msg.topic[:160]),
                       detail=detail))
        if job_id is not None:
            request = orjson.dumps({"raw": msg.payload[:512].decode("utf-8", "replace")}).decode()
            key = f"{device}/{job_id}!{new_job_id()}"
            self.ledger.insert({"key": key, "device": device, "job": job_id, "state": "rejected",
                                "request": request, "created_at": self.clock(), "delivered": 1},
                               {"code": reason, "message": detail})

    def _on_cancel(self, device: str, msg: Message) -> None:
        try:
            cancel = decode(msg.payload, Cancel)
        except DecodeError as exc:
            log.warning(kv("cancel_invalid", device=device, code=exc.code, detail=exc.message))
            return
        job = self.jobs.get(f"{device}/{cancel.id}")
        if job is None:
            log.info(kv("cancel_unknown", job=f"{device}/{cancel.id}"))
            return
        self._finish(job, "cancelled", error=ErrorInfo(code="cancelled", message="cancelled by the device"))

    def _on_bridge_status(self, msg: Message) -> None:
        if not msg.payload:
            return
        try:
            st = decode(msg.payload, BridgeStatus)
        except DecodeError as exc:
            log.warning(kv("bridge_status_invalid", code=exc.code, detail=exc.message))
            return
        was = self.cloud
        self.cloud = CloudTier(enabled=st.state == "online", reachable=st.reachable, latency_s=st.latency_s,
                               decode_tps=st.decode_tps, price_in_per_1k=st.price_in_per_1k,
                               price_out_per_1k=st.price_out_per_1k)
        if (was.enabled, was.reachable) != (self.cloud.enabled, self.cloud.reachable):
            log.info(kv("cloud_tier", enabled=self.cloud.enabled, reachable=self.cloud.reachable))

    def _on_cloud_event(self, msg: Message) -> None:
        try:
            res = decode(msg.payload, CloudResult)
        except DecodeError as exc:
            log.warning(kv("cloud_event_invalid", code=exc.code, detail=exc.message))
            return
        job = self.jobs.get(res.key)
        if job is None or job.state != "offloaded" or job.attempt != res.attempt:
            self.counters["duplicates"] += 1
            log.info(kv("cloud_result_dropped", job=res.key, kind=res.kind, reason="job no longer waits for it"))
            return
        if res.kind == "done":
            self._finish(job, "done", text=res.text, usage=res.usage, agent_timings=res.timings,
                         served_by=ServedBy(tier="cloud", node=res.node))
        elif res.kind == "expired":
            self._finish(job, "expired", error=res.error)
        elif res.kind == "failed":
            self._finish(job, "error", error=res.error or ErrorInfo(code="cloud_error", message="cloud failed"))

    def _offload(self, job: Job, decision: Decision) -> None:
        job.attempt += 1
        job.state, job.agent, job.decision = "offloaded", None, _explain(decision)
        self.counters["offloaded"] = self.counters.get("offloaded", 0) + 1
        self.ledger.update(job.key, "offloaded", job.decision, agent=None, attempt=job.attempt, tier="cloud")
        req = CloudRequest(key=job.key, site=self.settings.site, device=job.device, job=job.job, attempt=job.attempt,
                           prompt=job.req.prompt, max_tokens=job.req.max_tokens, priority=job.req.priority,
                           model=job.req.model, deadline_at=job.deadline_at, offline_ok=job.req.offline_ok,
                           created_at=job.created_at)
        payload, topic = encode(req), self.topics.cloud_requests
        self._effects.append(lambda: self.session.publish(topic, payload, qos=1))
        log.info(kv("job_offloaded", job=job.key, attempt=job.attempt, reason=decision.reason,
                    predicted_ms=decision.predicted_s * 1000))

    def _on_explain(self, msg: Message) -> None:
        """Answer ``fogmesh explain``: a job's transitions and decisions, to the request's Response Topic."""
        if not (msg.response_topic or "").startswith(f"{self.topics.explain}/reply/"):
            log.warning(kv("explain_bad_reply_topic", topic=(msg.response_topic or "")[:128],
                           expected=f"{self.topics.explain}/reply/<token>"))
            return
        try:
            wanted = str(orjson.loads(msg.payload).get("job", ""))
        except (orjson.JSONDecodeError, AttributeError):
            wanted = ""
        jobs = []
        for row in self.ledger.find(wanted)[:20] if wanted else []:
            live = self.jobs.get(row["key"])
            jobs.append({"key": row["key"], "state": row["state"], "agent": row["agent"], "tier": row["tier"],
                         "attempt": row["attempt"], "priority": row["priority"], "live": live is not None,
                         "history": self.ledger.history(row["key"])})
        body = orjson.dumps({"job": wanted, "jobs": jobs, "policy": self.settings.policy})
        topic, corr = msg.response_topic or "", msg.correlation
        self._effects.append(lambda: self.session.publish(topic, body, qos=1, correlation=corr))

    # ------------------------------------------------------------------ agents

    def _on_status(self, msg: Message) -> None:
        if not msg.payload:
            return  # a cleared retained status
        try:
            status = decode(msg.payload, AgentStatus)
        except DecodeError as exc:
            log.warning(kv("status_invalid", topic=msg.topic, code=exc.code, detail=exc.message))
            return
        # Liveness counts from when the status arrived, not from when this loop got to it:
        # a coordinator behind on its inbox must not declare live agents dead.
        arrived = time.monotonic() - max(0.0, time.time() - msg.received_at)
        change = self.registry.update(status, arrived)
        if change == "ignored":
            return
        if change in ("new", "restarted", "draining", "offline"):
            log.info(kv("agent_" + change, agent=status.agent, epoch=status.epoch, state=status.state,
                        host=status.host, pid=status.pid, tps=status.decode_tps))
        if change in ("offline", "restarted"):
            self._requeue_agent(status.agent, f"agent {change}")
            return
        # An agent that no longer lists a job we gave it a while ago has lost it.
        held = set(status.jobs)
        grace = self.settings.accept_timeout_s
        now = time.monotonic()
        for job in [self.jobs[k] for k in self.by_agent.get(status.agent, ())]:
            if job.accepted and job.key not in held and now - job.assigned_mono > grace:
                self._lost(job, "agent no longer holds the job")

    def _on_event(self, msg: Message) -> None:
        try:
            ev = decode(msg.payload, AgentEvent)
        except DecodeError as exc:
            log.warning(kv("event_invalid", topic=msg.topic, code=exc.code, detail=exc.message))
            return
        job = self.jobs.get(ev.key)
        if job is None or job.agent != ev.agent or job.attempt != ev.attempt:
            log.debug(kv("event_stale", job=ev.key, kind=ev.kind, agent=ev.agent, attempt=ev.attempt))
            return
        if ev.kind == "accepted":
            job.accepted = True
            self.ledger.note(job.key, "accepted", {"agent": ev.agent, "attempt": ev.attempt})
        elif ev.kind == "started":
            job.accepted = True
            job.state = "running"
            job.started_at = self.clock()
            self.m_queue_wait.observe(job.started_at - job.created_at)
            self.ledger.update(job.key, "running", {"agent": ev.agent, "attempt": ev.attempt})
        elif ev.kind == "done":
            known = self.registry.agents.get(ev.agent)
            if known and ev.usage:
                known.window.add(ev.usage.completion_tokens)
            self._finish(job, "done", text=ev.text, usage=ev.usage, agent_timings=ev.timings,
                         served_by=ServedBy(tier="edge", node=ev.agent))
        elif ev.kind == "refused":
            if ev.error and ev.error.code == "draining":
                job.exclude.add(ev.agent)
            self._requeue(job, f"agent refused: {ev.error.message if ev.error else ''}")
        elif ev.kind == "failed":
            self._failed(job, ev.error or ErrorInfo(code="agent_error", message="agent failed"))

    def _failed(self, job: Job, error: ErrorInfo) -> None:
        job.failures += 1
        self.ledger.note(job.key, "failed", {"agent": job.agent, "code": error.code, "message": error.message})
        if job.agent:
            job.exclude.add(job.agent)
        others = [k for k in self.registry.agents.values()
                  if k.online and k.status.agent not in job.exclude
                  and (not job.req.model or job.req.model in k.models)]
        if error.code in NOT_RETRYABLE or job.failures >= self.settings.max_attempts or not others:
            why = ("not retryable" if error.code in NOT_RETRYABLE else
                   f"failed {job.failures} times" if others else "no other agent can take it")
            self._give_up(job, ErrorInfo(code=error.code, message=f"{error.message} ({why})"))
            return
        self._requeue(job, f"attempt failed: {error.code}")

    def _lost(self, job: Job, why: str) -> None:
        """The agent running ``job`` went away (died, restarted, lost it). That counts as an attempt:
        a job that makes every agent it reaches fail must end, not circle the site for ever."""
        job.failures += 1
        self.ledger.note(job.key, "failed", {"agent": job.agent, "code": "agent_lost", "message": why})
        if job.failures >= self.settings.max_attempts:
            self._give_up(job, ErrorInfo(code="agent_lost", message=f"{why}; the job's agent was lost "
                                         f"{job.failures} times, so it is not tried again"))
        else:
            self._requeue(job, why)

    def _give_up(self, job: Job, error: ErrorInfo) -> None:
        """End a job in ``error`` and leave a dead letter for the operators."""
        agents = sorted(job.exclude | ({job.agent} if job.agent else set()))
        self._finish(job, "error", error=error)
        letter = orjson.dumps({"key": job.key, "device": job.device, "job": job.job, "attempts": job.attempt,
                               "agents": agents, "error": {"code": error.code, "message": error.message},
                               "ts": self.clock()})
        self.ledger.note(job.key, "dead_letter", orjson.loads(letter))
        topic = self.topics.deadletter(job.device, job.job)
        self._effects.append(lambda: self.session.publish(topic, letter, qos=1))

    def _requeue_agent(self, agent: str, why: str) -> None:
        """Every job placed on an agent that is gone counts an attempt (an assignment that kills its
        agent before it could even be accepted included)."""
        for key in list(self.by_agent.get(agent, ())):
            self._lost(self.jobs[key], why)

    def _place(self, job: Job, agent: str | None) -> None:
        """Set the agent a job is on, keeping the per-agent index in step."""
        if job.agent and job.agent != agent:
            self.by_agent.get(job.agent, set()).discard(job.key)
        job.agent = agent
        if agent:
            self.by_agent.setdefault(agent, set()).add(job.key)

    def _requeue(self, job: Job, why: str) -> None:
        if job.agent:
            self._send_cancel(job)
        log.info(kv("job_requeued", job=job.key, agent=job.agent, attempt=job.attempt, reason=why))
        self._place(job, None)
        job.state, job.accepted, job.started_at = "queued", False, None
        self.waiting.push(job.key, job.req.priority, job.created_at)
        self.counters["reassigned"] += 1
        self.ledger.update(job.key, "queued", {"reason": why}, agent=None)

    def _send_cancel(self, job: Job) -> None:
        agent, ctl = job.agent, Control(cancel=job.key, attempt=max(job.attempt, 1))
        if agent:
            self._effects.append(lambda: self.session.publish(self.topics.control(agent), encode(ctl)))

    # ------------------------------------------------------------------ time

    def _tick(self) -> None:
        now, mono = self.clock(), time.monotonic()
        if mono - self._last_scan >= 0.1:  # the scan of every live job runs at most 10 times a second
            self._last_scan = mono
            self._scan(now, mono)
        if mono - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = mono
            self._prune(now)
        self._dispatch(now, mono)

    def _prune(self, now: float) -> None:
        """Keep the ledger bounded (``ledger_retention_h``, ``ledger_max_jobs``)."""
        hours = self.settings.ledger_retention_h
        gone = self.ledger.prune(now - hours * 3600 if hours > 0 else None, self.settings.ledger_max_jobs)
        if gone:
            log.info(kv("ledger_pruned", jobs=gone, retention_h=hours, max_jobs=self.settings.ledger_max_jobs))

    def _behind_s(self) -> float:
        """How long the oldest message still in the inbox has waited (0 when the loop keeps up)."""
        oldest = self._inbox.oldest_received_at()
        return max(0.0, time.time() - oldest) if oldest is not None else 0.0

    def _scan(self, now: float, mono: float) -> None:
        """Agents whose heartbeat lapsed, deadlines passed, assignments never accepted.

        Silence is judged only while the loop keeps up with its inbox: a heartbeat or an
        acceptance still waiting there is not missing, and declaring its agent lost would
        requeue work the agent is doing (with 1,000 agents that fed on itself).
        """
        behind = self._behind_s()
        judge = behind < BEHIND_S
        if not judge and mono - self._warned_behind > 10:
            self._warned_behind = mono
            log.warning(kv("coordinator_behind", behind_s=behind, inbox=self._inbox.qsize(),
                           detail="heartbeat and acceptance timeouts wait until the inbox is worked off"))
        for agent in self.registry.sweep(mono) if judge else ():
            log.warning(kv("agent_lapsed", agent=agent, reason="no heartbeat"))
            self._requeue_agent(agent, "agent heartbeat lapsed")
        timeout = self.settings.accept_timeout_s
        for job in list(self.jobs.values()):
            if job.deadline_at is not None and now >= job.deadline_at:
                self._finish(job, "expired", error=ErrorInfo(
                    code="deadline", message="the job's deadline passed before it finished"))
            elif not judge:
                continue
            elif job.state == "assigned" and not job.accepted and mono - job.assigned_mono > timeout:
                self._requeue(job, "agent did not accept in time")
            elif (job.agent and not self.registry.is_online(job.agent)
                  and mono - job.assigned_mono > timeout):
                self._requeue(job, "agent is not online")

    def _views(self) -> list[AgentView]:
        load = {agent: (len(keys), sum(self.jobs[k].req.max_tokens for k in keys))
                for agent, keys in self.by_agent.items() if keys}
        views = []
        for k in self.registry.agents.values():
            st = k.status
            n, toks = load.get(st.agent, (0, 0))
            views.append(AgentView(
                agent=st.agent, online=k.accepting, fresh=k.online, models=k.models, slots=st.slots_total,
                outstanding=n, outstanding_tokens=toks, decode_tps=st.decode_tps, ttft_ms=st.ttft_ms,
                budget_tokens=st.budget.tokens if st.budget else 0,
                budget_used=max(st.budget.used if st.budget else 0, k.window.used()) + toks,
                energy_j_per_token=st.energy_j_per_token, price_per_kwh=st.price_per_kwh,
                prefetch=self.settings.prefetch,
            ))
        return views

    def _dispatch(self, now: float, mono: float) -> None:
        """Place waiting jobs, most urgent first, while some agent has room (or the cloud is there)."""
        self._dispatch_pending = False
        cloud_usable = self.cloud.enabled
        if not self.waiting or not (cloud_usable or any(k.accepting for k in self.registry.agents.values())):
            return
        views = self._views()
        index = {v.agent: i for i, v in enumerate(views)}
        room = sum(max(0, v.slots + v.prefetch - v.outstanding) for v in views if v.online)
        this_pass = DispatchPass()  # jobs that must wait this round (their agents are full, say)
        started, decided = time.perf_counter(), False
        while (room > 0 or cloud_usable) and not this_pass.done:
            if decided and time.perf_counter() - started > DISPATCH_BUDGET_S:
                self._dispatch_pending = True  # the rest in the next step, after the inbox had its turn
                break
            decided = True
            key = self.waiting.pop(now)
            if key is None:
                break
            job = self.jobs[key]
            spec = self._spec(job)
            if this_pass.set_aside(key, spec):
                continue
            decision = decide(spec, views, now, self.settings.policy, cloud=self.cloud, rng=self.rng)  # type: ignore[arg-type]
            if decision.target == "cloud":
                self._offload(job, decision)
            elif decision.target == "agent" and decision.agent is not None:
                self._assign(job, decision, mono)
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
            job = self.jobs[key]
            self.waiting.push(job.key, job.req.priority, job.created_at)

    def _spec(self, job: Job) -> JobSpec:
        return JobSpec(key=job.key, max_tokens=job.req.max_tokens, prompt_tokens=len(job.req.prompt) // 4,
                       model=job.req.model or self.settings.default_model or None, priority=job.req.priority,
                       deadline_at=job.deadline_at, privacy=job.req.privacy, offline_ok=job.req.offline_ok,
                       exclude=frozenset(job.exclude))

    def _assign(self, job: Job, decision: Decision, mono: float) -> None:
        agent = decision.agent
        assert agent is not None
        job.attempt += 1
        self._place(job, agent)
        job.state, job.accepted, job.assigned_mono = "assigned", False, mono
        job.agent_epoch = self.registry.agents[agent].status.epoch
        job.decision = _explain(decision)
        self.counters["assigned"] += 1
        self.ledger.update(job.key, "assigned", job.decision, agent=agent, attempt=job.attempt, tier="edge")
        spec = Assignment(key=job.key, device=job.device, job=job.job, attempt=job.attempt, prompt=job.req.prompt,
                          max_tokens=job.req.max_tokens, stream=job.req.stream, model=job.req.model,
                          result_topic=self.topics.results(job.device, job.job),
                          response_topic=job.response_topic, correlation=job.correlation,
                          deadline_at=job.deadline_at, assigned_at=self.clock())
        payload = encode(spec)
        topic = self.topics.assign(agent)
        self._effects.append(lambda: self.session.publish(topic, payload, qos=1))
        log.info(kv("job_assigned", job=job.key, agent=agent, attempt=job.attempt,
                    predicted_ms=decision.predicted_s * 1000, reason=decision.reason))

    # ------------------------------------------------------------------ finishing

    def _finish(self, job: Job, status: Status, *, text: str = "", usage: Usage | None = None,
                agent_timings: dict[str, float] | None = None, served_by: ServedBy | None = None,
                error: ErrorInfo | None = None) -> None:
        now = self.clock()
        if status in ("cancelled", "expired") and job.agent:
            self._send_cancel(job)
        timings = dict(agent_timings or {})
        timings["total_ms"] = round((now - job.created_at) * 1000, 2)
        if job.started_at:
            timings["queue_ms"] = round((job.started_at - job.created_at) * 1000, 2)
        if job.decision and "predicted_ms" in job.decision:
            timings["predicted_ms"] = job.decision["predicted_ms"]
        cost = None
        if status == "done" and served_by is not None and usage is not None:
            cost = self._cost(served_by, usage)
        final = Final(job=job.job, status=status, text=text, served_by=served_by, usage=usage,
                      timings=timings, error=error, cost=cost)
        del self.jobs[job.key]
        self._held_bytes -= job.size
        self._place(job, None)
        self.waiting.discard(job.key)
        body = encode(final)
        self.ledger.update(job.key, status, {"error": error.code} if error else None,
                           final=body.decode(), delivered=0)
        self.counters[status] = self.counters.get(status, 0) + 1
        tier = served_by.tier if served_by else "none"
        self.m_finals.labels(status, tier).inc()
        if status == "done":
            self.m_latency.labels(tier).observe(timings["total_ms"] / 1000)
            if "ttft_ms" in timings:
                self.m_ttft.labels(tier).observe(timings["ttft_ms"] / 1000)
            if timings.get("decode_tps"):
                self.m_tps.labels(tier).observe(timings["decode_tps"])
        log.info(kv("job_" + status, job=job.key, node=served_by.node if served_by else None,
                    total_ms=timings["total_ms"], tokens=usage.completion_tokens if usage else None,
                    code=error.code if error else None))
        self._effects.append(self._publish_final_fn(job.key, job.device, job.job, orjson.loads(body),
                                                    job.response_topic, job.correlation))

    def _cost(self, served_by: ServedBy, usage: Usage) -> dict[str, float]:
        """What the answer cost: energy x price at the edge, the API price in the cloud."""
        if served_by.tier == "cloud":
            c = self.cloud
            return {"cloud": round(cloud_cost(c, usage.prompt_tokens, usage.completion_tokens), 9)}
        known = self.registry.agents.get(served_by.node)
        if known is None:
            return {"edge": 0.0}
        st = known.status
        view = AgentView(agent=st.agent, energy_j_per_token=st.energy_j_per_token, price_per_kwh=st.price_per_kwh)
        tokens = usage.prompt_tokens + usage.completion_tokens
        return {"edge": round(edge_cost(view, tokens), 9),
                "energy_j": round(st.energy_j_per_token * tokens, 4)}

    def _publish_final_fn(self, key: str, device: str, job_id: str, final: dict[str, Any],
                          response_topic: str | None, correlation: str | None) -> Callable[[], None]:
        body = orjson.dumps(final)
        topic = self.topics.results(device, job_id)

        def publish() -> None:
            delivery = self.session.publish(topic, body, qos=1)
            if response_topic and response_topic != topic:
                self.session.publish(response_topic, body, qos=1,
                                     correlation=bytes.fromhex(correlation) if correlation else None)
            self._unconfirmed.append((key, delivery))
        return publish

    def _confirm_deliveries(self, wait_s: float = 0.0) -> None:
        """Mark finals the broker acknowledged, so a restart does not send them again.

        A final published while the broker is away stays queued in the session and is sent on
        reconnect; it is marked once its PUBACK comes, however long that takes."""
        if not self._unconfirmed:
            return
        deadline = time.monotonic() + wait_s
        while True:
            done = [k for k, delivery in self._unconfirmed if delivery.done]
            if len(done) == len(self._unconfirmed) or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        if done:
            with self.ledger.transaction():
                self.ledger.mark_delivered(done)
            confirmed = set(done)
            self._unconfirmed = [(k, d) for k, d in self._unconfirmed if k not in confirmed]

    # ------------------------------------------------------------------ status

    def _publish_status(self, state: str, wait: bool = False) -> None:
        st = CoordinatorStatus(state=state, host=socket.gethostname(), pid=os.getpid(),  # type: ignore[arg-type]
                               policy=self.settings.policy, version=__version__, counters=dict(self.counters),
                               ts=self.clock())
        if wait:
            self.session.publish_wait(self.topics.coordinator_status, encode(st), retain=True)
        else:
            self.session.publish(self.topics.coordinator_status, encode(st), qos=1, retain=True)

    def mesh_status(self) -> MeshStatus:
        views = [v for v in self._views() if v.online]
        queued = [j for j in self.jobs.values() if j.state == "queued"]
        tps = sum(v.decode_tps * v.slots for v in views) or 0.0
        backlog = sum(j.req.max_tokens for j in queued) + sum(v.outstanding_tokens for v in views)
        return MeshStatus(
            agents_online=len(views),
            slots_total=sum(v.slots for v in views),
            slots_free=sum(max(0, v.slots - v.outstanding) for v in views),
            queue_depth=len(queued),
            running=sum(1 for j in self.jobs.values() if j.state in ("assigned", "running")),
            predicted_wait_ms=round(backlog / tps * 1000, 1) if tps else 0.0,
            overloaded=len(queued) >= self.settings.max_queue * 0.8 or (bool(queued) and not views),
            ts=self.clock(),
        )

    def _publish_mesh(self) -> None:
        mono = time.monotonic()
        if mono - self._last_mesh_at < 0.25:
            return
        mesh = self.mesh_status()
        same = self._last_mesh is not None and _strip_ts(self._last_mesh) == _strip_ts(mesh)
        if same and mono - self._last_mesh_at < self.settings.status_interval_s:
            return
        self._last_mesh, self._last_mesh_at = mesh, mono
        self.session.publish(self.topics.mesh_status, encode(mesh), qos=1, retain=True)
        self._publish_status("online")  # its counters and timestamp are the coordinator's heartbeat


def _strip_ts(m: MeshStatus) -> tuple[Any, ...]:
    return (m.agents_online, m.slots_total, m.slots_free, m.queue_depth, m.running, m.overloaded)


def _peek_id(raw: bytes) -> str | None:
    """The device's job id from a prompt that failed validation, when there is a usable one."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) and is_valid_id(value) else None


EXPLAIN_CANDIDATES = 8  # candidates kept per decision; the rest are counted by reason


def _explain(d: Decision) -> dict[str, Any]:
    """The decision as the ledger keeps it for `fogmesh explain`: the chosen agent and the best
    few candidates in full, the others counted by why they lost (a site may have 1,000 agents)."""
    ranked = sorted(d.candidates, key=lambda c: (c.agent != d.agent, not c.eligible, c.completion_s, c.agent))
    shown, rest = ranked[:EXPLAIN_CANDIDATES], ranked[EXPLAIN_CANDIDATES:]
    others: dict[str, int] = {}
    for c in rest:
        others[c.reason] = others.get(c.reason, 0) + 1
    return {
        "policy": d.policy, "target": d.target, "agent": d.agent, "reason": d.reason,
        "predicted_ms": round(d.predicted_s * 1000, 1), "at_risk": d.at_risk,
        "cost": {"edge": round(d.cost, 9)},
        "candidates": [
            {"agent": c.agent, "eligible": c.eligible, "reason": c.reason, "wait_ms": round(c.wait_s * 1000, 1),
             "completion_ms": round(c.completion_s * 1000, 1), "cost": round(c.cost, 9),
             "meets_deadline": c.meets_deadline, "has_room": c.has_room}
            for c in shown
        ],
        "other_candidates": others,
    }
