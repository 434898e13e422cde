"""Prometheus metrics: each daemon serves its own registry on ``metrics_port`` (0 = off).

Names follow Prometheus' conventions: one namespace per daemon (``fogmesh_coordinator_``,
``fogmesh_agent_``, ``fogmesh_bridge_``, ``fogmesh_cloud_worker_``, ``fogmesh_gateway_``),
``_total`` on counters and on nothing else, units in the name (``_seconds``, ``_usd``). Every
sample carries the daemon's constant labels (its ``site``; an agent's ``agent`` too), so one
Prometheus can scrape many sites. ``fogmesh_build_info`` says what runs where. Every daemon's
counters dict, logged at shutdown, is also exported as ``fogmesh_<daemon>_events_total{event=...}``,
so the log and the scrape agree.
"""

from __future__ import annotations

import copy
import logging
import platform
from collections.abc import Callable, Iterator, Mapping
from importlib import metadata
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from broker.runtime import __version__
from broker.runtime.errors import ConfigError
from broker.runtime.logs import kv

log = logging.getLogger("fogmesh.metrics")
# A small model on an edge CPU: TTFT from tens of ms, whole jobs up to minutes.
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TOKENS_PER_S = (1, 2, 5, 10, 20, 30, 40, 50, 75, 100, 200)
# The text format would add a `<name>_created` gauge beside every counter and histogram: twice the
# series for a timestamp Prometheus 2.x does not read over this format, and a name outside the
# conventions above. A process runs one daemon, so turning them off process-wide is its choice.
disable_created_metrics()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


class _Callback(Collector):
    """A counter whose value lives elsewhere (a dict of counts, a session's reconnect count), read at
    each scrape: the object that counts stays the one source of truth."""

    def __init__(self, name: str, doc: str, read: Callable[[], Mapping[str, float] | float], label: str = "") -> None:
        self.name, self.doc, self.read, self.label = name, doc, read, label

    def collect(self) -> Iterator[CounterMetricFamily]:
        value = self.read()
        if isinstance(value, (int, float)):
            yield CounterMetricFamily(self.name, self.doc, value=value)
            return
        family = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for key, count in sorted(dict(value).items()):  # a copy: the daemon's threads go on counting
            family.add_metric([key], count)
        yield family


class _Labelled(Collector):
    """Every sample of ``inner`` with the daemon's constant labels added (prometheus_client has no
    constant labels); a metric that has one of them itself (the worker's per-job ``site``) keeps its own."""

    def __init__(self, inner: CollectorRegistry, labels: dict[str, str]) -> None:
        self.inner, self.labels = inner, labels

    def collect(self) -> Iterator[Metric]:
        for family in self.inner.collect():
            out = copy.copy(family)
            out.samples = [s._replace(labels={**self.labels, **s.labels}) for s in family.samples]
            yield out


class Metrics:
    """One daemon's metrics on a registry of its own, named ``fogmesh_<daemon>_<name>``."""

    def __init__(self, daemon: str, counters: dict[str, int] | None = None,
                 labels: dict[str, str] | None = None) -> None:
        self.daemon = daemon
        self.namespace = "fogmesh_" + daemon.replace("-", "_")
        self.labels = dict(labels or {})
        self.registry = CollectorRegistry(auto_describe=True)  # the metrics; names are checked unique here
        self.exposed = CollectorRegistry()  # what /metrics serves: the same, with the constant labels
        self.exposed.register(_Labelled(self.registry, self.labels))
        if counters is not None:
            self.registry.register(_Callback(f"{self.namespace}_events", f"Events the {daemon} counted, by kind",
                                             lambda: counters, "event"))
        build = GaugeMetricFamily("fogmesh_build_info", "What runs: the daemon, fogmesh's version, Python's and "
                                  "llama-cpp-python's (none where it is not installed); always 1",
                                  labels=["daemon", "version", "python", "llama_cpp"])
        build.add_metric([daemon, __version__, platform.python_version(), _version("llama_cpp_python")], 1)
        self.registry.register(_Constant(build))
        self._server: Any = None

    def _name(self, name: str, counter: bool) -> str:
        if name.endswith("_total") != counter:
            raise ValueError(f"metric {name!r}: counters end in _total, and nothing else does")
        return f"{self.namespace}_{name}"

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(self._name(name, True), doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, buckets: tuple[float, ...] = SECONDS,
                  labels: tuple[str, ...] = ()) -> Histogram:
        return Histogram(self._name(name, False), doc, labels, buckets=buckets, registry=self.registry)

    def gauge(self, name: str, doc: str, fn: Callable[[], float]) -> Gauge:
        g = Gauge(self._name(name, False), doc, registry=self.registry)
        g.set_function(fn)
        return g

    def reconnects(self, count: Callable[[], int]) -> None:
        """The one metric every MQTT daemon shares: how often its session had to reconnect (a counter
        read from the session, which counts them)."""
        self.registry.register(_Callback(f"{self.namespace}_mqtt_reconnects",
                                         "Reconnections to the broker since start", count))

    def text(self) -> str:
        """The exposition /metrics serves, for a check without a port."""
        return generate_latest(self.exposed).decode()

    def serve(self, port: int, bind: str = "127.0.0.1") -> None:
        """Serve /metrics on ``bind:port`` from a thread of its own; nothing when port is 0."""
        if not port:
            return
        try:
            self._server, _ = start_http_server(port, addr=bind, registry=self.exposed)
        except OSError as exc:
            raise ConfigError(f"metrics_port {port}: cannot listen on {bind}:{port} ({exc.strerror}); "
                              "choose a free port or 0 to turn metrics off") from exc
        log.info(kv("metrics_serving", url=f"http://{bind}:{port}/metrics"))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()


class _Constant(Collector):
    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family
