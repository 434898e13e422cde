"""Client side: a device (``fogmesh ask``), the retained statuses (``fogmesh status``), requests.

It speaks the same device contract as any MQTT client would, nothing more.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from broker.runtime.delivery import Delivery
from broker.runtime.errors import PublishRefused, SiteError
from broker.runtime.mqtt import BrokerAddress, Message, Session
from schemas.topics import ROOT, Topics


class DeviceClient:
    """A device on the broker: publishes prompts and cancels, collects its result topics.

    Every message is kept with its arrival time (``time.monotonic()``), so the
    same client serves ``fogmesh ask``, the tests and the benchmarks.
    """

    def __init__(self, address: BrokerAddress, site: str, device_id: str = "",
                 on_chunk: Callable[[str, dict[str, Any]], None] | None = None, persistent: bool = False) -> None:
        """``persistent``: a session the broker keeps (and queues results for) while the device is away."""
        self.topics = Topics(site)
        self.device_id = device_id or f"dev-{secrets.token_hex(3)}"
        self.finals: dict[str, list[dict[str, Any]]] = {}
        self.chunks: dict[str, list[dict[str, Any]]] = {}
        self.arrivals: dict[str, list[float]] = {}  # job -> arrival time of each message, chunks then final
        self.sent_at: dict[str, float] = {}
        self._on_chunk = on_chunk
        self._changed = threading.Condition()
        client_id = f"fogmesh-dev-{self.device_id}" + ("" if persistent else f"-{secrets.token_hex(3)}")
        self.session = Session(address, client_id, self._collect, persistent=persistent)
        self.session.start()
        self.session.subscribe(self.topics.results(self.device_id), qos=1)
        time.sleep(0.05)  # let the SUBACK land before an answer can

    def _collect(self, msg: Message) -> None:
        now = time.monotonic()
        data = orjson.loads(msg.payload)
        job = msg.topic.rsplit("/", 1)[-1]
        with self._changed:
            (self.finals if data.get("final") else self.chunks).setdefault(job, []).append(data)
            self.arrivals.setdefault(job, []).append(now)
            self._changed.notify_all()
        if self._on_chunk and not data.get("final"):
            self._on_chunk(job, data)

    def send(self, payload: dict[str, Any] | bytes, wait: bool = True, **props: Any) -> str:
        """Publish a prompt at QoS 1 (``wait``: until the PUBACK); returns its id when it has one.

        Without ``wait`` a prompt sent while the broker is away is queued and sent on reconnect.
        """
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        job = payload.get("id", "") if isinstance(payload, dict) else ""
        if job:
            self.sent_at[job] = time.monotonic()
        topic = self.topics.prompts(self.device_id)
        delivery = self.session.publish(topic, body, qos=1, **props)
        if wait:
            self._confirm(delivery, topic)
        return str(job)

    def _confirm(self, delivery: Delivery, topic: str, timeout_s: float = 5.0) -> None:
        """Wait for the PUBACK; a refusal raises PublishRefused."""
        how = refusal(self.session, delivery, timeout_s)
        if how:
            raise PublishRefused(f"the broker refused the prompt on {topic} ({how}): {_who(self.session)} may not "
                                 f"publish there. A device publishes only as itself: prompts/<its user name> "
                                 f"(fogmesh ask --device <user>), and roles such as dashboard may not ask at all")

    def cancel(self, job_id: str) -> None:
        self.session.publish(self.topics.cancel(self.device_id), orjson.dumps({"id": job_id}), qos=1)

    def wait_final(self, job_id: str, timeout_s: float = 60.0) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while job_id not in self.finals:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self.finals[job_id][0]

    def all_finals(self) -> list[dict[str, Any]]:
        return [f for finals in self.finals.values() for f in finals]

    def close(self) -> None:
        self.session.stop()


def refusal(session: Session, delivery: Delivery, timeout_s: float) -> str | None:
    """Wait for the broker's PUBACK: None once it took the message, else how it refused it, or ""
    when no answer came in time. mosquitto 2.0 answers a publish the ACL denies by closing the
    connection, so a session lost meanwhile counts as a refusal too."""
    deadline = time.monotonic() + timeout_s
    while not delivery.wait(0.05) and time.monotonic() < deadline:
        if delivery.done or not session.connected:
            break
    if delivery.ok:
        return None
    if delivery.done:
        return f"reason code {delivery.reason}"
    if not session.connected:
        return "it closed the connection, as mosquitto does for a publish the ACL denies"
    return ""


def _who(session: Session) -> str:
    return f"user {session.address.username!r}" if session.address.username else "this client"


@dataclass
class Answer:
    final: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    first_chunk_s: float | None = None
    elapsed_s: float = 0.0


def ask(address: BrokerAddress, site: str, prompt: dict[str, Any], device: str,
        timeout_s: float = 60.0, on_chunk: Callable[[dict[str, Any]], None] | None = None) -> Answer:
    """Publish ``prompt`` as ``device`` and collect the stream and the final message."""
    job_id = prompt.setdefault("id", f"ask-{secrets.token_hex(4)}")
    client = DeviceClient(address, site, device, (lambda _job, chunk: on_chunk(chunk)) if on_chunk else None)
    try:
        client.send(prompt)
        try:
            final = client.wait_final(job_id, timeout_s)
        except KeyboardInterrupt:  # Ctrl-C: the job must not run on to its end for nobody
            client.cancel(job_id)
            client.wait_final(job_id, 3.0)
            raise
        arrivals = client.arrivals.get(job_id, [])
        start = client.sent_at[job_id]
        chunks = client.chunks.get(job_id, [])
        return Answer(final=final, chunks=chunks, first_chunk_s=arrivals[0] - start if chunks else None,
                      elapsed_s=(arrivals[-1] if arrivals else time.monotonic()) - start)
    finally:
        client.close()


STATUS_LEVELS = ("agents/+/status", "coordinator/status", "mesh/status", "bridge/status")


def _no_status() -> dict[str, Any]:
    return {"agents": {}, "coordinator": None, "mesh": None, "bridge": None}


class Fleet:
    """A site (or every site on the broker) as its retained status topics describe it, kept
    current while open.

    ``fogmesh status`` opens one for half a second; ``status --watch`` and the
    tests keep one open and read :meth:`snapshot` as it changes; ``status
    --all-sites`` opens one with ``site=None`` and reads :meth:`snapshots`.
    """

    def __init__(self, address: BrokerAddress, site: str | None) -> None:
        """``site``: the one site to follow; None: every site that has a status on the broker."""
        self.site, self.broker = site, address.url
        self._lock = threading.Lock()
        self._sites: dict[str, dict[str, Any]] = {}
        self._heard = time.monotonic()  # when the last message came
        self.session = Session(address, f"fogmesh-status-{secrets.token_hex(4)}", self._on_message, persistent=False)
        self.session.start()
        prefix = Topics(site).prefix if site is not None else f"{ROOT}/+"
        for level in STATUS_LEVELS:
            self.session.subscribe(f"{prefix}/{level}", qos=1)

    def _on_message(self, msg: Message) -> None:
        self._heard = time.monotonic()
        root, site, *level = msg.topic.split("/")
        try:
            data = orjson.loads(msg.payload) if msg.payload else None
        except orjson.JSONDecodeError:
            return  # somebody else's garbage on a status topic is not ours to crash on
        if data is not None and not isinstance(data, dict):
            return  # JSON, but not a status: a list, a number
        if root != ROOT or (self.site is not None and site != self.site):
            return
        with self._lock:
            state = self._sites.setdefault(site, _no_status())
            if level[0] == "agents" and len(level) == 3:
                if data is None:  # an empty retained message: the agent's status was cleared
                    state["agents"].pop(level[1], None)
                else:
                    state["agents"][level[1]] = data
            elif level[0] in ("coordinator", "mesh", "bridge"):
                state[level[0]] = data

    def _snapshot(self, site: str) -> dict[str, Any]:
        state = self._sites.get(site) or _no_status()
        return {"site": site, "broker": self.broker, "agents": dict(state["agents"]),
                "coordinator": state["coordinator"], "mesh": state["mesh"], "bridge": state["bridge"]}

    def snapshot(self) -> dict[str, Any]:
        """The followed site's snapshot."""
        assert self.site is not None, "a Fleet of every site has snapshots(), not snapshot()"
        with self._lock:
            return self._snapshot(self.site)

    def snapshots(self) -> list[dict[str, Any]]:
        """Each site that has some status retained, by site id."""
        with self._lock:
            snaps = [self._snapshot(site) for site in sorted(self._sites)]
        return [s for s in snaps if s["agents"] or s["coordinator"] or s["mesh"] or s["bridge"]]

    def settle(self, settle_s: float, quiet_s: float = 0.25, most_s: float = 15.0) -> None:
        """Wait ``settle_s``, then on while the retained statuses still come (until none has come for
        ``quiet_s``; ``most_s`` at most): a broker with thousands of sites takes seconds to send them."""
        began = time.monotonic()
        time.sleep(settle_s)
        while time.monotonic() - self._heard < quiet_s and time.monotonic() - began < most_s:
            time.sleep(0.05)

    def close(self) -> None:
        self.session.stop()


def _settled(address: BrokerAddress, site: str | None, settle_s: float) -> Fleet:
    """A Fleet given ``settle_s`` and then as long as they keep coming for the retained statuses to
    arrive, then closed: read once."""
    fleet = Fleet(address, site)
    try:
        fleet.settle(settle_s)
    finally:
        fleet.close()
    return fleet


def snapshot(address: BrokerAddress, site: str, settle_s: float = 0.5) -> dict[str, Any]:
    """The site as its retained status topics describe it, read once."""
    return _settled(address, site, settle_s).snapshot()


def snapshots(address: BrokerAddress, settle_s: float = 0.5) -> list[dict[str, Any]]:
    """Every site on the broker as its retained status topics describe it (those this user may
    read), read once."""
    return _settled(address, None, settle_s).snapshots()


def retained(address: BrokerAddress, topic_filter: str, settle_s: float = 0.3) -> list[Message]:
    """The retained messages on ``topic_filter`` (empty ones, which clear a topic, left out), read
    by a short clean session; the broker sends them right after the SUBACK."""
    found: list[Message] = []
    session = Session(address, f"fogmesh-read-{secrets.token_hex(4)}",
                      lambda m: found.append(m) if m.payload else None, persistent=False)
    session.start()
    try:
        session.subscribe(topic_filter, qos=1)
        time.sleep(settle_s)
    finally:
        session.stop()
    return found


def clear_retained(address: BrokerAddress, topics: list[str], timeout_s: float = 5.0) -> dict[str, str]:
    """Delete what the broker retains on each topic: an empty retained message at QoS 1, each
    one waited for until the broker acknowledges it. Returns the topics not cleared, each with why
    (none: all cleared); clearing a topic that holds nothing is no error. A refusal is ``refused:
    ...``: mosquitto 2.0 then closes the connection, so the next topic goes on a new one. Once the
    broker does not answer in time, the rest are ``not tried: ...``."""
    failed: dict[str, str] = {}
    session: Session | None = None
    try:
        for i, topic in enumerate(topics):
            if session is None:
                session = Session(address, f"fogmesh-clear-{secrets.token_hex(4)}", lambda _msg: None,
                                  persistent=False)
                session.start(timeout_s)
            how = refusal(session, session.publish(topic, b"", qos=1, retain=True), timeout_s)
            if how is None:
                continue
            if how:
                failed[topic] = f"refused: {how}: {_who(session)} may not write there"
                session.stop()
                session = None
                continue
            failed[topic] = f"no acknowledgement from {address.url} within {timeout_s:.0f} s"
            failed.update({t: f"not tried: {address.url} stopped answering" for t in topics[i + 1:]})
            break
    finally:
        if session is not None:
            session.stop()
    return failed


def sites(address: BrokerAddress) -> list[str]:
    """The sites on a broker: those whose coordinator left a retained status."""
    return sorted({m.topic.split("/")[1] for m in retained(address, f"{ROOT}/+/coordinator/status")})


def site_check(address: BrokerAddress, site: str) -> dict[str, Any]:
    """The site's snapshot; SiteError at once if the broker has no such site (naming those it has)."""
    snap = snapshot(address, site, settle_s=0.3)
    if not snap["coordinator"]:
        there = sites(address)
        if there:
            raise SiteError(f"no site {site!r} on {address.url}: the sites there are {', '.join(there)} (--site NAME)")
        if not address.username:  # anonymous reads everything: there is no site at all
            raise SiteError(f"no site {site!r} on {address.url}: no fogmesh site has a coordinator there "
                            "(is `fogmesh up` or the coordinator running?)")
        # a user whose role may not read statuses (a device) sees nothing either way: go on
    return snap


def request(address: BrokerAddress, topic: str, body: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any] | None:
    """An MQTT 5 request/response: publish with a Response Topic and Correlation Data, wait for the reply."""
    inbox: queue.Queue[Message] = queue.Queue()
    token = secrets.token_hex(8)
    session = Session(address, f"fogmesh-req-{token}", inbox.put, persistent=False)
    session.start()
    reply_to = f"{topic}/reply/{token}"
    try:
        session.subscribe(reply_to, qos=1)
        time.sleep(0.05)
        session.publish(topic, orjson.dumps(body), qos=1, response_topic=reply_to, correlation=token.encode())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                msg = inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if msg.correlation == token.encode():
                return orjson.loads(msg.payload)
    finally:
        session.stop()
    return None
