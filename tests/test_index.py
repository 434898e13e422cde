"""The indexed decision against the full scan (``scheduler.decide``, the reference) on random fleets.

"Equally good", per policy, is what these tests assert; in every case the target (agent, wait or
cloud), the reason and the at-risk flag are the scan's, and the agent chosen is eligible:

* ``deadline``, an agent that meets the deadline: the scan's agent itself (the index walks the
  same order: completion, then cost, load and name break ties as the scan does).
* ``deadline``, no tier meets it (at risk): an agent with the scan's predicted completion; between
  agents that tie on it the scan takes the first by name, the index may take a less loaded one.
* ``load-aware``, and every policy's "wait for the first free": the scan's agent itself.
* ``random`` and ``weighted``: an agent among the scan's eligible agents with room; the draw
  itself is uniform (or in proportion to capability) among them, checked by counting below.
* ``cloud``: the scan's predicted time and cost.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter

import pytest

from broker.coordinator.index import AgentIndex
from broker.coordinator.scheduler import POLICIES, AgentView, CloudTier, Decision, JobSpec, decide

NOW = 1_000.0
MODELS = ("m", "x", "y")


def random_view(rng: random.Random, name: str) -> AgentView:
    models = frozenset(rng.sample(MODELS, rng.randint(1, 2)))
    return AgentView(
        agent=name, online=rng.random() > 0.1, fresh=rng.random() > 0.1, models=models,
        chat_models=frozenset(m for m in models if rng.random() < 0.5), default_model=min(models),
        slots=rng.randint(1, 4), outstanding=rng.randint(0, 6), outstanding_tokens=rng.choice([0, 64, 128, 300]),
        # a full agent's jobs one by one (the coordinator's), or only their sum (an older view)
        ahead_s=rng.choice([(), tuple((rng.choice([0.0, 0.5, rng.uniform(0, 9)]),
                                       rng.choice([math.inf, rng.uniform(-1, 9)])) for _ in range(rng.randint(1, 6)))]),
        prefill_ahead_s=rng.choice([0.0, 0.0, rng.uniform(0, 5)]),
        # few distinct rates and TTFTs, so that predicted completions tie often
        decode_tps=rng.choice([10.0, 20.0, 50.0, 50.0, rng.uniform(5, 100)]),
        ttft_ms=rng.choice([20.0, 50.0, 50.0, rng.uniform(1, 300)]),
        # agents that advertise prefill and per-concurrency rates beside ones that do not
        prefill_tps=rng.choice([0.0, 0.0, 200.0, rng.uniform(50, 2000)]),
        decode_tps_at=rng.choice([(), (), (40.0, 30.0, 0.0, 12.0), tuple(rng.choice([0.0, rng.uniform(5, 60)])
                                                                       for _ in range(rng.randint(1, 4)))]),
        budget_tokens=rng.choice([0, 0, 0, 200, 500]), budget_used=rng.randint(0, 500),
        energy_j_per_token=rng.choice([0.0, 0.0, 0.0, 1.0, 5.0, rng.uniform(0, 5)]),
        price_per_kwh=rng.choice([0.0, 0.3, 0.3]), prefetch=rng.choice([0, 1, 1, 2]),
    )


def random_job(rng: random.Random, names: list[str], i: int) -> JobSpec:
    return JobSpec(
        key=f"d/j{i}", max_tokens=rng.choice([1, 16, 64, 64, 128, rng.randint(1, 512)]),
        prompt_tokens=rng.choice([rng.randint(0, 100), rng.randint(500, 1500)]),
        expect_tokens=rng.choice([0, 0, rng.randint(1, 300)]), model=rng.choice([None, "m", "m", "x", "y", "z"]),
        chat=rng.random() < 0.2, priority=rng.randint(0, 9),
        deadline_at=rng.choice([None, NOW + rng.uniform(0.05, 0.5), NOW + rng.uniform(0.5, 12)]),
        privacy=rng.choice(["cloud-ok", "edge-only"]), offline_ok=rng.random() < 0.3,
        exclude=frozenset(rng.sample(names, min(len(names), rng.choice([0, 0, 0, 1, 3])))),
    )


def random_cloud(rng: random.Random) -> CloudTier:
    return CloudTier(enabled=rng.random() < 0.6, reachable=rng.random() < 0.8, latency_s=rng.uniform(0.1, 2),
                     decode_tps=rng.uniform(20, 200), price_in_per_1k=0.5, price_out_per_1k=1.5,
                     ttft_s=rng.choice([0.0, rng.uniform(0, 1)]), workers=rng.choice([0, 1, 4]),
                     in_flight=rng.randint(0, 8), service_s=rng.choice([0.0, rng.uniform(0.5, 5)]))


def assert_equally_good(ref: Decision, got: Decision, views: dict[str, AgentView], policy: str) -> None:
    assert (got.target, got.reason, got.at_risk, got.policy) == (ref.target, ref.reason, ref.at_risk, ref.policy)
    if ref.agent is None:
        assert got.agent is None
        assert (got.predicted_s, got.cost) == (ref.predicted_s, ref.cost)
        return
    assert got.agent is not None
    chosen = {c.agent: c for c in got.candidates}[got.agent]
    assert chosen.eligible and chosen.has_room == (ref.target == "agent")
    if ref.reason in ("random choice", "drawn by capability"):
        assert got.agent in {c.agent for c in ref.candidates if c.eligible and c.has_room}
    elif ref.at_risk:
        assert got.predicted_s == ref.predicted_s
    else:
        assert (got.agent, got.predicted_s, got.cost) == (ref.agent, ref.predicted_s, ref.cost)


@pytest.mark.parametrize("seed", range(12))
def test_the_index_decides_as_the_full_scan_on_random_fleets(seed):
    rng = random.Random(seed)
    truth: dict[str, AgentView] = {}
    index = AgentIndex()
    names = [f"a{i:02d}" for i in range(rng.choice([1, 5, 30, 80]))]
    for name in names:
        truth[name] = random_view(rng, name)
        index.put(truth[name])
    for i in range(400):
        # the fleet changes between decisions, as statuses and jobs arrive: loads, rooms, agents gone and back
        for _ in range(rng.randint(0, 4)):
            name = rng.choice(names)
            if name in truth and rng.random() < 0.15:
                del truth[name]
                index.remove(name)
            elif name in truth and rng.random() < 0.7:
                v = truth[name]
                truth[name] = dataclasses.replace(v, outstanding=max(0, v.outstanding + rng.choice([-1, 1])),
                                                  outstanding_tokens=rng.choice([0, 64, 200]))
                index.put(truth[name])
            else:
                truth[name] = random_view(rng, name)
                index.put(truth[name])
        job, cloud = random_job(rng, names, i), random_cloud(rng)
        for policy in POLICIES:
            ref = decide(job, list(truth.values()), NOW, policy, cloud=cloud, rng=random.Random(i))
            got = index.decide(job, NOW, policy, cloud=cloud, rng=random.Random(i))
            assert_equally_good(ref, got, truth, policy)
    assert sorted(v.agent for v in index.views()) == sorted(truth)


def test_a_decision_over_1000_equal_agents_looks_at_a_handful():
    index = AgentIndex()
    for i in range(1000):
        index.put(AgentView(agent=f"a{i:04d}", models=frozenset({"m"}), slots=4, outstanding=i % 3,
                            decode_tps=50.0, ttft_ms=50.0))
    spec = JobSpec(key="d/j", max_tokens=64, model="m", deadline_at=NOW + 10)
    for policy in POLICIES:
        d = index.decide(spec, NOW, policy, rng=random.Random(1))
        assert d.target == "agent" and len(d.candidates) <= 2, policy
    # the least loaded of the equals, as the scan picks (its tie-break spreads the work)
    assert index.decide(spec, NOW, "deadline").agent == "a0000"
    assert index.decide(spec, NOW, "load-aware").agent == "a0000"


def test_weighted_and_random_draws_keep_their_proportions_among_eligible_agents():
    index = AgentIndex()
    for name, tps in (("small", 10.0), ("big", 30.0), ("excluded", 1000.0)):
        index.put(AgentView(agent=name, models=frozenset({"m"}), decode_tps=tps, ttft_ms=50.0))
    spec = JobSpec(key="d/j", max_tokens=64, exclude=frozenset({"excluded"}))
    rng = random.Random(7)
    weighted = Counter(index.decide(spec, NOW, "weighted", rng=rng).agent for _ in range(4000))
    assert 0.70 < weighted["big"] / 4000 < 0.80 and "excluded" not in weighted
    uniform = Counter(index.decide(spec, NOW, "random", rng=rng).agent for _ in range(4000))
    assert 0.45 < uniform["big"] / 4000 < 0.55 and "excluded" not in uniform
