"""A job's token stream to the device: chunks on its result topic (and its Response Topic)."""

from __future__ import annotations

import time

from broker.runtime.mqtt import Publisher
from schemas import encode
from schemas.messages import Assignment, Chunk
from schemas.topics import Topics


class Stream:
    """Coalesces tokens into chunks: the first at once, then at most one publish per interval."""

    def __init__(self, session: Publisher, spec: Assignment, interval_s: float, topics: Topics) -> None:
        self.session = session
        self.spec = spec
        self.interval_s = interval_s
        self.buffer: list[str] = []
        self.last = 0.0
        self.seq = 0
        self.correlation = bytes.fromhex(spec.correlation) if spec.correlation else None
        # The coordinator admits only Response Topics under the device's results; checked here too,
        # with the same rule, because a publish the broker's ACL denies costs the agent its
        # connection (mosquitto 2.0).
        rt = spec.response_topic
        ok = rt and rt != spec.result_topic and topics.response_topic_problem(spec.device, rt) is None
        self.response_topic = rt if ok else None

    def add(self, text: str) -> None:
        self.buffer.append(text)
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            self.last = now
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        attempt = self.spec.attempt if self.spec.extended or self.spec.attempt > 1 else None
        payload = encode(Chunk(job=self.spec.job, seq=self.seq, text="".join(self.buffer), attempt=attempt))
        self.buffer.clear()
        self.seq += 1
        session = self.session
        session.publish(self.spec.result_topic, payload, qos=1)
        if self.response_topic:
            session.publish(self.response_topic, payload, qos=1, correlation=self.correlation)
