"""The coordinator's inbox: what the broker handed over, waiting for the loop; bounded in bytes.

paho's network thread puts, the loop takes. Past ``max_bytes`` a put waits (a while) until the
loop has taken enough, so a flood of large prompts waits in the broker, which queues it for the
coordinator's persistent session, not in this process. MQTT 5's Receive Maximum would be the
protocol's way to say so, but mosquitto 2.0.11 opens a whole window again for every PUBACK
(measured: with a Receive Maximum of 10 and no acknowledgements 10 messages arrive; each single
PUBACK then lets 10 more in), so the bound is kept here.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque

from broker.runtime.mqtt import Message

# A put never waits longer than this: paho's thread also answers the broker's keepalive, and a
# connection closed for silence would cost more than one more message in memory.
MAX_WAIT_S = 5.0


class Inbox:
    """A FIFO of messages and wake-ups (``None``: a PUBACK arrived) with a byte budget."""

    def __init__(self, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: deque[Message | None] = deque()
        self._bytes = 0
        self._cond = threading.Condition()

    def put(self, item: Message | None) -> None:
        size = len(item.payload) if item is not None else 0
        with self._cond:
            deadline = time.monotonic() + MAX_WAIT_S
            while size and self._bytes and self._bytes + size > self.max_bytes:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    break
            self._items.append(item)
            self._bytes += size
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake the loop (a PUBACK arrived); when messages wait it wakes anyway, so nothing is added:
        a wake-up for every acknowledged publish (assignment, final) made two of each job's five items."""
        with self._cond:
            if not self._items:
                self._items.append(None)
                self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Message | None:
        """The oldest item; ``queue.Empty`` when none came within ``timeout``."""
        with self._cond:
            if not self._items and (timeout == 0 or not self._cond.wait_for(lambda: bool(self._items), timeout)):
                raise queue.Empty
            item = self._items.popleft()
            if item is not None:
                self._bytes -= len(item.payload)
                self._cond.notify_all()
            return item

    def get_nowait(self) -> Message | None:
        return self.get(timeout=0)

    def qsize(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def oldest_received_at(self) -> float | None:
        """When the oldest message still waiting arrived (wake-ups do not count)."""
        with self._cond:
            return next((m.received_at for m in self._items if m is not None), None)
