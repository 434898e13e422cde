"""The broker's acknowledgement of a publish, as fogmesh tracks it (not paho's)."""

from __future__ import annotations

import threading

_DELIVERY_LOCK = threading.Lock()  # guards a Delivery's lazily made Event (most are never waited for)


class Delivery:
    """The broker's acknowledgement of one publish, whether it was sent at once or queued while
    the session was down (paho's own ``MQTTMessageInfo.is_published()`` raises ``RuntimeError``
    for a message published while disconnected, even after it was delivered on reconnect)."""

    __slots__ = ("_done", "_event", "mid", "reason")

    def __init__(self, mid: int) -> None:
        self.mid = mid
        self.reason = 0  # the PUBACK's reason code; >= 0x80 means the broker refused the message
        self._done = False
        self._event: threading.Event | None = None

    @property
    def done(self) -> bool:
        """The broker answered (for QoS 0: the message left this process)."""
        return self._done

    @property
    def ok(self) -> bool:
        return self._done and self.reason < 0x80

    def wait(self, timeout_s: float | None) -> bool:
        """True once the broker accepted the message; False on a refusal or a timeout."""
        with _DELIVERY_LOCK:
            if not self._done and self._event is None:
                self._event = threading.Event()
            event = self._event
        if event is not None:
            event.wait(timeout_s)
        return self.ok

    def _set(self, reason: int) -> None:
        self.reason = reason
        with _DELIVERY_LOCK:
            self._done = True
            event = self._event
        if event is not None:
            event.set()
