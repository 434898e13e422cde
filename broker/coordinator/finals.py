"""Every way a job ends: its one final message, written to the ledger and then published to the
device; rejections, dead letters, and the prompts no result topic can carry."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from broker.coordinator.context import Core
from broker.coordinator.jobs import Job, new_job_id
from broker.runtime.delivery import Delivery
from broker.runtime.logs import kv
from broker.runtime.mqtt import Message
from schemas import encode, output
from schemas.messages import Control, DeadLetter, ErrorInfo, Final, FinishReason, ServedBy, Status, Usage
from schemas.topics import is_valid_id

log = logging.getLogger("fogmesh.coordinator")


class Finals:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.unconfirmed: list[tuple[str, Delivery]] = []  # finals published, PUBACK not yet seen

    def finish(self, job: Job, status: Status, *, text: str = "", usage: Usage | None = None,
               agent_timings: dict[str, float] | None = None, served_by: ServedBy | None = None,
               error: ErrorInfo | None = None, cost: dict[str, float] | None = None,
               finish_reason: FinishReason | None = None) -> None:
        c = self.core
        now = c.clock()
        answer = None
        if status == "done" and job.req.wants_json:
            try:  # the agent or cloud worker checked it; the device gets nothing that was not checked here too
                answer = output.parse(text, finish_reason, job.req.response_format)
            except output.OutputError as exc:
                status, error = "error", ErrorInfo(code=exc.code, message=exc.message)
        if status == "cancelled":
            finish_reason = "cancelled"
        if status in ("cancelled", "expired") and job.agent:
            self.send_cancel(job)
        timings = dict(agent_timings or {})
        timings["total_ms"] = round((now - job.created_at) * 1000, 2)
        if job.started_at:
            timings["queue_ms"] = round((job.started_at - job.created_at) * 1000, 2)
        if job.decision and "predicted_ms" in job.decision:  # the latest placement's: from decided_ms on
            timings["predicted_ms"] = job.decision["predicted_ms"]
            timings["decided_ms"] = job.decision.get("decided_ms", 0.0)
        final = Final(job=job.job, status=status, text=text, served_by=served_by, usage=usage,
                      timings=timings, error=error, cost=cost if status == "done" else None,
                      finish_reason=finish_reason if status in ("done", "cancelled") and job.req.extended else None,
                      json=answer)
        c.jobs.remove(job)
        body = encode(final)
        detail = {"error": error.code} if error else None
        if status == "rejected" and job.decision:  # refused as infeasible: the decision says why
            detail = {**job.decision, **(detail or {})}
        c.ledger.update(job.key, status, detail, final=body.decode(), delivered=0)
        c.count(status)
        tier = served_by.tier if served_by else "none"
        c.stats.record(now, job.key, status, tier, node=served_by.node if served_by else "",
                       code=error.code if error else "", tokens=usage.completion_tokens if usage else 0,
                       latency_ms=timings["total_ms"], ttft_ms=timings.get("ttft_ms"),
                       cloud_spend=(cost or {}).get("cloud", 0.0) if status == "done" else 0.0)
        self.measure(job, status, served_by, timings, final.cost)
        if status == "done" and usage is not None:
            c.lengths.record(c.length_key(job.req.model), job.device, usage.completion_tokens,
                             cut_off=finish_reason == "length")
        if log.isEnabledFor(logging.INFO):
            log.info(kv("job_" + status, job=job.key, node=served_by.node if served_by else None,
                        total_ms=timings["total_ms"], tokens=usage.completion_tokens if usage else None,
                        code=error.code if error else None))
        self.publish(job.key, job.device, job.job, body, job.response_topic, job.correlation)

    def measure(self, job: Job, status: Status, served_by: ServedBy | None, timings: dict[str, float],
                cost: dict[str, float] | None) -> None:
        c = self.core
        tier = served_by.tier if served_by else "none"
        model = self.model(job, served_by)
        c.m.finals.labels(status, tier, model).inc()
        if status != "done":
            return
        c.m.latency.labels(tier, model).observe(timings["total_ms"] / 1000)
        if "ttft_ms" in timings:
            c.m.ttft.labels(tier, model).observe(timings["ttft_ms"] / 1000)
        if timings.get("decode_tps"):
            c.m.tps.labels(tier, model).observe(timings["decode_tps"])
        if cost:
            c.m.spend.labels(tier, model).inc(cost.get(tier, 0.0))
            c.m.energy.labels(model).inc(cost.get("energy_j", 0.0))

    def model(self, job: Job, served_by: ServedBy | None) -> str:
        """The metrics' ``model``: the one the job asked for, if some tier holds it (a device's made-up
        name must not become a series of its own), else the default model of the agent that served it."""
        c = self.core
        known = c.registry.agents.get(served_by.node) if served_by and served_by.tier == "edge" else None
        asked = job.req.model
        if asked and (asked in c.cloud.models or (known and asked in known.models) or asked in c.registry.models()):
            return asked
        if known and known.status.models:
            return known.status.models[0].name
        return "default" if served_by else "none"

    def publish(self, key: str, device: str, job_id: str, body: bytes, response_topic: str | None,
                correlation: str | None) -> None:
        """The final on the device's result topic (its delivery tracked), and on its Response Topic.

        At QoS 2: a final the broker took but whose acknowledgement a dropped connection lost is
        sent again on reconnect, and at QoS 1 the broker would pass that copy on as a second final;
        at QoS 2 the session's packet id tells it the copy is one it already has."""
        c = self.core
        topic = c.topics.results(device, job_id)
        c.pending.publish(topic, body, final_of=key, qos=2)
        if response_topic and response_topic != topic:
            c.pending.publish(response_topic, body, correlation=bytes.fromhex(correlation) if correlation else None,
                              qos=2)

    def resend(self, row: dict[str, Any]) -> None:
        """A final the ledger holds whose delivery the broker never acknowledged (at restart)."""
        req = orjson.loads(row["request"])
        self.publish(row["key"], row["device"], row["job"], row["final"].encode(), req.get("response_topic"),
                     req.get("correlation"))

    def reject(self, device: str, job_id: str | None, code: str, message: str, msg: Message) -> None:
        """Answer a prompt that was not accepted. A rejection does not hold on to its id: the device
        may send a corrected prompt, or retry after ``overloaded``, under the same id."""
        c = self.core
        job_id = job_id if job_id and is_valid_id(job_id) else new_job_id()
        key = f"{device}/{job_id}"
        stored = None if key in c.jobs else c.ledger.get(key)
        if key in c.jobs or (stored is not None and stored["state"] != "rejected"):
            # A bad copy under the id of an accepted job: its rejection on that job's topic would be
            # a second final there, and a device that stops at the first would lose the real answer.
            self.unanswered("id_in_use", device, msg, f"{code}: {message} (job id {job_id!r} is taken by an "
                            "accepted job, whose answer goes to its result topic)", job_id)
            return
        final = Final(job=job_id, status="rejected", error=ErrorInfo(code=code, message=message))
        corr = msg.correlation.hex() if msg.correlation else None
        request = orjson.dumps({"raw": msg.payload[:512].decode("utf-8", "replace"),
                                "response_topic": msg.response_topic, "correlation": corr}).decode()
        body = encode(final)
        c.ledger.insert({"key": key, "device": device, "job": job_id, "state": "rejected",
                         "request": request, "created_at": c.clock(), "final": body.decode()},
                        {"code": code, "message": message})
        c.count("rejected")
        c.stats.record(c.clock(), key, "rejected", "none", code=code)
        c.m.finals.labels("rejected", "none", "none").inc()
        c.m.rejections.labels(code).inc()
        log.info(kv("job_rejected", job=key, code=code, detail=message))
        self.publish(key, device, job_id, body, msg.response_topic, corr)

    def unanswered(self, reason: str, device: str, msg: Message, detail: str, job_id: str | None = None) -> None:
        """A prompt that no result topic can carry an answer for: counted, logged and, when it names
        a job, kept in the ledger (under a key of its own) so that ``fogmesh explain`` finds it."""
        c = self.core
        c.count("unanswered")
        c.m.unanswered.labels(reason).inc()
        log.warning(kv("prompt_unanswered", reason=reason, device=repr(device[:64]), topic=repr(msg.topic[:160]),
                       detail=detail))
        if job_id is not None:
            request = orjson.dumps({"raw": msg.payload[:512].decode("utf-8", "replace")}).decode()
            key = f"{device}/{job_id}!{new_job_id()}"
            c.ledger.insert({"key": key, "device": device, "job": job_id, "state": "rejected",
                             "request": request, "created_at": c.clock(), "delivered": 1},
                            {"code": reason, "message": detail})

    def give_up(self, job: Job, error: ErrorInfo) -> None:
        """End a job in ``error`` and leave a dead letter for the operators."""
        c = self.core
        agents = sorted(job.exclude | ({job.agent} if job.agent else set()))
        self.finish(job, "error", error=error)
        c.m.dead_letters.inc()
        letter = DeadLetter(key=job.key, device=job.device, job=job.job, attempts=job.attempt, agents=agents,
                            error=error, ts=c.clock())
        c.ledger.note(job.key, "dead_letter", orjson.loads(encode(letter)))
        c.pending.publish(c.topics.deadletter(job.device, job.job), encode(letter))

    def send_cancel(self, job: Job) -> None:
        """Tell the job's agent to stop it (a requeue, an expiry, the device's cancel)."""
        if job.agent:
            ctl = Control(cancel=job.key, attempt=max(job.attempt, 1))
            self.core.pending.publish(self.core.topics.control(job.agent), encode(ctl))

    def record_deliveries(self, wait_s: float = 0.0) -> None:
        """Mark finals the broker acknowledged, so a restart does not send them again.

        A final published while the broker is away stays queued in the session and is sent on
        reconnect; it is marked once its PUBACK comes, however long that takes."""
        deadline = time.monotonic() + wait_s
        while any(not d.done for _, d in self.unconfirmed) and time.monotonic() < deadline:
            time.sleep(0.01)
        done: list[tuple[str, Delivery]] = []
        waiting: list[tuple[str, Delivery]] = []
        for key, delivery in self.unconfirmed:  # one pass: a PUBACK landing meanwhile is not lost
            (done if delivery.done else waiting).append((key, delivery))
        if done:
            self.unconfirmed = waiting
            with self.core.ledger.transaction():
                self.core.ledger.mark_delivered([key for key, _ in done])
