"""An in-memory stand-in for the MQTT session, for unit tests of a daemon's logic (dramatiq's
StubBroker is the model): every publish is kept and acknowledged at once, nothing is sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from broker.runtime.delivery import Delivery
from broker.runtime.mqtt import BrokerAddress, Message


class MemorySession:
    """Looks like :class:`broker.runtime.mqtt.Session` to a daemon; ``published`` is what it sent."""

    def __init__(self, client_id: str = "memory") -> None:
        self.client_id = client_id
        self.address = BrokerAddress(host="memory", port=0)
        self.published: list[tuple[str, bytes, dict[str, Any]]] = []
        self.acked: list[Message] = []
        self.subscriptions: list[str] = []
        self.reconnects = 0
        self.connected = True
        self._mid = 0

    def start(self, timeout_s: float = 10.0) -> None:
        pass

    def stop(self) -> None:
        pass

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscriptions.append(topic)

    def unsubscribe(self, topic: str) -> None:
        self.subscriptions.remove(topic)

    def set_on_delivered(self, hook: Callable[[], None] | None) -> None:
        pass

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                correlation: bytes | None = None, expiry_s: int | None = None,
                response_topic: str | None = None) -> Delivery:
        self._mid += 1
        self.published.append((topic, payload, {"retain": retain, "correlation": correlation}))
        delivery = Delivery(self._mid)
        delivery._set(0)
        return delivery

    def publish_wait(self, topic: str, payload: bytes, retain: bool = False, timeout_s: float = 5.0) -> bool:
        return self.publish(topic, payload, retain=retain).ok

    def ack(self, message: Message) -> None:
        self.acked.append(message)

    def messages(self, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        """What was published under ``prefix``, decoded."""
        return [(t, orjson.loads(p) if p else {}) for t, p, _ in self.published if t.startswith(prefix)]
