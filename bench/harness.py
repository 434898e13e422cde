"""What every benchmark shares: a private site, percentiles, results written to bench/results/."""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from broker.ops.mosquitto import Mosquitto
from broker.ops.site import Site, SiteSpec
from broker.planning.simulation import percentile as pct
from broker.runtime.proc import free_port

RESULTS = Path(__file__).parent / "results"


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99),
            "mean": statistics.fmean(values) if values else float("nan"),
            "min": min(values) if values else float("nan"), "max": max(values) if values else float("nan")}


def write(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    meta = {"machine": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path.write_bytes(orjson.dumps({"benchmark": name, "meta": meta, **data},
                                  option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return path


@contextmanager
def broker() -> Iterator[Mosquitto]:
    with tempfile.TemporaryDirectory(prefix="fogmesh-bench-") as tmp:
        m = Mosquitto(free_port(), Path(tmp))
        m.start()
        try:
            yield m
        finally:
            m.stop()


@contextmanager
def site(spec: SiteSpec) -> Iterator[Site]:
    """A real site (its own broker unless the spec names one), daemons' logs to files."""
    with tempfile.TemporaryDirectory(prefix="fogmesh-bench-") as tmp:
        spec.data_dir = Path(tmp)
        spec.log_to_files = True
        s = Site(spec)
        s.start()
        try:
            yield s
        finally:
            s.stop()
