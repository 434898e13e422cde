"""sd_notify (READY, WATCHDOG, STATUS, STOPPING) for every daemon.

The notify protocol is one datagram to ``$NOTIFY_SOCKET``; it needs no library.
A daemon calls :meth:`Notifier.tick` from the loop that proves it is alive, so a
wedged loop stops the pings and systemd restarts the daemon (``WatchdogSec``).
Outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from broker.runtime.logs import kv

log = logging.getLogger("fogmesh.systemd")


class Notifier:
    """sd_notify for one daemon; silent when not started by systemd with ``Type=notify``."""

    def __init__(self) -> None:
        self.socket_path = os.environ.get("NOTIFY_SOCKET", "")
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        # ping at half the timeout, as sd_watchdog_enabled(3) recommends
        self.watchdog_s = int(usec) / 2e6 if usec and (not pid or int(pid) == os.getpid()) else None
        self._last_ping = 0.0
        self._warned = False

    def send(self, *fields: str, wait_s: float = 1.0) -> bool:
        """One notify datagram; gives up after ``wait_s`` if the socket's queue is full."""
        if not self.socket_path:
            return False
        address = "\0" + self.socket_path[1:] if self.socket_path.startswith("@") else self.socket_path
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.settimeout(wait_s)  # a notify socket nobody reads must not stall the daemon's loop
                s.connect(address)
                s.sendall("\n".join(fields).encode())
            return True
        except OSError as exc:
            if not self._warned:
                log.warning(kv("sd_notify_failed", socket=self.socket_path, reason=exc.strerror or str(exc)))
                self._warned = True
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        self._last_ping = time.monotonic()

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def tick(self) -> None:
        """WATCHDOG=1, at most every half watchdog interval."""
        if self.watchdog_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_s:
            self._last_ping = now
            self.send("WATCHDOG=1", wait_s=0.0)

    def stopping(self, status: str = "draining") -> None:
        self.send("STOPPING=1", f"STATUS={status}")
