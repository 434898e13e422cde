"""Where a process spends its time, from py-spy's sampling profile: for bench/scale.py's
coordinator, so that each run of the benchmark says what its throughput is made of.

py-spy samples the Python stack from outside the process (200 times a second here) without
slowing it much. Only the thread holding the GIL is taken (``--gil``): one thread at a time runs
Python, so the samples say where the process's one core of Python goes, and their number
against the run's length how much of the time the GIL was busy at all (``gil_busy``).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 200
# The coordinator's parts, as the functions they run through (inclusive: what they call counts).
PARTS = {
    "admission (prompts)": "Admission.on_prompt", "agent events": "Edge.on_event",
    "dispatch (decide, assign)": "Dispatcher.run", "scheduler decision": "AgentIndex.decide",
    "finals": "Finals.finish", "ledger (SQLite)": "Ledger.", "publish and acknowledge": "Pending.flush",
    "timeouts": "Timeouts.scan", "mesh status": "StatusBoard.publish_mesh",
    "paho: read and parse": "Client.loop_read", "paho: write": "Client.loop_write",
    "paho: MQTT 5 properties": "Properties.",
}


class Recording:
    """``py-spy record`` on ``pid`` until :meth:`stop`; None from :func:`record` when py-spy is missing."""

    def __init__(self, pid: int, exe: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="fogmesh-pyspy-")
        self._out = Path(self._dir.name) / "raw.txt"
        self._proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(RATE),
                                       "--gil", "--threads", "--nolineno", "--output", str(self._out)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._started = time.monotonic()

    def stop(self) -> dict[str, Any] | None:
        seconds = time.monotonic() - self._started
        self._proc.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
        try:
            self._proc.wait(30)
            if not self._out.exists():
                return None
            out = summarize(self._out.read_text())
            out["seconds"] = round(seconds, 2)
            out["gil_busy"] = round(out["samples"] / (seconds * RATE), 3) if seconds else 0.0
            return out
        finally:
            self._dir.cleanup()


def record(pid: int) -> Recording | None:
    exe = shutil.which("py-spy") or str(Path(__import__("sys").executable).with_name("py-spy"))
    return Recording(pid, exe) if Path(exe).exists() else None


def summarize(raw: str, top: int = 15) -> dict[str, Any]:
    """Shares of the samples: by thread, by part of the coordinator, and the hottest frames."""
    threads: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count, frames = int(n), stack.split(";")
        total += count
        thread = "network (paho)" if "paho" in frames[0] else "loop" if "MainThread" in frames[0] else "other"
        threads[thread] += count
        names = [re.sub(r" \(.*\)$", "", f) for f in frames[1:]]
        for part, marker in PARTS.items():
            if any(marker in name for name in names):
                parts[part] += count
        own[re.sub(r" \((?:.*/)?([^/]*)\)$", r" (\1)", frames[-1])] += count
    share = (lambda c: round(c / total, 4)) if total else (lambda c: 0.0)
    return {"samples": total, "rate_hz": RATE, "threads": {k: share(v) for k, v in threads.most_common()},
            "parts": {k: share(parts[k]) for k in PARTS},
            "hottest": [[frame, share(c)] for frame, c in own.most_common(top)]}
