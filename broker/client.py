"""A device-side client for the command line: ``fogmesh ask`` and ``fogmesh status``.

It speaks the same device contract as any MQTT client would, nothing more.
"""

from __future__ import annotations

import queue
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from broker.session import BrokerAddress, Message, Session
from schemas.topics import Topics


@dataclass
class Answer:
    final: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    first_chunk_s: float | None = None
    elapsed_s: float = 0.0


def ask(address: BrokerAddress, site: str, prompt: dict[str, Any], device: str,
        timeout_s: float = 60.0, on_chunk: Any = None) -> Answer:
    """Publish ``prompt`` as ``device`` and collect the stream and the final message."""
    topics = Topics(site)
    job_id = prompt.setdefault("id", f"ask-{secrets.token_hex(4)}")
    inbox: queue.Queue[Message] = queue.Queue()
    session = Session(address, f"fogmesh-ask-{secrets.token_hex(4)}", inbox.put, persistent=False)
    session.start()
    answer = Answer()
    try:
        session.subscribe(topics.results(device, job_id), qos=1)
        time.sleep(0.05)  # let the SUBACK land before the answer can
        start = time.monotonic()
        session.publish_wait(topics.prompts(device), orjson.dumps(prompt))
        deadline = start + timeout_s
        while time.monotonic() < deadline:
            try:
                msg = inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            data = orjson.loads(msg.payload)
            if data.get("final"):
                answer.final = data
                break
            if answer.first_chunk_s is None:
                answer.first_chunk_s = time.monotonic() - start
            answer.chunks.append(data)
            if on_chunk:
                on_chunk(data)
        answer.elapsed_s = time.monotonic() - start
    finally:
        session.stop()
    return answer


def snapshot(address: BrokerAddress, site: str, settle_s: float = 0.5) -> dict[str, Any]:
    """The site as its retained status topics describe it."""
    topics = Topics(site)
    inbox: queue.Queue[Message] = queue.Queue()
    session = Session(address, f"fogmesh-status-{secrets.token_hex(4)}", inbox.put, persistent=False)
    session.start()
    for topic in (topics.agent_status(), topics.coordinator_status, topics.mesh_status, topics.bridge_status):
        session.subscribe(topic, qos=1)
    out: dict[str, Any] = {"site": site, "broker": address.url, "agents": {}, "coordinator": None,
                           "mesh": None, "bridge": None}
    deadline = time.monotonic() + settle_s
    try:
        while time.monotonic() < deadline:
            try:
                msg = inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if not msg.payload:
                continue
            data = orjson.loads(msg.payload)
            level = topics.parse(msg.topic)
            if level[0] == "agents":
                out["agents"][level[1]] = data
            elif level[0] in ("coordinator", "mesh", "bridge"):
                out[level[0]] = data
    finally:
        session.stop()
    return out


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
