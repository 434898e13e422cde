"""Each benchmark at a tiny size, so none rots. The figures themselves come from `make bench`."""

from __future__ import annotations

import orjson
import pytest

from bench import batching, cluster, dispatch, harness, overhead, pyspy, scale, simulate, structured

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def results_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    return tmp_path


def test_overhead_runs(results_in_tmp):
    assert overhead.main(["--rounds", "1", "--max-tokens", "8", "--threads", "1"]) == 0
    r = orjson.loads((results_in_tmp / "overhead-threads1.json").read_bytes())
    assert r["mesh"]["decode_tps"]["p50"] > 0 and r["direct"]["ttft_ms"]["p50"] > 0
    assert r["greedy"]["mesh"]["tokens"]["p50"] > 0 and r["greedy"]["mesh_over_direct_tps"] > 0


def test_structured_runs(results_in_tmp):
    assert structured.main(["--rounds", "1", "--max-tokens", "120", "--threads", "1"]) == 0
    r = orjson.loads((results_in_tmp / "structured.json").read_bytes())
    assert r["fogmesh"]["decode_tps"]["p50"] > 0 and r["invalid"] == []


def test_batching_runs(results_in_tmp):
    assert batching.main(["--rounds", "1", "--max-tokens", "8", "--jobs", "2"]) == 0
    r = orjson.loads((results_in_tmp / "batching.json").read_bytes())
    run = r["runs"][0]
    assert run["jobs"] == 2 and all(run[side]["tps"]["p50"] > 0 for side in ("batched", "separate", "bare"))
    assert 0 < run["batched"]["tokens"]["p50"] <= 16 and 0 < run["separate"]["tokens"]["p50"] <= 16


def test_dispatch_runs(results_in_tmp):
    assert dispatch.main(["--rates", "20", "--seconds", "1", "--agents", "1", "--slots", "2"]) == 0
    r = orjson.loads((results_in_tmp / "dispatch.json").read_bytes())
    assert r["results"][0]["dispatch_ms"]["n"] == 20


def test_scale_runs(results_in_tmp):
    assert scale.main(["--agents", "3", "--jobs", "50", "--devices", "10", "--backlog", "300", "--profile", ""]) == 0
    r = orjson.loads((results_in_tmp / "scale.json").read_bytes())
    assert r["results"][0]["fogmesh"]["jobs_per_s"] > 0
    assert r["results"][0]["fogmesh"]["decision_ms"]["indexed"]["n"] > 0
    assert r["results"][0]["fogmesh"]["decision_ms"]["coordinator"]["p99"] > 0  # the coordinator's own figure
    held = r["backlog"]
    assert held["queued"] >= 300 and held["answer"] == "done" and held["answered_s"] > held["online_s"] > 0


def test_a_profile_says_where_the_coordinator_spends_its_time():
    raw = ("thread (1): MainThread;Coordinator.step (broker/coordinator/loop.py);Ledger._write (broker/x.py) 3\n"
           "thread (2): paho-mqtt-client-x;Client.loop_read (paho/mqtt/client.py) 1\n")
    p = pyspy.summarize(raw)
    assert p["samples"] == 4 and p["threads"] == {"loop": 0.75, "network (paho)": 0.25}
    assert p["parts"]["ledger (SQLite)"] == 0.75 and p["hottest"][0] == ["Ledger._write (x.py)", 0.75]


def test_cluster_and_simulator_run(results_in_tmp):
    assert cluster.main(["--jobs", "4", "--seconds", "2", "--patterns", "bursty", "--policies", "deadline",
                         "--budget-window-s", "1", "--cloud-workers", "1"]) == 0
    r = orjson.loads((results_in_tmp / "cluster.json").read_bytes())
    assert {run["policy"] for run in r["runs"]} == {"deadline", "cloud-only"}
    answered = [row for run in r["runs"] if run["policy"] == "deadline" for row in run["rows"]
                if row["status"] == "done"]
    assert answered and all(0 < row["decision"]["parts"]["tokens"] <= 32 for row in answered)  # in parts
    assert simulate.main(["--agents", "5", "--jobs", "200", "--cluster", str(results_in_tmp / "cluster.json")]) == 0
    s = orjson.loads((results_in_tmp / "simulate.json").read_bytes())
    assert len(s["validation"]) == 2 and s["large"]


def test_the_report_states_each_routing_target_when_a_tier_went_unused():
    from bench import report

    def run(policy: str, expired: int, cloud_tokens: int, hit: float, pcr: float, errors: dict) -> dict:
        return {"pattern": "bursty", "policy": policy, "expired": expired, "cloud_tokens": cloud_tokens,
                "deadline_hit_rate": hit, "pcr": pcr, "prediction_error": errors}

    # a tier a run never used has no prediction error: null, as the results file holds it
    by = {("bursty", "deadline"): run("deadline", 0, 300, 1.0, 2.0, {"edge": 0.1, "cloud": None}),
          ("bursty", "load-aware"): run("load-aware", 3, 400, 0.9, 1.0, {"edge": 0.2, "cloud": 0.05}),
          ("bursty", "cloud-only"): run("cloud-only", 0, 900, 1.0, 0.5, {"edge": None, "cloud": 0.01})}
    lines = report._targets(by)
    assert len(lines) == 5
    assert "25% fewer" in lines[2] and "(met)" in lines[2]
    assert "worst 20%" in lines[4] and "**not met**" in lines[4]
