"""What the site did lately, for the people and tools that watch it: totals by final status and
tier, the last minute's rate, latency and cloud share, and a 15-minute history in 10-second steps.

All of it comes from the finals the coordinator writes (one place sees every job end), and is
published retained beside the mesh status, so a dashboard opened now has charts at once.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from schemas.status import FinishedJob, HistoryStep, MeshHistory, SiteWindow

WINDOW_S = 60.0  # "lately": the rates and medians of the mesh status
STEP_S = 10  # one history step
STEPS = 90  # 15 minutes of history
LAST = 20  # the last jobs to end, shown with the live ones
DECISIONS_KEPT = 4096  # the scheduler's latest decision times, for their median and p99


@dataclass
class _Step:
    start: float  # wall clock, a multiple of STEP_S
    finals: dict[str, int] = field(default_factory=dict)  # status -> count
    cloud: int = 0  # done jobs the cloud served
    tokens: int = 0
    cloud_spend: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)

    def message(self) -> HistoryStep:
        return HistoryStep(
            ts=self.start, done=self.finals.get("done", 0), rejected=self.finals.get("rejected", 0),
            expired=self.finals.get("expired", 0), error=self.finals.get("error", 0),
            cancelled=self.finals.get("cancelled", 0), cloud=self.cloud, tokens=self.tokens,
            cloud_spend=round(self.cloud_spend, 6), latency_p50_ms=_median(self.latency_ms),
            ttft_p50_ms=_median(self.ttft_ms))


@dataclass(frozen=True)
class _Final:
    at: float
    status: str
    tier: str
    latency_ms: float | None
    ttft_ms: float | None


class SiteStats:
    """Fed by every final; read by the status board. One thread (the coordinator's loop) uses it."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, int]] = {}  # status -> tier -> jobs, since the coordinator started
        self.cloud_spend = 0.0
        self._recent: deque[_Final] = deque()
        self._steps: deque[_Step] = deque(maxlen=STEPS)
        self.last: deque[FinishedJob] = deque(maxlen=LAST)  # newest last
        self.decisions: deque[tuple[float, float]] = deque(maxlen=DECISIONS_KEPT)  # (cpu ms, wall ms)

    def decided(self, cpu_ms: float, wall_ms: float) -> None:
        """One scheduler decision took ``cpu_ms`` of the loop thread's processor time, ``wall_ms`` in all."""
        self.decisions.append((cpu_ms, wall_ms))

    def record(self, now: float, key: str, status: str, tier: str, *, node: str = "", code: str = "",
               tokens: int = 0, latency_ms: float | None = None, ttft_ms: float | None = None,
               cloud_spend: float = 0.0) -> None:
        self.last.append(FinishedJob(key=key, status=status, tier=tier, node=node,  # type: ignore[arg-type]
                                     total_ms=round(latency_ms or 0.0, 1), tokens=tokens, code=code, ended_at=now))
        by_tier = self.totals.setdefault(status, {})
        by_tier[tier] = by_tier.get(tier, 0) + 1
        self.cloud_spend += cloud_spend
        done = status == "done"
        self._recent.append(_Final(now, status, tier, latency_ms if done else None, ttft_ms if done else None))
        step = self._step(now)
        step.finals[status] = step.finals.get(status, 0) + 1
        step.tokens += tokens
        step.cloud_spend += cloud_spend
        if done:
            step.cloud += tier == "cloud"
            if latency_ms is not None:
                step.latency_ms.append(latency_ms)
            if ttft_ms is not None:
                step.ttft_ms.append(ttft_ms)

    def window(self, now: float) -> SiteWindow:
        """The last minute: jobs finished, done share served by the cloud, median latency and TTFT."""
        while self._recent and self._recent[0].at < now - WINDOW_S:
            self._recent.popleft()
        done = [f for f in self._recent if f.status == "done"]
        cpu, wall = sorted(d[0] for d in self.decisions), sorted(d[1] for d in self.decisions)
        return SiteWindow(
            window_s=WINDOW_S, finished=len(self._recent), done=len(done),
            cloud_share=round(sum(f.tier == "cloud" for f in done) / len(done), 4) if done else 0.0,
            latency_p50_ms=_median([f.latency_ms for f in done if f.latency_ms is not None]),
            ttft_p50_ms=_median([f.ttft_ms for f in done if f.ttft_ms is not None]),
            decision_p50_ms=_rank(cpu, 0.5), decision_p99_ms=_rank(cpu, 0.99),
            decision_wall_p99_ms=_rank(wall, 0.99),
            totals={s: dict(t) for s, t in self.totals.items()}, cloud_spend=round(self.cloud_spend, 6))

    def history(self, now: float) -> MeshHistory:
        """The last 15 minutes in steps of 10 s, oldest first; a quiet step is there with zeros."""
        self._step(now)
        return MeshHistory(step_s=STEP_S, steps=[s.message() for s in self._steps], ts=now)

    def _step(self, now: float) -> _Step:
        start = now - now % STEP_S
        last = self._steps[-1] if self._steps else None
        if last is not None and last.start >= start:
            return last  # a clock stepped back writes into the newest step rather than reorder history
        first = start - (STEPS - 1) * STEP_S
        begin = max(last.start + STEP_S, first) if last is not None else start
        for i in range(round((start - begin) / STEP_S)):  # the quiet steps between, both ends multiples of STEP_S
            self._steps.append(_Step(begin + i * STEP_S))
        self._steps.append(_Step(start))
        return self._steps[-1]


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1) if values else 0.0


def _rank(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values (nearest rank), to the microsecond."""
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else 0.0
