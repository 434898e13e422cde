"""The bridge: jobs the coordinator routes to the cloud go to SQS; answers come back to the coordinator.

    coordinator --MQTT cloud/requests--> bridge --outbox (SQLite)--> SQS request queue --> cloud worker
    coordinator <--MQTT cloud/events---- bridge <-- SQS result queue (this site's) <------ cloud worker

Requests are durable in the outbox before their MQTT message is acknowledged.
Results are handed to the coordinator (which publishes the device's one final
message) and deleted from SQS only after the broker acknowledged that hand-over;
the outbox remembers what was handed on, so a redelivery is dropped.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

import msgspec

from broker.runtime.daemon import Daemon
from broker.runtime.logs import kv
from broker.runtime.mqtt import Message, Session
from cloud_bridge.errors import CloudError, CloudUnreachable
from cloud_bridge.outbox import Outbox
from cloud_bridge.queue import CloudQueue, Outgoing, SqsQueue
from cloud_bridge.settings import BridgeSettings
from schemas import DecodeError, decode, encode
from schemas.messages import CloudRequest, CloudResult, ErrorInfo
from schemas.status import BridgeStatus
from schemas.topics import Topics

log = logging.getLogger("fogmesh.bridge")


def failpoint(name: str) -> None:
    """Fault injection for the fault tests: ``FOGMESH_FAILPOINT=name`` kills the process here."""
    if os.environ.get("FOGMESH_FAILPOINT") == name:
        log.warning(kv("failpoint", name=name))
        os.kill(os.getpid(), signal.SIGKILL)


class Bridge(Daemon):
    name, stopped_event = "bridge", "bridge_stopped"

    def __init__(self, settings: BridgeSettings, queue: CloudQueue | None = None) -> None:
        super().__init__(settings, {"received": 0, "sent": 0, "answered": 0, "duplicates": 0, "expired": 0,
                                    "failed": 0, "bad_messages": 0})
        self.settings = settings
        self.topics = Topics(settings.site)
        self.outbox = Outbox(settings.outbox)
        self.queue = queue or SqsQueue(settings.endpoint_url or None, settings.region or None, settings.bucket,
                                       settings.max_message_bytes)
        self.reachable = False
        self._urls: dict[str, str] = {}
        self._wake = threading.Event()
        self._dlq_depth = 0
        self._threads: list[threading.Thread] = []
        will = BridgeStatus(state="offline", host=socket.gethostname(), pid=os.getpid())
        self.session = Session(settings.address(), f"fogmesh-bridge-{settings.site}",
                               self._on_message, will=(self.topics.bridge_status, encode(will)),
                               keepalive_s=settings.keepalive_s, manual_ack=True)
        self.metrics.gauge("outbox_depth", "Jobs waiting in the outbox to be sent", lambda: self.outbox.depth()[0])
        self.metrics.gauge("outbox_oldest_seconds", "Age of the oldest job in the outbox",
                           lambda: self.outbox.depth()[1])
        self.metrics.gauge("cloud_reachable", "1 while the queue service answers", lambda: self.reachable)
        self.metrics.gauge("dead_letter_queue_depth", "Messages in the dead-letter queues", lambda: self._dlq_depth)
        self.metrics.reconnects(lambda: self.session.reconnects)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.session.start()
        self.session.subscribe(self.topics.cloud_requests, qos=1)
        self._threads = [threading.Thread(target=self._guard, args=(fn,), name=fn.__name__, daemon=True)
                         for fn in (self._send_loop, self._receive_loop, self._status_loop)]
        for t in self._threads:
            t.start()
        log.info(kv("bridge_online", broker=self.session.address.url, site=self.settings.site,
                     endpoint=self.settings.endpoint_url or "aws", outbox=self.settings.outbox))

    def ready(self) -> str:
        return f"bridge of site {self.settings.site} to {self.settings.endpoint_url or 'AWS'}"

    def serve(self) -> None:
        self._stop.wait()  # the status loop is what shows the bridge alive

    def stop(self) -> None:
        for t in self._threads:
            t.join(timeout=self.settings.wait_s + 5)
        self.publish_status("offline", wait=True)
        self.session.stop()
        self.outbox.close()
        self._wake.set()

    def _guard(self, loop: Callable[[], None]) -> None:
        """Run one pass of ``loop`` after another until stopped; a failing pass is logged, not fatal."""
        while not self._stop.is_set():
            try:
                loop()
            except Exception:
                log.exception(kv("bridge_loop_failed", loop=loop.__name__))
                self._stop.wait(1.0)

    # ------------------------------------------------------------------ MQTT -> outbox

    def _on_message(self, msg: Message) -> None:
        req = msg.decoded(CloudRequest, log, "request_invalid", logging.ERROR)
        if req is None:
            self.session.ack(msg)
            return
        if self.outbox.add(req.key, req.attempt, msg.payload, req.offline_ok, req.deadline_at):
            self.counters["received"] += 1
            log.info(kv("job_outboxed", job=req.key, attempt=req.attempt, offline_ok=req.offline_ok))
        self.session.ack(msg)  # only now: the outbox row is committed
        self._wake.set()

    # ------------------------------------------------------------------ outbox -> SQS

    def _ensure_queues(self) -> None:
        s = self.settings
        if "requests" not in self._urls:
            self._urls["requests"] = self.queue.ensure(s.request_queue(), s.request_queue() + "-dlq",
                                                       s.max_receives, s.visibility_s, s.fifo)
            self._urls["results"] = self.queue.ensure(s.result_queue(s.site), s.result_queue(s.site) + "-dlq",
                                                      s.max_receives, 30, False)
            self._urls["results_dlq"] = self.queue.url(s.result_queue(s.site) + "-dlq")
            self._urls["requests_dlq"] = self.queue.url(s.request_queue() + "-dlq" + (".fifo" if s.fifo else ""))
            self.queue.ensure_bucket()

    def _set_reachable(self, ok: bool, why: str = "") -> None:
        if ok != self.reachable:
            self.reachable = ok
            if ok:
                log.info(kv("cloud_reachable", endpoint=self.settings.endpoint_url or "aws"))
            else:
                log.warning(kv("cloud_unreachable", endpoint=self.settings.endpoint_url or "aws", reason=why))
                self._urls.clear()  # an SQS-compatible server that restarted may have lost its queues
            self.publish_status("online")

    def _send_loop(self) -> None:
        self._wake.wait(0.5)
        self._wake.clear()
        self._expire()
        rows = self.outbox.pending(50)
        if not rows:
            return
        try:
            self._ensure_queues()
            items = []
            for row in rows:
                req = decode(row["body"], CloudRequest)
                body = encode(_with_reply(req, self._urls["results"]))
                body = self.queue.wrap(body, f"{self.settings.queue_prefix}/{req.site}/{req.key}/{req.attempt}.json")
                items.append(Outgoing(id=str(row["seq"]), body=body, group=req.device,
                                      dedup=f"{req.key}#{req.attempt}".replace("/", "_"),
                                      attributes={"site": req.site, "job": req.key, "priority": str(req.priority)}))
            accepted = self.queue.send(self._urls["requests"], items)
        except CloudUnreachable as exc:
            self._set_reachable(False, str(exc))
            self._stop.wait(1.0)
            return
        except CloudError as exc:
            log.error(kv("cloud_send_failed", reason=str(exc)))
            self._stop.wait(1.0)
            return
        self._set_reachable(True)
        self.outbox.set_state([int(a) for a in accepted], "sent")
        self.counters["sent"] += len(accepted)
        for row in rows:
            if str(row["seq"]) in accepted:
                log.info(kv("job_sent_to_cloud", job=row["key"], attempt=row["attempt"]))
        if len(rows) == 50:
            self._wake.set()

    def _expire(self) -> None:
        """Enforce the outbox's bounds while the cloud is away."""
        s, now = self.settings, time.time()
        rows = self.outbox.pending(100_000) if not self.reachable else []
        over = max(0, sum(1 for r in rows if r["offline_ok"]) - s.outbox_max_jobs)
        gone: list[tuple[dict[str, object], str, str]] = []
        for row in rows:
            age = now - float(row["created_at"])
            past_deadline = row["deadline_at"] is not None and now >= float(row["deadline_at"])
            if row["offline_ok"]:
                if over > 0 or age > s.outbox_max_age_s or past_deadline:
                    over -= 1
                    gone.append((row, "expired", "the cloud stayed unreachable past the outbox's bounds"))
            elif age > s.send_timeout_s or past_deadline:
                gone.append((row, "failed", f"the cloud was unreachable for {age:.0f} s"))
        for row, kind, why in gone:
            req = decode(row["body"], CloudRequest)  # type: ignore[arg-type]
            result = CloudResult(key=req.key, attempt=req.attempt, kind=kind, node="bridge",  # type: ignore[arg-type]
                                 error=ErrorInfo(code="cloud_unreachable", message=why))
            if self.session.publish_wait(self.topics.cloud_events, encode(result)):
                self.outbox.set_state([int(str(row["seq"]))], kind)
                self.counters[kind] += 1
                log.warning(kv("job_" + kind, job=req.key, reason=why))

    # ------------------------------------------------------------------ SQS -> coordinator

    def _receive_loop(self) -> None:
        try:
            self._ensure_queues()
            msgs = self.queue.receive(self._urls["results"], 10, self.settings.wait_s,
                                      self.settings.result_visibility_s)
        except CloudUnreachable as exc:
            self._set_reachable(False, str(exc))
            self._stop.wait(1.0)
            return
        self._set_reachable(True)
        for m in msgs:
            failpoint("bridge-after-receive")
            try:
                result = decode(self.queue.unwrap(m.body), CloudResult)
            except (DecodeError, CloudError) as exc:
                # Not deleted: SQS redelivers it up to max_receives, then moves it to the dead-letter queue.
                self.counters["bad_messages"] += 1
                log.error(kv("result_invalid", message_id=m.message_id, receives=m.receive_count,
                             reason=str(exc)[:200]))
                continue
            if self.outbox.delivered(result.key, result.attempt):
                self.counters["duplicates"] += 1
                log.info(kv("result_duplicate", job=result.key, attempt=result.attempt))
                self.queue.delete(self._urls["results"], m.receipt)
                continue
            if not self.session.publish_wait(self.topics.cloud_events, encode(result)):
                log.warning(kv("result_handover_slow", job=result.key))
                continue  # SQS will redeliver after the visibility timeout
            self.outbox.mark_delivered(result.key, result.attempt)
            failpoint("bridge-after-publish")
            self.queue.delete(self._urls["results"], m.receipt)
            self.counters["answered"] += 1
            log.info(kv("result_handed_over", job=result.key, kind=result.kind, node=result.node))

    # ------------------------------------------------------------------ status

    def _status_loop(self) -> None:
        """Probe the queue service (so reachability is known before any job needs it) and publish status."""
        try:
            self._ensure_queues()
            self._dlq_depth = self.queue.depth(self._urls["requests_dlq"]) + self.queue.depth(self._urls["results_dlq"])
            self._set_reachable(True)
        except CloudUnreachable as exc:
            self._set_reachable(False, str(exc))
        except CloudError as exc:
            log.warning(kv("cloud_probe_failed", reason=str(exc)[:200]))
        self.publish_status("online")
        self.notifier.tick()
        self._stop.wait(self.settings.status_interval_s)

    def publish_status(self, state: str, wait: bool = False) -> None:
        depth, oldest = self.outbox.depth()
        s = self.settings
        st = BridgeStatus(state=state, reachable=self.reachable, outbox_depth=depth,  # type: ignore[arg-type]
                          oldest_age_s=round(oldest, 2), dlq_depth=self._dlq_depth, latency_s=s.cloud_latency_s,
                          decode_tps=s.cloud_tps, price_in_per_1k=s.price_in_per_1k,
                          price_out_per_1k=s.price_out_per_1k, models=list(s.cloud_models),
                          workers=s.cloud_workers, in_flight=self.outbox.in_flight(),
                          host=socket.gethostname(), pid=os.getpid(),
                          ts=time.time())
        if wait:
            self.session.publish_wait(self.topics.bridge_status, encode(st), retain=True)
        else:
            self.session.publish(self.topics.bridge_status, encode(st), qos=1, retain=True)


def _with_reply(req: CloudRequest, reply_queue: str) -> CloudRequest:
    return msgspec.structs.replace(req, reply_queue=reply_queue)
