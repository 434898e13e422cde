"""The coordinator: takes prompts, keeps the agents' view, assigns jobs, answers devices.

One thread owns all state. paho's network thread only hands messages to an inbox; the loop
takes a batch, applies it in one ledger transaction (group commit), and only then acts:
publishes assignments and final messages and acknowledges the prompts. A prompt is therefore
acknowledged to the broker only once it is durable, and a coordinator killed at any point
resumes from the ledger and the broker's persistent session.

A job's story, module by module: ``admission`` makes it (or rejects it), ``dispatch`` places
it on an agent the ``scheduler`` picks or ``cloud`` offloads it, ``edge`` follows what its agent
says (and requeues it when the agent goes), ``finals`` ends it with one final message.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import socket
import time
from collections.abc import Callable
from typing import Any

from broker.coordinator.admission import Admission
from broker.coordinator.cloud import Cloud
from broker.coordinator.context import Core
from broker.coordinator.dispatch import Dispatcher
from broker.coordinator.edge import Edge
from broker.coordinator.explain import answer as explain
from broker.coordinator.finals import Finals
from broker.coordinator.homeassistant import site_discovery
from broker.coordinator.inbox import Inbox
from broker.coordinator.jobs import Job
from broker.coordinator.ledger import Ledger
from broker.coordinator.settings import CoordinatorSettings
from broker.coordinator.status import StatusBoard
from broker.coordinator.timeouts import Timeouts
from broker.runtime import __version__
from broker.runtime.daemon import Daemon
from broker.runtime.logs import kv
from broker.runtime.mqtt import Message, Session
from schemas import encode
from schemas.status import CoordinatorStatus

log = logging.getLogger("fogmesh.coordinator")
BEHIND_S = 1.0  # an inbox this far behind means silence cannot be judged yet
PRUNE_EVERY_S = 10.0  # a flood's worth of finished jobs goes in a few passes of 5,000
BATCH = 512  # messages per transaction
SUBSCRIPTIONS = ("prompts", "cancel", "events", "agent_status", "explain", "bridge_status", "cloud_events")


class Coordinator(Daemon):
    name, stopped_event = "coordinator", "coordinator_stopped"

    def __init__(self, settings: CoordinatorSettings, clock: Callable[[], float] = time.time,
                 session: Any = None, ledger: Ledger | None = None) -> None:
        """``session`` and ``ledger``: given by a test (an in-memory session, say), else the real ones."""
        super().__init__(settings, {"accepted": 0, "assigned": 0, "reassigned": 0, "done": 0, "rejected": 0,
                                    "cancelled": 0, "expired": 0, "error": 0, "duplicates": 0, "unanswered": 0})
        self.core = core = Core(settings, ledger or Ledger(settings.ledger, settings.ledger_sync), self.counters,
                                self.metrics, clock)
        self.settings, self.topics, self.ledger, self.registry = settings, core.topics, core.ledger, core.registry
        self.jobs, self.m = core.jobs, core.m
        self.finals = Finals(core)
        self.admission = Admission(core, self.finals)
        self.edge = Edge(core, self.finals)
        self.cloud = Cloud(core, self.finals)
        self.dispatcher = Dispatcher(core, self.cloud, self.finals)
        self.timeouts = Timeouts(core, self.edge, self.finals)
        self.status = StatusBoard(core, self.dispatcher.views)
        self._inbox = Inbox()  # None in it: a PUBACK arrived, wake up
        self._last_scan = self._last_prune = self._warned_behind = 0.0
        if session is None:
            will = CoordinatorStatus(state="offline", host=socket.gethostname(), pid=os.getpid(),
                                     policy=settings.policy, version=__version__)
            session = Session(settings.address(), client_id=f"fogmesh-coordinator-{settings.site}",
                              on_message=self._inbox.put, will=(self.topics.coordinator_status, encode(will)),
                              keepalive_s=settings.keepalive_s, manual_ack=True)
        self.session = session
        # a PUBACK for a final wakes the loop, so its delivery is recorded at once: a coordinator
        # killed after the broker took a final re-sends it on restart only inside this short window
        session.set_on_delivered(self._inbox.wake)
        self.status.gauges(lambda: self.session.reconnects)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._recover()
        # What is loaded by now (modules, a recovered backlog: 100,000 jobs) lives as long as the
        # process: out of the collector's full scans, which otherwise walk it all again and again
        # (collected first, so that no garbage of the recovery is kept for good).
        gc.collect()
        gc.freeze()
        self.session.start()
        for name in SUBSCRIPTIONS:
            topic = getattr(self.topics, name)
            self.session.subscribe(topic() if callable(topic) else topic, qos=1)
        self.status.publish(self.session, "online")
        if self.settings.ha_discovery:
            self.session.publish(*site_discovery(self.settings.site, self.settings.ha_prefix), qos=1, retain=True)
        log.info(kv("coordinator_online", broker=self.session.address.url, site=self.settings.site,
                    policy=self.settings.policy, ledger=self.ledger.path, open_jobs=len(self.jobs)))

    def ready(self) -> str:
        return f"coordinator of site {self.settings.site}, policy {self.settings.policy}"

    def serve(self) -> None:
        while not self.stopping:
            self.step(timeout_s=0.1)
            self.alive()

    def stop(self) -> None:
        self.finals.record_deliveries(wait_s=2.0)
        self.status.publish(self.session, "offline", wait=True)
        self.session.stop()
        self.ledger.close()

    def _recover(self) -> None:
        """Rebuild live jobs from the ledger; re-send finals the broker never acknowledged."""
        now_mono = time.monotonic()
        for row in self.ledger.open_jobs():
            self.jobs.add(Job.recovered(row, now_mono))
        for row in self.ledger.undelivered():
            self.finals.resend(row)

    # ------------------------------------------------------------------ the loop

    def step(self, timeout_s: float = 0.1) -> int:
        """Take a batch from the inbox, apply it in one transaction, then act. Returns messages handled."""
        batch: list[Message | None] = []
        try:
            # a dispatch pass cut short by its time budget goes on at once, not after a wait
            batch.append(self._inbox.get(timeout=0.0 if self.dispatcher.pending else timeout_s))
            while len(batch) < BATCH:
                batch.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        with self.ledger.transaction():
            for msg in batch:
                if msg is not None:
                    self._handle(msg)
            self._tick()
        self.finals.unconfirmed += self.core.pending.flush(self.session)
        self.finals.record_deliveries()
        self.status.publish_mesh(self.session)
        return len(batch)

    def _handle(self, msg: Message) -> None:
        try:
            kind, *rest = self.topics.parse(msg.topic)
            if kind == "prompts" and len(rest) == 1:
                self.admission.on_prompt(rest[0], msg)
            elif kind == "cancel" and len(rest) == 1:
                self.admission.on_cancel(rest[0], msg)
            elif kind == "agents" and rest[-1] == "status":
                self.edge.on_status(msg)
            elif kind == "agents" and rest[-1] == "events":
                self.edge.on_event(msg)
            elif kind == "coordinator" and rest == ["explain"]:
                explain(self.core, msg)
            elif kind == "bridge" and rest == ["status"]:
                self.cloud.on_bridge_status(msg)
            elif kind == "cloud" and rest == ["events"]:
                self.cloud.on_event(msg)
        except Exception:  # one bad message must never stop the coordinator
            log.exception(kv("message_failed", topic=msg.topic))
        self.core.pending.ack(msg)

    # ------------------------------------------------------------------ time

    def _tick(self) -> None:
        now, mono = self.core.clock(), time.monotonic()
        if mono - self._last_scan >= 0.1:  # the scan of every live job runs at most 10 times a second
            self._last_scan = mono
            self._scan(now, mono)
        if mono - self._last_prune >= PRUNE_EVERY_S:
            self._last_prune = mono
            self._prune(now)
        self.dispatcher.run(now, mono)

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
        """Deadlines passed, heartbeats lapsed, assignments never accepted (``timeouts.py``); silence
        is judged only while the loop keeps up with its inbox."""
        behind = self._behind_s()
        judge = behind < BEHIND_S
        if not judge and mono - self._warned_behind > 10:
            self._warned_behind = mono
            log.warning(kv("coordinator_behind", behind_s=behind, inbox=self._inbox.qsize(),
                           detail="heartbeat and acceptance timeouts wait until the inbox is worked off"))
        self.timeouts.scan(now, mono, judge)
