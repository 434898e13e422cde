"""The scheduler is a pure function: crafted views in, a decision out."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.coordinator.scheduler import POLICIES, AgentView, CloudTier, JobSpec, decide, edge_cost, order, predict

NOW = 1_000.0


def view(name: str, **kw) -> AgentView:
    base = dict(agent=name, models=frozenset({"m"}), slots=1, decode_tps=50.0, ttft_ms=50.0)
    base.update(kw)
    return AgentView(**base)


def job(**kw) -> JobSpec:
    base = dict(key="d/j", max_tokens=64)
    base.update(kw)
    return JobSpec(**base)


def test_prediction_is_wait_plus_ttft_plus_decode():
    v = view("a", outstanding=2, outstanding_tokens=100, slots=1, decode_tps=50, ttft_ms=100)
    wait, completion = predict(v, job(max_tokens=50))
    assert wait == pytest.approx(2.0)
    assert completion == pytest.approx(2.0 + 0.1 + 1.0)


def test_deadline_policy_picks_the_fastest_when_costs_tie():
    d = decide(job(), [view("slow", decode_tps=10), view("fast", decode_tps=100)], NOW)
    assert (d.target, d.agent) == ("agent", "fast")


def test_deadline_policy_prefers_the_cheaper_of_near_equals_that_meet_the_deadline():
    agents = [view("fast-costly", decode_tps=100, energy_j_per_token=5, price_per_kwh=0.3),
              view("nearly-as-fast-cheap", decode_tps=90, energy_j_per_token=1, price_per_kwh=0.3)]
    assert decide(job(deadline_at=NOW + 5), agents, NOW).agent == "nearly-as-fast-cheap"
    d = decide(job(deadline_at=NOW + 0.7), agents, NOW)  # only the fast one makes it
    assert d.agent == "fast-costly"


def test_deadline_policy_does_not_trade_much_latency_for_cost():
    agents = [view("fast-costly", decode_tps=100, energy_j_per_token=5, price_per_kwh=0.3),
              view("slow-cheap", decode_tps=40, energy_j_per_token=1, price_per_kwh=0.3)]
    assert decide(job(deadline_at=NOW + 5), agents, NOW).agent == "fast-costly"


def test_a_job_no_agent_can_finish_in_time_goes_to_the_cloud_if_privacy_allows():
    agents = [view("a", decode_tps=10)]
    cloud = CloudTier(enabled=True, latency_s=0.2, decode_tps=200)
    assert decide(job(deadline_at=NOW + 1), agents, NOW, cloud=cloud).target == "cloud"
    d = decide(job(deadline_at=NOW + 1, privacy="edge-only"), agents, NOW, cloud=cloud)
    assert (d.target, d.agent, d.at_risk) == ("agent", "a", True)


@pytest.mark.parametrize("reason,kw", [("offline", {"online": False}), ("stale", {"fresh": False}),
                                       ("model_missing", {"models": frozenset({"other"})}),
                                       ("over_budget", {"budget_tokens": 100, "budget_used": 90})])
def test_ineligible_agents_are_never_chosen(reason, kw):
    for policy in POLICIES:
        d = decide(job(model="m"), [view("bad", decode_tps=1000, **kw), view("ok")], NOW, policy, rng=random.Random(1))
        assert d.agent == "ok", policy
        assert {c.agent: c.reason for c in d.candidates}["bad"] == reason


def test_chat_goes_only_to_an_agent_that_can_render_it():
    can = view("can", default_model="m", chat_models=frozenset({"m"}))
    cannot = view("cannot", decode_tps=1000, default_model="m")
    for policy in POLICIES:
        for spec in (job(chat=True), job(chat=True, model="m")):
            d = decide(spec, [cannot, can], NOW, policy, rng=random.Random(1))
            assert d.agent == "can", policy
            assert {c.agent: c.reason for c in d.candidates}["cannot"] == "no_chat_template"
        assert decide(job(chat=True), [cannot], NOW, policy).target == "wait"
        assert decide(job(), [cannot, can], NOW, "deadline").agent == "cannot"  # a prompt: the faster one


def test_a_full_agent_means_wait_for_the_deadline_policy():
    d = decide(job(), [view("a", outstanding=2, prefetch=1)], NOW)
    assert (d.target, d.agent) == ("wait", "a")


def test_load_aware_picks_the_least_loaded():
    agents = [view("busy", outstanding=1, slots=2), view("idle", slots=2)]
    assert decide(job(), agents, NOW, "load-aware").agent == "idle"


def test_weighted_draws_in_proportion_to_capability():
    agents = [view("small", decode_tps=10), view("big", decode_tps=30)]
    rng = random.Random(7)
    picks = Counter(decide(job(), agents, NOW, "weighted", rng=rng).agent for _ in range(4000))
    assert 0.70 < picks["big"] / 4000 < 0.80


def test_random_uses_every_agent():
    agents = [view(f"a{i}") for i in range(4)]
    rng = random.Random(3)
    assert {decide(job(), agents, NOW, "random", rng=rng).agent for _ in range(200)} == {"a0", "a1", "a2", "a3"}


def test_edge_cost_is_energy_times_price():
    v = view("a", energy_j_per_token=3.6, price_per_kwh=0.5)
    assert edge_cost(v, 1_000_000) == pytest.approx(0.5)


views = st.builds(
    AgentView,
    agent=st.sampled_from(["a", "b", "c", "d"]), online=st.booleans(), fresh=st.booleans(),
    models=st.sampled_from([frozenset({"m"}), frozenset({"x"})]), slots=st.integers(1, 4),
    outstanding=st.integers(0, 6), outstanding_tokens=st.integers(0, 500), decode_tps=st.floats(1, 200),
    ttft_ms=st.floats(1, 500), budget_tokens=st.integers(0, 500), budget_used=st.integers(0, 500),
)


@given(st.lists(views, max_size=6, unique_by=lambda v: v.agent), st.sampled_from(POLICIES),
       st.sampled_from(["edge-only", "cloud-ok"]), st.integers(1, 256), st.booleans())
def test_never_an_ineligible_agent_and_never_edge_only_work_to_the_cloud(agents, policy, privacy, tokens, cloud_on):
    spec = job(model="m", privacy=privacy, max_tokens=tokens, deadline_at=NOW + 2)
    d = decide(spec, agents, NOW, policy, cloud=CloudTier(enabled=cloud_on), rng=random.Random(0))
    if d.agent is not None:
        chosen = next(v for v in agents if v.agent == d.agent)
        assert chosen.online and chosen.fresh and "m" in chosen.models
        assert not chosen.budget_tokens or chosen.budget_used + tokens <= chosen.budget_tokens
    if privacy == "edge-only":
        assert d.target != "cloud"
    if d.target == "cloud":
        assert cloud_on


def test_priority_orders_waiting_jobs_then_age():
    jobs = [job(key="old-low", priority=1), job(key="new-high", priority=9), job(key="new-low", priority=1)]
    created = {"old-low": NOW - 1, "new-high": NOW, "new-low": NOW}
    assert [j.key for j in order(jobs, created, NOW, aging_s=10)] == ["new-high", "old-low", "new-low"]


@given(st.integers(0, 9), st.lists(st.integers(0, 9), min_size=1, max_size=20), st.floats(0.1, 60))
def test_no_priority_starves(low_priority, newcomers, aging_s):
    # A job that has waited long enough outranks any job that arrives after it.
    waited = (9 - low_priority + 1) * aging_s
    jobs = [job(key="starving", priority=low_priority)]
    jobs += [job(key=f"n{i}", priority=p) for i, p in enumerate(newcomers)]
    created = {"starving": NOW - waited, **{f"n{i}": NOW for i in range(len(newcomers))}}
    assert order(jobs, created, NOW, aging_s)[0].key == "starving"


def test_a_backlog_of_edge_only_jobs_does_not_block_cloud_ok_jobs_behind_it():
    from broker.planning.simulation import SimAgent, SimJob, simulate

    # one slow agent, 40 edge-only jobs at once, then one cloud-ok job: the cloud-ok job must not
    # wait behind the backlog while the cloud is free
    jobs = [SimJob(key=f"e{i}", arrival=0.0, max_tokens=64, tokens=64, prompt_tokens=10, deadline_s=None,
                   privacy="edge-only") for i in range(40)]
    jobs.append(SimJob(key="c", arrival=0.01, max_tokens=64, tokens=64, prompt_tokens=10, deadline_s=3.0))
    agent = SimAgent(name="a", slots=1, tps=20.0, ttft_s=0.05)
    cloud = CloudTier(enabled=True, latency_s=1.0, decode_tps=60.0)
    out = simulate(jobs, [agent], cloud, cloud_workers=4, policy="deadline")
    assert out["c"]["tier"] == "cloud" and out["c"]["latency_s"] < 3.0
    assert all(out[f"e{i}"]["tier"] == "edge" for i in range(40))


def test_the_simulator_slows_a_running_job_while_another_shares_its_agent_and_speeds_it_up_after():
    from broker.planning.simulation import DISPATCH_S, SimAgent, SimJob, simulate

    # 20 tokens/s alone, 10 each with two at once: the short job's 10 tokens take 1 s beside the
    # long one, which decodes 10 of its 100 meanwhile and the other 90 alone in 4.5 s
    jobs = [SimJob(key="long", arrival=0.0, max_tokens=100, tokens=100, prompt_tokens=0, deadline_s=None),
            SimJob(key="short", arrival=0.0, max_tokens=10, tokens=10, prompt_tokens=0, deadline_s=None)]
    agent = SimAgent(name="a", slots=2, tps=20.0, ttft_s=0.0, tps_at=(20.0, 10.0))
    out = simulate(jobs, [agent], CloudTier(enabled=False), cloud_workers=0, policy="load-aware")
    assert out["short"]["latency_s"] == pytest.approx(1.0 + 2 * DISPATCH_S, abs=0.02)
    assert out["long"]["latency_s"] == pytest.approx(1.0 + 4.5 + 2 * DISPATCH_S, abs=0.02)


def test_the_simulator_slows_a_batched_agents_jobs_while_a_long_prompt_is_evaluated_beside_them():
    from broker.planning.simulation import DISPATCH_S, SimAgent, SimJob, simulate

    # 20 tokens/s at either concurrency; a 640-token log takes 2 s to evaluate at 320 tokens/s, and
    # meanwhile each of the reading's tokens also waits for 64 of its tokens (0.2 s): 4 tokens/s
    jobs = [SimJob(key="reading", arrival=0.0, max_tokens=40, tokens=40, prompt_tokens=0, deadline_s=None),
            SimJob(key="log", arrival=0.0, max_tokens=1, tokens=1, prompt_tokens=640, deadline_s=None)]
    for batched, reading_s in ((False, 2.0), (True, 2.0 + (40 - 2.0 * 4) / 20)):
        agent = SimAgent(name="a", slots=2, tps=20.0, ttft_s=0.0, prefill_tps=320.0, tps_at=(20.0, 20.0),
                         batched=batched)
        out = simulate(jobs, [agent], CloudTier(enabled=False), cloud_workers=0, policy="load-aware")
        assert out["reading"]["latency_s"] == pytest.approx(reading_s + 2 * DISPATCH_S, abs=0.05), batched


def test_the_simulator_stops_a_job_at_its_deadline_and_the_next_one_takes_its_slot():
    from broker.planning.simulation import SimAgent, SimJob, figures, simulate

    jobs = [SimJob(key="long", arrival=0.0, max_tokens=100, tokens=100, prompt_tokens=0, deadline_s=1.0),
            SimJob(key="next", arrival=0.1, max_tokens=10, tokens=10, prompt_tokens=0, deadline_s=3.0)]
    agent = SimAgent(name="a", slots=1, tps=20.0, ttft_s=0.0)
    out = simulate(jobs, [agent], CloudTier(enabled=False), cloud_workers=0, policy="load-aware")
    assert out["long"]["status"] == "expired" and out["long"]["latency_s"] == pytest.approx(1.0)
    assert out["next"]["tier"] == "edge" and out["next"]["latency_s"] == pytest.approx(0.9 + 0.5, abs=0.05)
    assert figures(jobs, out, [agent])["deadline_hit_rate"] == 0.5


def test_a_simulated_job_placed_after_its_deadline_frees_its_slot_at_once_and_time_never_runs_back():
    from broker.planning.simulation import DISPATCH_S, SimAgent, SimJob, simulate

    jobs = [SimJob(key="j0", arrival=0.0, max_tokens=20, tokens=20, prompt_tokens=0, deadline_s=None),
            SimJob(key="j1", arrival=0.01, max_tokens=20, tokens=20, prompt_tokens=0, deadline_s=1.0),
            SimJob(key="j2", arrival=0.02, max_tokens=20, tokens=20, prompt_tokens=0, deadline_s=None)]
    out = simulate(jobs, [SimAgent(name="a", slots=1, tps=10.0, ttft_s=0.0)], CloudTier(enabled=False),
                   cloud_workers=0, policy="load-aware")
    assert out["j1"]["status"] == "expired" and out["j1"]["latency_s"] > 1.99  # it waited behind j0 for 2 s
    assert out["j2"]["latency_s"] == pytest.approx(4.0 - 0.02 + 3 * DISPATCH_S, abs=0.05)  # after j0, not beside it


def test_a_simulated_full_agent_shows_the_coordinator_the_tokens_still_to_come():
    from broker.planning.simulation import SimAgent, SimJob, _Run

    agent = SimAgent(name="a", slots=1, tps=20.0, ttft_s=0.1, busy_expected=100)
    agent.running["j"] = _Run(SimJob(key="j", arrival=0.0, max_tokens=100, tokens=100, prompt_tokens=0,
                                     deadline_s=None), left=100.0, decoding_at=0.1, planned=100)
    assert agent.view(0.05).outstanding_tokens == 100  # not decoding yet
    assert agent.view(2.1).outstanding_tokens == 60  # 2 s at 20 tokens/s
    assert agent.view(9.0).outstanding_tokens == 0


def test_a_dispatch_pass_sets_aside_edge_only_jobs_once_their_model_is_full():
    from broker.coordinator.scheduler import LOOK_PAST, DispatchPass

    p = DispatchPass()
    first = job(key="e0", privacy="edge-only", model="m")
    assert not p.set_aside("e0", first)
    p.hold("e0", first)
    for i in range(1, 100):  # undecided and not counted against the look past
        assert p.set_aside(f"e{i}", job(key=f"e{i}", privacy="edge-only", model="m"))
    assert not p.done
    assert not p.set_aside("other", job(key="other", privacy="edge-only", model="bigger"))
    for i in range(LOOK_PAST):
        p.hold(f"c{i}", job(key=f"c{i}"))
    assert p.done and len(p.waiting()) == 100 + LOOK_PAST


def test_the_deadline_policy_spreads_work_over_equal_agents():
    views = [view(f"a{i}", slots=4) for i in range(5)]
    chosen = []
    for i in range(10):  # place 10 jobs one after another, as a dispatch pass does
        d = decide(job(key=f"d/j{i}", deadline_at=NOW + 10), views, NOW, "deadline")
        chosen.append(d.agent)
        views = [dataclasses.replace(v, outstanding=v.outstanding + 1) if v.agent == d.agent else v for v in views]
    assert Counter(chosen) == {f"a{i}": 2 for i in range(5)}


def test_the_simulator_plans_with_what_an_agent_advertises_and_runs_at_what_it_does():
    from broker.planning.simulation import DISPATCH_S, SimAgent, SimJob, simulate

    # advertised: 40 tokens/s and 400 prompt tokens/s; it runs at 20 and 200: a 200-token prompt and
    # 40 tokens are planned at 1.5 s and take 3 s
    jobs = [SimJob(key="j", arrival=0.0, max_tokens=40, tokens=40, prompt_tokens=200, deadline_s=None)]
    agent = SimAgent(name="a", slots=1, tps=20.0, ttft_s=0.0, prefill_tps=200.0, tps_at=(20.0,),
                     advertised_prefill_tps=400.0, advertised_tps_at=(40.0,))
    out = simulate(jobs, [agent], CloudTier(enabled=False), cloud_workers=0, policy="deadline")
    assert out["j"]["predicted_s"] == pytest.approx(192 / 400 + 40 / 40 + DISPATCH_S, abs=0.01)  # bucketed prompt
    assert out["j"]["latency_s"] == pytest.approx(200 / 200 + 40 / 20 + 2 * DISPATCH_S, abs=0.01)


def test_a_replay_placed_as_measured_times_each_job_where_the_measured_run_ran_it():
    from bench.simulate import placements
    from broker.planning.simulation import SimAgent, SimJob, simulate

    rows = [{"decision": {"target": "cloud"}}, {"decision": {"target": "agent", "agent": "slow"}},
            {"decision": {"target": "none"}}, {}]
    assert placements(rows) == ["cloud", "slow", "", ""]
    jobs = [SimJob(key=f"j{i}", arrival=i * 10.0, max_tokens=20, tokens=20, prompt_tokens=0, deadline_s=None,
                   placed=where) for i, where in enumerate(["cloud", "slow", ""])]
    agents = [SimAgent(name="fast", slots=1, tps=50.0, ttft_s=0.0), SimAgent(name="slow", slots=1, tps=5.0, ttft_s=0.0)]
    cloud = CloudTier(enabled=True, latency_s=0.5, decode_tps=40.0)
    out = simulate(jobs, agents, cloud, cloud_workers=4, policy="deadline")
    # the scheduler would send all three to the idle fast agent; the first two go where they were placed
    assert out["j0"]["tier"] == "cloud" and out["j1"]["latency_s"] > 20 / 5 > out["j2"]["latency_s"]


def test_the_replay_counts_each_prompt_as_the_edge_model_did_in_any_run():
    from bench.simulate import edge_prompt_tokens

    def row(job: str, tier: str | None, prompt_tokens: int) -> dict[str, object]:
        return {"job": job, "tier": tier, "prompt_tokens": prompt_tokens}

    runs = [{"rows": [row("j3", "cloud", 284), row("j7", None, 0), row("j1", "edge", 9)]},
            {"rows": [row("j3", "edge", 1090), row("j7", "cloud", 284), row("j5", None, 0)]}]
    counted = edge_prompt_tokens(runs)
    # j3 ran at the edge in the second run; j7 (a log too) never did: the logs' count; j5 (a reading,
    # like j1) never did: the readings'
    assert counted == {"j3": 1090, "j7": 1090, "j1": 9, "j5": 9}


def test_a_simulated_job_waits_on_a_busy_agent_that_takes_prefetched_jobs_as_the_coordinator_places_it():
    from broker.planning.simulation import DISPATCH_S, SimAgent, SimJob, simulate

    # the fast agent is busy for 1 s; the slow one is free but takes 10 s for the same answer. With
    # room to prefetch one job (the coordinator's default), `deadline` queues it on the fast agent
    jobs = [SimJob(key="a", arrival=0.0, max_tokens=20, tokens=20, prompt_tokens=0, deadline_s=15.0),
            SimJob(key="b", arrival=0.1, max_tokens=20, tokens=20, prompt_tokens=0, deadline_s=15.0)]
    for prefetch, b_s in ((1, 2.0 + DISPATCH_S - 0.1), (0, 10.0 + 2 * DISPATCH_S)):
        agents = [SimAgent(name="fast", slots=1, tps=20.0, ttft_s=0.0, prefetch=prefetch),
                  SimAgent(name="slow", slots=1, tps=2.0, ttft_s=0.0, prefetch=prefetch)]
        out = simulate(jobs, agents, CloudTier(enabled=False), cloud_workers=0, policy="deadline")
        assert out["b"]["node"] == ("fast" if prefetch else "slow")
        assert out["b"]["latency_s"] == pytest.approx(b_s, abs=0.02), prefetch
