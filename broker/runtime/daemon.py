"""The life cycle every fogmesh daemon shares (the coordinator, the agent, the bridge, the cloud
worker): start, serve until asked to stop, drain, stop; its counters as Prometheus metrics and
in its last log line; READY, WATCHDOG and STOPPING to systemd."""

from __future__ import annotations

import logging
import threading

from broker.runtime.logs import kv
from broker.runtime.metrics import Metrics
from broker.runtime.notify import Notifier
from broker.runtime.settings import Connection, DaemonSettings

log = logging.getLogger("fogmesh.daemon")


class Daemon:
    """A daemon fills in :meth:`start`, :meth:`serve` and :meth:`stop`; :meth:`run` is the same for all.

    ``serve`` returns when :meth:`request_stop` was called (SIGTERM, SIGINT) and calls
    :meth:`alive` from the loop that proves it is alive, for systemd's watchdog.
    """

    name = "daemon"  # the metrics' namespace
    stopped_event = "daemon_stopped"  # the last log line's event

    def __init__(self, settings: DaemonSettings, counters: dict[str, int],
                 labels: dict[str, str] | None = None) -> None:
        """``labels``: constant labels on every metric besides ``site``, which a daemon of a site gets
        from its settings (the cloud worker serves every site, and labels its job metrics by theirs)."""
        self.settings_base = settings
        self.counters = counters
        site = {"site": settings.site} if isinstance(settings, Connection) else {}
        self.metrics = Metrics(self.name, counters, {**site, **(labels or {})})
        self.notifier = Notifier()
        self._stop = threading.Event()

    # ------------------------------------------------------------------ what a daemon fills in

    def start(self) -> None:
        """Connect, recover, load: everything before it can serve."""

    def ready(self) -> str:
        """systemd's STATUS line once started."""
        return self.name

    def serve(self) -> None:
        """Serve until :meth:`request_stop`."""
        while not self._stop.wait(1.0):
            self.alive()

    def draining(self) -> str:
        """systemd's STATUS line while stopping."""
        return "draining"

    def stop(self) -> None:
        """Finish or hand back in-flight work, say offline, disconnect."""

    def identity(self) -> dict[str, str]:
        """Fields the last log line carries beside the counters (which agent, which worker)."""
        return {}

    # ------------------------------------------------------------------ the same for every daemon

    def run(self) -> int:
        """Start, serve until asked to stop, drain and stop; the exit status."""
        self.start()
        self.metrics.serve(self.settings_base.metrics_port, self.settings_base.metrics_bind)
        self.notifier.ready(self.ready())
        self.serve()
        self.notifier.stopping(self.draining())
        self.stop()
        log.info(kv(self.stopped_event, **self.identity(), **self.counters))
        return 0

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def alive(self) -> None:
        """Called from the loop that proves the daemon alive: systemd's watchdog ping."""
        self.notifier.tick()
