"""The gateway's side of MQTT: the site's device ``<device_id>``, and the statuses /v1/models reads.

One session carries everything (prompts, cancels, results, retained statuses): a production broker
binds the client id to the user name, so a second connection of the gateway's user would push the
first off. Results arrive on paho's thread and are handed to the event loop of the HTTP request
that waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from broker.gateway.errors import ApiError, ClientGone
from broker.gateway.settings import GatewaySettings
from broker.runtime.logs import kv
from broker.runtime.mqtt import Message, Publisher, Session
from schemas import DecodeError, encode
from schemas.codec import convert
from schemas.errors import TopicError
from schemas.messages import Cancel, Chunk, Final, Prompt
from schemas.status import AgentStatus, BridgeStatus, CoordinatorStatus
from schemas.topics import Topics

log = logging.getLogger("fogmesh.gateway")
Result = Chunk | Final
PUBACK_TIMEOUT_S = 5.0


class Relay:
    """The gateway as one device of the site: it publishes each job's prompt and, if need be, its
    cancel, and routes the job's chunks and final to the request waiting for them."""

    def __init__(self, settings: GatewaySettings, session: Publisher | None = None) -> None:
        self.settings = settings
        self.topics = Topics(settings.site)
        self.device = settings.device_id
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Result]]] = {}
        self._agents: dict[str, AgentStatus] = {}
        self._bridge: BridgeStatus | None = None
        self._coordinator: CoordinatorStatus | None = None
        self.session: Any = session or Session(
            settings.address(), f"fogmesh-gateway-{settings.site}-{self.device}", self._on_message,
            keepalive_s=settings.keepalive_s)

    def start(self) -> None:
        """Connect (BrokerUnavailable, saying why, if it cannot) and subscribe."""
        self.session.start()
        t = self.topics
        for topic in (t.results(self.device), t.agent_status(), t.bridge_status, t.coordinator_status):
            self.session.subscribe(topic, qos=1)

    def stop(self) -> None:
        self.session.stop()

    @property
    def connected(self) -> bool:
        return bool(self.session.connected)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._waiting)

    def call(self, job: str) -> Call:
        """Start waiting for ``job``'s results (from the request's event loop), before its prompt goes out."""
        return Call(self, job, self._register(job))

    # ------------------------------------------------------------------ what the site says

    def models(self) -> list[dict[str, Any]]:
        """The models online agents hold, then those the cloud tier answers to (OpenAI's model objects)."""
        with self._lock:
            agents = [a for a in self._agents.values() if a.state == "online"]
            bridge = self._bridge
        found: dict[str, dict[str, Any]] = {}
        for agent in sorted(agents, key=lambda a: a.agent):
            for m in agent.models:
                entry = found.setdefault(m.name, {"id": m.name, "object": "model", "created": agent.epoch // 1000,
                                                  "owned_by": "fogmesh", "fogmesh": {"tier": "edge", "agents": [],
                                                                                     "chat": False}})
                entry["fogmesh"]["agents"].append(agent.agent)
                entry["fogmesh"]["chat"] |= m.chat
        if bridge is not None and bridge.state == "online":
            for name in bridge.models:
                found.setdefault(name, {"id": name, "object": "model", "created": int(bridge.ts),
                                        "owned_by": "fogmesh", "fogmesh": {"tier": "cloud", "agents": [],
                                                                           "chat": True}})
        return list(found.values())

    def site(self) -> dict[str, Any]:
        """What /health tells besides the broker: the coordinator's state and the agents online."""
        with self._lock:
            coordinator = self._coordinator.state if self._coordinator else "unknown"
            online = sum(1 for a in self._agents.values() if a.state == "online")
        return {"coordinator": coordinator, "agents_online": online}

    # ------------------------------------------------------------------ paho's thread

    def _on_message(self, msg: Message) -> None:
        try:
            level = self.topics.parse(msg.topic)
        except TopicError:
            return
        if level[0] == "results" and len(level) == 3:
            self._on_result(level[2], msg)
        elif level[0] == "agents" and msg.payload:
            status = msg.decoded(AgentStatus, log, "agent_status_invalid", logging.DEBUG)
            with self._lock:
                if status is not None:
                    self._agents[level[1]] = status
        elif level[0] == "agents":
            with self._lock:
                self._agents.pop(level[1], None)
        elif level[0] == "bridge":
            bridge = msg.decoded(BridgeStatus, log, "bridge_status_invalid", logging.DEBUG) if msg.payload else None
            with self._lock:
                self._bridge = bridge
        elif level[0] == "coordinator" and msg.payload:
            coordinator = msg.decoded(CoordinatorStatus, log, "coordinator_status_invalid", logging.DEBUG)
            with self._lock:
                self._coordinator = coordinator

    def _on_result(self, job: str, msg: Message) -> None:
        with self._lock:
            waiting = self._waiting.get(job)
        if waiting is None:
            return  # a request that has ended (or one of before a restart): nobody to tell
        try:
            data = orjson.loads(msg.payload)
            is_final = isinstance(data, dict) and data.get("final")
            result: Result = convert(data, Final, msg.payload) if is_final else convert(data, Chunk, msg.payload)
        except (orjson.JSONDecodeError, DecodeError) as exc:
            log.warning(kv("result_invalid", job=job, detail=str(exc)))
            return
        loop, queue = waiting
        with contextlib.suppress(RuntimeError):  # the request's loop is closed: the server is stopping
            loop.call_soon_threadsafe(queue.put_nowait, result)

    # ------------------------------------------------------------------ used by Call

    def _register(self, job: str) -> asyncio.Queue[Result]:
        queue: asyncio.Queue[Result] = asyncio.Queue()
        with self._lock:
            self._waiting[job] = (asyncio.get_running_loop(), queue)
        return queue

    def _forget(self, job: str) -> None:
        with self._lock:
            self._waiting.pop(job, None)


class Call:
    """One request's job on the site: its prompt published, its chunks and final as they come.

    Closing it before the final came (the client went away, a timeout, the broker lost, the
    gateway stopping) cancels the job, so nothing runs on for nobody."""

    def __init__(self, relay: Relay, job: str, queue: asyncio.Queue[Result]) -> None:
        self.relay = relay
        self.job = job
        self.final: Final | None = None
        self.submitted = False
        self.deadline = time.monotonic() + relay.settings.answer_timeout_s  # for the whole answer, stream or not
        self._queue: asyncio.Queue[Result] | None = queue

    def close(self) -> None:
        """Stop waiting; cancel the job if it was sent and has had no final (idempotent)."""
        if self._queue is None:
            return
        self._queue = None
        self.relay._forget(self.job)
        if self.submitted and self.final is None:
            r = self.relay
            r.session.publish(r.topics.cancel(r.device), encode(Cancel(id=self.job)), qos=1)
            log.info(kv("job_cancel_sent", job=self.job))

    async def submit(self, prompt: Prompt) -> None:
        """Publish the prompt at QoS 1 and wait for the broker's PUBACK: from then on the site has the job."""
        r = self.relay
        if not r.connected:
            raise ApiError(503, "broker_unavailable", f"the gateway has no connection to the site's broker "
                           f"({r.session.address.url}); retry later")
        delivery = r.session.publish(r.topics.prompts(r.device), encode(prompt), qos=1)
        self.submitted = True  # from here a cancel is owed if we give up: the broker may still send it on
        deadline = time.monotonic() + PUBACK_TIMEOUT_S
        pause = 0.001
        while not delivery.done:
            if time.monotonic() > deadline:
                raise ApiError(503, "broker_unavailable", "the site's broker did not acknowledge the request; "
                               "retry later")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
        if not delivery.ok:
            self.submitted = False
            raise ApiError(502, "publish_refused", f"the broker refused the prompt (reason code {delivery.reason}): "
                           f"user {r.session.address.username!r} may not publish as device {r.device!r}; give it "
                           "the gateway role for that name (docs/security.md)")

    async def next(self, gone: Callable[[], Awaitable[bool]] | None = None) -> Result:
        """The job's next chunk or its final. ApiError 504 past ``answer_timeout_s``, 503 when the
        broker has been lost for ``broker_grace_s``; :class:`ClientGone` once ``gone()`` says so."""
        assert self._queue is not None, "next() after close()"
        s = self.relay.settings
        lost_since: float | None = None
        while True:
            try:
                result = await asyncio.wait_for(self._queue.get(), timeout=0.25)
            except TimeoutError:
                now = time.monotonic()
                if gone is not None and await gone():
                    raise ClientGone(self.job) from None
                if now > self.deadline:
                    raise ApiError(504, "timeout", f"no answer within {s.answer_timeout_s:.0f} s "
                                   "(gateway.answer_timeout_s); the job was cancelled") from None
                lost_since = None if self.relay.connected else (lost_since or now)
                if lost_since is not None and now - lost_since > s.broker_grace_s:
                    raise ApiError(503, "broker_unavailable", f"the connection to the site's broker was lost for "
                                   f"{s.broker_grace_s:.0f} s while waiting for the answer") from None
                continue
            if isinstance(result, Final):
                if result.job != self.job:
                    continue
                self.final = result
            return result
