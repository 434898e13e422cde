"""Admission: a device's prompt becomes a job, or a precise rejection; a cancel ends a job.

Checks run cheapest first (the topic, the Response Topic, the size, then the JSON and its
fields, the site's limits, the model, the id, the queue) and a prompt is accepted only by
writing it to the ledger, inside the batch's transaction, before the broker gets its PUBACK.
"""

from __future__ import annotations

import dataclasses
import logging

import orjson

from broker.coordinator.context import Core
from broker.coordinator.finals import Finals
from broker.coordinator.jobs import Job, new_job_id
from broker.runtime.logs import kv
from broker.runtime.mqtt import Message
from schemas import DecodeError, decode, output
from schemas.messages import Cancel, ErrorInfo, Prompt
from schemas.request import rejection_code
from schemas.topics import is_valid_id

log = logging.getLogger("fogmesh.coordinator")


class Admission:
    def __init__(self, core: Core, finals: Finals) -> None:
        self.core = core
        self.finals = finals

    def on_prompt(self, device: str, msg: Message) -> None:
        c, reject = self.core, self.finals.reject
        if not is_valid_id(device):
            self.finals.unanswered("bad_device_id", device, msg,
                                   "the device id in the topic must be 1-128 characters of letters, digits and "
                                   "_ . : @ -; no result topic can be built for it")
            return
        problem = c.topics.response_topic_problem(device, msg.response_topic)
        if problem:
            reject(device, peek_id(msg.payload), "bad_response_topic", problem,
                   dataclasses.replace(msg, response_topic=None))
            return
        if len(msg.payload) > c.settings.max_prompt_bytes:
            reject(device, None, "too_large", f"prompt payload is {len(msg.payload)} bytes; this site accepts "
                   f"at most {c.settings.max_prompt_bytes}", msg)
            return
        try:
            req = decode(msg.payload, Prompt)
        except DecodeError as exc:
            reject(device, peek_id(msg.payload), rejection_code(exc), exc.message, msg)
            return
        unfit = request_problem(req)
        if unfit:
            reject(device, req.id, *unfit, msg)
            return
        if req.max_tokens > c.settings.max_tokens_limit:
            reject(device, req.id, "max_tokens_too_large", f"max_tokens {req.max_tokens} is over this site's "
                   f"limit of {c.settings.max_tokens_limit}", msg)
            return
        model = req.model or c.settings.default_model or None
        known = c.registry.models()
        cloud_may = c.cloud.enabled and req.privacy != "edge-only"
        if model and known and model not in known and not (cloud_may and model in c.cloud.models):
            reject(device, req.id, "unknown_model",
                   f"no agent on this site holds model {model!r}; known: {', '.join(sorted(known))}", msg)
            return
        if req.is_chat and known and (model or "") not in c.registry.chat_models() and not cloud_may:
            reject(device, req.id, "chat_unsupported", f"no agent on this site can render chat messages for "
                   f"{'model ' + repr(model) if model else 'its default model'} (no chat template); send `prompt` "
                   "instead, or configure agent.chat_formats", msg)
            return
        job_id = req.id or new_job_id()
        key = f"{device}/{job_id}"
        if key in c.jobs:
            c.count("duplicates")
            log.info(kv("prompt_duplicate", job=key, state=c.jobs[key].state))
            return
        done = c.ledger.get(key)
        if done is not None and done["state"] != "rejected":  # answered: the same answer again, not a second run
            c.count("duplicates")
            self.finals.publish(key, device, job_id, (done["final"] or "{}").encode(), msg.response_topic,
                                msg.correlation.hex() if msg.correlation else None)
            return
        queued = len(c.jobs.waiting)
        if queued >= c.settings.max_queue:
            reject(device, job_id, "overloaded", f"the site's queue is full ({queued} jobs waiting); retry later",
                   msg)
            return
        if c.jobs.held_bytes + len(msg.payload) > c.settings.max_queue_bytes:
            reject(device, job_id, "overloaded", f"the site holds {c.jobs.held_bytes} bytes of prompts, its limit "
                   f"is {c.settings.max_queue_bytes}; retry later", msg)
            return
        self.accept(device, job_id, req, msg)

    def accept(self, device: str, job_id: str, req: Prompt, msg: Message) -> None:
        c = self.core
        now = c.clock()
        deadline = now + req.deadline_ms / 1000 if req.deadline_ms else None
        if msg.expiry_s:
            expiry = msg.received_at + msg.expiry_s
            deadline = min(deadline, expiry) if deadline else expiry
        job = Job(key=f"{device}/{job_id}", device=device, job=job_id, req=req, created_at=now,
                  deadline_at=deadline, response_topic=msg.response_topic,
                  correlation=msg.correlation.hex() if msg.correlation else None, size=len(msg.payload))
        c.jobs.add(job)
        c.ledger.insert({"key": job.key, "device": device, "job": job_id, "state": "queued",
                         "priority": req.priority, "request": job.request_row(), "created_at": now,
                         "deadline_at": deadline})
        c.count("accepted")
        if deadline is not None:
            c.admitted.append(job.key)  # the next dispatch pass checks it can be met
        if log.isEnabledFor(logging.INFO):  # a line per job: not even built when it is not written
            log.info(kv("job_accepted", job=job.key, max_tokens=req.max_tokens, priority=req.priority))

    def on_cancel(self, device: str, msg: Message) -> None:
        cancel = msg.decoded(Cancel, log, "cancel_invalid", device=device)
        if cancel is None:
            return
        job = self.core.jobs.get(f"{device}/{cancel.id}")
        if job is None:
            log.info(kv("cancel_unknown", job=f"{device}/{cancel.id}"))
            return
        self.finals.finish(job, "cancelled", error=ErrorInfo(code="cancelled", message="cancelled by the device"))


def request_problem(req: Prompt) -> tuple[str, str] | None:
    """(code, message) for a well-typed request that still cannot be run as asked."""
    if req.prompt is not None and not req.prompt.strip():
        return "empty_prompt", "prompt is empty or only whitespace"
    if req.messages is not None and not any(m.content.strip() for m in req.messages):
        return "empty_prompt", "every message's content is empty or only whitespace"
    try:
        output.check(req.response_format)
    except output.OutputError as exc:
        return exc.code, exc.message
    return None


def peek_id(raw: bytes) -> str | None:
    """The device's job id from a prompt that failed validation, when there is a usable one."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) and is_valid_id(value) else None
