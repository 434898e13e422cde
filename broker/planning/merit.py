"""The research's figure of merit, as fogmesh reports it for a run (simulated or measured).

- utility U = a*Q + (1-a)*R per job: Q the quality of the tier that answered (a score given to
  each tier, e.g. its accuracy on your own evaluation; by default 0.6 for the edge's small model
  and 0.85 for the cloud's large one), R the responsiveness: 1 for an answer within its deadline,
  deadline / latency after it. A job that got no answer (refused, expired, failed) has U = 0:
  it served no one, whatever it cost.
- cost per response (CPR): energy x price per kWh on the edge, the API's per-token prices in
  the cloud, averaged over every job of the run (a refused job costs nothing).
- performance-cost ratio PCR = mean U / CPR.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from broker.runtime.errors import ConfigError


@dataclass(frozen=True)
class Quality:
    edge: float = 0.6
    cloud: float = 0.85
    alpha: float = 0.5  # a: the weight of quality against responsiveness

    def __post_init__(self) -> None:
        if not all(0 <= v <= 1 for v in (self.edge, self.cloud, self.alpha)):
            raise ConfigError(f"plan: --quality-edge ({self.edge:g}), --quality-cloud ({self.cloud:g}) and --alpha "
                              f"({self.alpha:g}) are shares: each between 0 and 1")


def utility(tier: str | None, latency_s: float, deadline_s: float | None, quality: Quality) -> float:
    """One job's U; ``tier`` None or "none" for a job that got no answer."""
    if tier not in ("edge", "cloud"):
        return 0.0
    q = quality.cloud if tier == "cloud" else quality.edge
    r = 1.0 if deadline_s is None or latency_s <= deadline_s else deadline_s / max(latency_s, 1e-9)
    return quality.alpha * q + (1 - quality.alpha) * r


def pcr(jobs: Iterable[tuple[float, float]]) -> tuple[float, float, float]:
    """(mean U, CPR, PCR) of (utility, cost) per job; PCR is infinite when answers cost nothing, 0
    when nothing was answered."""
    rows = list(jobs)
    if not rows:
        return 0.0, 0.0, 0.0
    u = statistics.fmean(r[0] for r in rows)
    cpr = statistics.fmean(r[1] for r in rows)
    if cpr > 0:
        return u, cpr, u / cpr
    return u, cpr, float("inf") if u > 0 else 0.0  # free and useful; or no answer at all


def relative_error(predicted_s: float, actual_s: float) -> float:
    return abs(predicted_s - actual_s) / actual_s if actual_s > 0 else 0.0
