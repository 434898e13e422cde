"""Prometheus metrics: each daemon serves its own registry on ``metrics_port`` (0 = off).

Names follow Prometheus conventions (``_total`` counters, ``_seconds``
histograms); every daemon's counters dict, logged at shutdown, is also exported
as ``fogmesh_<daemon>_events_total{event=...}``, so the log and the scrape agree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from broker.runtime.errors import ConfigError
from broker.runtime.logs import kv

log = logging.getLogger("fogmesh.metrics")
# A small model on an edge CPU: TTFT from tens of ms, whole jobs up to minutes.
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKENS_PER_S = (1, 2, 5, 10, 20, 30, 40, 50, 75, 100, 200)


class _Events(Collector):
    def __init__(self, daemon: str, counters: dict[str, int]) -> None:
        self.daemon, self.counters = daemon, counters

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(f"fogmesh_{self.daemon}_events", f"Events the {self.daemon} counted, by kind",
                                     labels=["event"])
        for event, value in sorted(dict(self.counters).items()):
            family.add_metric([event], value)
        yield family


class Metrics:
    """One daemon's metrics on a registry of its own."""

    def __init__(self, daemon: str, counters: dict[str, int] | None = None) -> None:
        self.daemon = daemon.replace("-", "_")
        self.registry = CollectorRegistry(auto_describe=True)
        if counters is not None:
            self.registry.register(_Events(self.daemon, counters))
        self._server: Any = None

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(f"fogmesh_{name}", doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...] = SECONDS,
                  labels: tuple[str, ...] = ()) -> Histogram:
        return Histogram(f"fogmesh_{name}", doc, labels, buckets=buckets, registry=self.registry)

    def gauge(self, name: str, doc: str, fn: Callable[[], float]) -> Gauge:
        g = Gauge(f"fogmesh_{name}", doc, registry=self.registry)
        g.set_function(fn)
        return g

    def reconnects(self, count: Callable[[], int]) -> Gauge:
        """The one metric every MQTT daemon shares: how often its session had to reconnect."""
        return self.gauge("mqtt_reconnects", "Reconnections to the broker since start", count)

    def serve(self, port: int, bind: str = "127.0.0.1") -> None:
        """Serve /metrics on ``bind:port`` from a thread of its own; nothing when port is 0."""
        if not port:
            return
        try:
            self._server, _ = start_http_server(port, addr=bind, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"metrics_port {port}: cannot listen on {bind}:{port} ({exc.strerror}); "
                              "choose a free port or 0 to turn metrics off") from exc
        log.info(kv("metrics_serving", url=f"http://{bind}:{port}/metrics"))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
