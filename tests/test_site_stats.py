"""What the site did lately (broker/coordinator/stats.py): the figures the dashboard, Home
Assistant and `fogmesh status --all-sites` show."""

from __future__ import annotations

from broker.coordinator.stats import STEP_S, STEPS, SiteStats


def test_the_last_minute_counts_jobs_cloud_share_and_median_latency():
    stats = SiteStats()
    t0 = 1_000_000.0
    stats.record(t0 - 120, "a/old", "done", "edge", latency_ms=9999.0)  # outside the window
    for i, (tier, ms) in enumerate([("edge", 100.0), ("edge", 300.0), ("cloud", 2000.0), ("cloud", 900.0)]):
        stats.record(t0 + i, f"a/{i}", "done", tier, tokens=10, latency_ms=ms, ttft_ms=ms / 10,
                     cloud_spend=0.01 if tier == "cloud" else 0.0)
    stats.record(t0 + 5, "a/bad", "rejected", "none", code="invalid_json")
    w = stats.window(t0 + 10)
    assert (w.finished, w.done) == (5, 4)
    assert w.cloud_share == 0.5
    assert w.latency_p50_ms == 600.0 and w.ttft_p50_ms == 60.0
    assert w.totals == {"done": {"edge": 3, "cloud": 2}, "rejected": {"none": 1}}
    assert abs(w.cloud_spend - 0.02) < 1e-9
    assert [f.key for f in stats.last][-1] == "a/bad" and stats.last[-1].code == "invalid_json"


def test_decision_times_keep_the_latest_4096_with_their_median_and_p99():
    stats = SiteStats()
    assert stats.window(0.0).decision_p99_ms == 0.0  # none made yet: no figure, not an error
    for i in range(5000):  # the first 904 fall out: only the latest 4,096 count
        cpu = 9.0 if i < 904 else (0.5 if i % 50 == 0 else 0.05)  # 2% slow
        stats.decided(cpu, cpu * 3)
    w = stats.window(0.0)
    assert (w.decision_p50_ms, w.decision_p99_ms, w.decision_wall_p99_ms) == (0.05, 0.5, 1.5)


def test_history_has_a_step_for_every_10_seconds_even_quiet_ones_and_keeps_15_minutes():
    stats = SiteStats()
    t0 = 1_000_000.0
    stats.record(t0, "a/1", "done", "edge", tokens=7, latency_ms=50.0)
    stats.record(t0 + 35, "a/2", "expired", "none")
    h = stats.history(t0 + 41)
    assert h.step_s == STEP_S
    assert [s.ts - h.steps[0].ts for s in h.steps] == [0, 10, 20, 30, 40]
    assert (h.steps[0].done, h.steps[0].tokens, h.steps[0].latency_p50_ms) == (1, 7, 50.0)
    assert h.steps[3].expired == 1 and sum(s.done for s in h.steps[1:]) == 0
    later = stats.history(t0 + 3600)  # an hour of silence: 15 minutes of empty steps, no more
    assert len(later.steps) == STEPS and all(s.done == 0 for s in later.steps)
    assert later.steps[-1].ts == t0 + 3600 - (t0 + 3600) % STEP_S
