"""``fogmesh plan``: for a workload and probed devices, edge, cloud or a mix, and what each costs.

Each option is run through the simulation of fogmesh's own scheduler
(broker/simulation.py) on the devices' measured decode rates and first-token
times, and scored as the research defines it:

- cost per response (CPR): energy x price per kWh on the edge (energy per token =
  the device's power / its decode rate), the API's per-token prices in the cloud;
- utility U = a*Q + (1-a)*R and the performance-cost ratio PCR = U / CPR, as
  ``merit`` defines them (Q a score you give each tier, R the responsiveness).
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any

from broker.coordinator.predict import prefill_table
from broker.coordinator.scheduler import CloudTier
from broker.coordinator.settings import CoordinatorSettings
from broker.planning.merit import Quality
from broker.planning.simulation import SimAgent, SimJob, figures, simulate
from broker.runtime.errors import ConfigError

OPTIONS = ("edge", "cloud", "mix")


@dataclass(frozen=True)
class Workload:
    rate_per_s: float = 1.0
    completion_tokens: int = 64
    prompt_tokens: int = 50
    deadline_ms: float = 5000.0
    edge_only_share: float = 0.0  # jobs that must never leave the site (privacy edge-only)
    jobs: int = 2000
    seed: int = 11

    def trace(self) -> list[SimJob]:
        if not 0 < self.rate_per_s < math.inf or not 0 <= self.edge_only_share <= 1:
            raise ConfigError("plan: --rate must be positive and --edge-only between 0 and 1")
        if self.jobs < 1 or self.completion_tokens < 1 or self.prompt_tokens < 0 or not self.deadline_ms > 0:
            raise ConfigError(f"plan: --jobs ({self.jobs}) and --tokens ({self.completion_tokens}) must be 1 or more, "
                              f"--prompt-tokens ({self.prompt_tokens}) 0 or more and --deadline-ms "
                              f"({self.deadline_ms:g}) above 0")
        rng = random.Random(self.seed)
        t, out = 0.0, []
        for i in range(self.jobs):
            t += rng.expovariate(self.rate_per_s)
            out.append(SimJob(key=f"j{i}", arrival=t, max_tokens=self.completion_tokens,
                              tokens=self.completion_tokens, prompt_tokens=self.prompt_tokens,
                              deadline_s=self.deadline_ms / 1000,
                              privacy="edge-only" if rng.random() < self.edge_only_share else "cloud-ok"))
        return out


PREFETCH = CoordinatorSettings().prefetch  # the jobs a coordinator at its defaults places on a full agent


def agents_from_probe(report: dict[str, Any], count: int = 1, slots: int = 1, power_w: float = 10.0,
                      price_per_kwh: float = 0.30, model: str | None = None) -> list[SimAgent]:
    """``count`` devices like the one ``fogmesh probe --json`` measured, serving its first (or named) model."""
    if slots < 1:
        raise ConfigError(f"plan: --slots must be 1 or more (a device that runs no job at once serves nothing), "
                          f"not {slots}")
    if not (0 <= power_w < math.inf and 0 <= price_per_kwh < math.inf):
        raise ConfigError(f"plan: --power-w ({power_w:g}) and --price-per-kwh ({price_per_kwh:g}) must be 0 or more")
    models = [m for m in report.get("models", []) if not m.get("error") and (model is None or m["name"] == model)]
    if not models:
        raise ConfigError(f"probe of {report.get('host', '?')} has no usable model"
                          + (f" named {model!r}" if model else ""))
    m = models[0]
    adv = m["advertises"]
    tps = adv["decode_tps"]
    # the probe's rates by jobs at once, at the levels a device of ``slots`` slots has (the rest between)
    tps_at = [tps, *[0.0] * (slots - 1)]
    for level, rate in enumerate(adv.get("decode_tps_at") or [], start=1):
        if 1 < level <= slots and rate > 0:
            tps_at[level - 1] = rate
    return [SimAgent(name=f"{report.get('host', 'device')}-{i + 1}", slots=slots, tps=tps,
                     ttft_s=adv["ttft_ms"] / 1000, prefill_tps=adv.get("prefill_tps", 0.0),
                     prefill_tps_at=prefill_table(adv.get("prefill_tps_at") or ()),
                     tps_at=tuple(tps_at) if slots > 1 else (), batched=slots > 1 and adv.get("batched", False),
                     energy_j_per_token=power_w / tps if tps else 0.0, price_per_kwh=price_per_kwh,
                     prefetch=PREFETCH) for i in range(count)]


def evaluate(workload: Workload, agents: list[SimAgent], cloud: CloudTier, quality: Quality) -> list[dict[str, Any]]:
    if not (0 < cloud.decode_tps < math.inf and 0 <= cloud.latency_s < math.inf
            and min(cloud.price_in_per_1k, cloud.price_out_per_1k) >= 0):
        raise ConfigError(f"plan: --cloud-tps ({cloud.decode_tps:g}) must be above 0, --cloud-latency-s "
                          f"({cloud.latency_s:g}) and the cloud's prices ({cloud.price_in_per_1k:g}, "
                          f"{cloud.price_out_per_1k:g}) 0 or more")
    rows = []
    for option in OPTIONS:
        jobs = workload.trace()
        unservable = 0
        if option == "cloud":
            unservable = sum(1 for j in jobs if j.privacy == "edge-only")
            jobs = [j for j in jobs if j.privacy != "edge-only"]
        fleet = [] if option == "cloud" else agents
        tier = dataclasses.replace(cloud, enabled=option != "edge")
        if not jobs or (option != "cloud" and not fleet):
            continue
        out = simulate(jobs, fleet, tier, cloud_workers=10_000, policy="deadline")
        fig = figures(jobs, out, fleet, quality)
        row: dict[str, Any] = {"option": option, "jobs": len(jobs), "unservable": unservable, **fig}
        # a job the option cannot take at all misses its deadline too
        row["deadline_hit_rate"] = fig["deadline_hit_rate"] * len(jobs) / (len(jobs) + unservable)
        # Where jobs arrive faster than the devices can serve them (and no cloud takes the rest), the
        # queue grows without bound: the simulated latencies then only say how long the trace was.
        capacity = sum(a.slots * a.tps for a in fleet) / max(1, workload.completion_tokens)
        row["capacity_jobs_per_s"] = round(capacity, 3) if fleet else None
        row["over_capacity"] = option == "edge" and workload.rate_per_s > capacity
        row.pop("load_balance", None)
        rows.append(row)
    return rows


def recommend(rows: list[dict[str, Any]], min_hit_rate: float = 0.95) -> tuple[str, str]:
    """The option to take and why: the best PCR among those that serve every job and meet deadlines."""
    fine = [r for r in rows if r["unservable"] == 0 and r["deadline_hit_rate"] >= min_hit_rate]
    if fine:
        best = max(fine, key=lambda r: r["pcr"])
        return best["option"], (f"meets {min_hit_rate:.0%} of deadlines and has the best performance-cost ratio "
                                f"of those that do")
    best = max(rows, key=lambda r: (r["unservable"] == 0, r["deadline_hit_rate"], r["utility"]))
    return best["option"], (f"no option meets {min_hit_rate:.0%} of deadlines; this one comes closest "
                            "(add devices, slots or a faster model, or relax the deadline)")
