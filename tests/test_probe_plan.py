"""`fogmesh probe` measures this device with the real model; `fogmesh plan` turns that into a recommendation."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.services import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = cli("probe", "--json", "--threads", "2", "--slots", "3", "--prompt-sizes", "16,128", "--decode-tokens", "12")
    assert out.returncode == 0, out.stderr
    path = tmp_path_factory.mktemp("probe") / "this.json"
    path.write_text(out.stdout)
    return str(path)


def test_probe_measures_the_bundled_model_on_this_device(probe_file):
    report = orjson.loads(Path(probe_file).read_bytes())
    assert report["cores"] >= 1 and report["mem_available_bytes"] > 0
    (model,) = report["models"]
    assert model["name"] == "gemma-3-270m-q4_k_m" and not model["error"]
    assert model["fits"] and 128 < model["max_context"] <= model["n_ctx_train"]
    assert model["load_s"] > 0 and model["rss_bytes"] > model["file_bytes"] / 4
    assert model["kv_bytes_per_token"] > 0
    assert [r["prompt_tokens"] for r in model["runs"]] == [16, 128]
    small, large = model["runs"]
    assert large["ttft_ms"] > small["ttft_ms"]  # a longer prompt takes longer to prefill
    assert all(r["decode_tps"] > 1 and r["prefill_tps"] > r["decode_tps"] for r in model["runs"])
    assert model["advertises"]["decode_tps"] > 1 and model["advertises"]["ttft_ms"] > 0
    # as an agent advertises its prefill: the rate past the shortest prompt's, by length
    assert [n for n, _ in model["advertises"]["prefill_tps_at"]] == [112]
    assert model["advertises"]["prefill_tps_at"][0][1] == model["advertises"]["prefill_tps"] > 0
    # as a 3-slot agent advertises it: alone, not measured at 2, all three at once
    at = model["advertises"]["decode_tps_at"]
    assert len(at) == 3 and at[0] == model["advertises"]["decode_tps"] and at[1] == 0 and at[2] > 0
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():  # a GPU build: all layers offloaded, and the CPU alone beside it
        assert report["gpus"] and model["gpu_layers"] == model["layers"] > 1 and model["device"] != "CPU"
        assert model["without_offload"]["decode_tps"] > 0
    else:
        assert report["gpus"] == [] and model["device"] == "CPU" and model["gpu_layers"] == 0
        assert model["layers"] > 1 and model["without_offload"] == {}


def test_probe_prints_a_table():
    out = cli("probe", "--threads", "2", "--slots", "2", "--prompt-sizes", "16", "--decode-tokens", "4")
    assert out.returncode == 0, out.stderr
    assert "gemma-3-270m-q4_k_m" in out.stdout and "yes" in out.stdout and "advertises" in out.stdout
    assert "tok/s each with 2 at once" in out.stdout
    assert "n_ctx_per_seq" not in out.stdout + out.stderr  # llama.cpp's own notices stay in the debug log
    assert "GPU offload: " in out.stdout  # its device and the CPU-only figures, or why offload is unavailable


def plan(probe_file: str, *args: str) -> dict:
    out = cli("plan", "--device", f"{probe_file}:2", "--jobs", "600", "--json", *args)
    assert out.returncode == 0, out.stderr
    return orjson.loads(out.stdout)


def test_plan_recommends_the_edge_when_it_keeps_up_and_a_mix_when_it_cannot(probe_file):
    light = plan(probe_file, "--rate", "0.2", "--tokens", "32", "--deadline-ms", "5000")
    options = {o["option"]: o for o in light["options"]}
    assert set(options) == {"edge", "cloud", "mix"}
    assert light["recommendation"] == "edge"
    assert options["edge"]["cost_per_response"] < options["cloud"]["cost_per_response"]
    assert options["edge"]["deadline_hit_rate"] >= 0.95
    for o in options.values():
        assert 0 < o["utility"] <= 1 and o["pcr"] > 0
    heavy = plan(probe_file, "--rate", "20", "--tokens", "64", "--deadline-ms", "3000")
    options = {o["option"]: o for o in heavy["options"]}
    assert options["edge"]["deadline_hit_rate"] < 0.5  # two small devices cannot keep up alone
    assert heavy["recommendation"] in ("mix", "cloud")
    assert options["mix"]["cloud_token_share"] > 0


def test_plan_counts_edge_only_jobs_the_cloud_cannot_take(probe_file):
    out = plan(probe_file, "--rate", "1", "--edge-only", "0.5")
    cloud = next(o for o in out["options"] if o["option"] == "cloud")
    assert cloud["unservable"] > 0
    assert out["recommendation"] != "cloud"


def test_plan_says_when_the_devices_cannot_keep_up_and_prints_money_a_person_reads(probe_file):
    out = cli("plan", "--device", f"{probe_file}:1", "--jobs", "600", "--rate", "40", "--tokens", "64",
              "--edge-only", "0.3")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "queue grows without bound" in text and "unbounded" in text
    assert "e-0" not in out.stdout  # no 2.95e-05 dollars
    data = plan(probe_file, "--rate", "1", "--edge-only", "0.5")
    cloud = next(o for o in data["options"] if o["option"] == "cloud")
    assert cloud["unservable"] > 0 and cloud["deadline_hit_rate"] <= 0.55  # the jobs it cannot take count


def test_plan_simulates_a_device_with_the_rates_its_probe_measured():
    from broker.planning.capacity import agents_from_probe

    report = {"host": "h", "models": [{"name": "m", "advertises": {
        "decode_tps": 30.0, "ttft_ms": 50.0, "prefill_tps": 300.0, "decode_tps_at": [30.0, 0.0, 12.0]}}]}
    (four,) = agents_from_probe(report, slots=4)
    assert four.tps_at == (30.0, 0.0, 12.0, 0.0) and four.prefill_tps == 300.0  # 2 and 4 busy: worked out
    (two,) = agents_from_probe(report, slots=2)
    assert two.tps_at == (30.0, 0.0)  # the probe's level 3 is beyond this device
    (one,) = agents_from_probe(report)
    assert one.tps_at == () and one.tps == 30.0


@pytest.mark.parametrize(("flags", "named"), [
    (["--jobs", "0"], "--jobs (0)"),  # was a traceback: max() of no options
    (["--slots", "0"], "--slots must be 1 or more"),  # was a plan of devices serving 0 jobs/s
    (["--slots", "-3"], "not -3"),  # was "serve about -0.938 jobs/s"
    (["--deadline-ms", "-5"], "--deadline-ms (-5)"),
    (["--tokens", "0"], "--tokens (0)"),
    (["--prompt-tokens", "-1"], "--prompt-tokens (-1)"),
    (["--rate", "nan"], "--rate must be positive"),  # was a recommendation from a trace of NaN arrivals
    (["--rate", "inf"], "--rate must be positive"),
    (["--power-w", "-5"], "--power-w (-5)"),  # was a traceback: math domain error printing its cost
    (["--cloud-tps", "0"], "--cloud-tps (0)"),  # was a plan with a cloud at 1 token/s
    (["--cloud-latency-s", "-1"], "--cloud-latency-s (-1)"),
    (["--alpha", "7"], "--alpha (7)"),  # was a utility above 1
    (["--quality-edge", "-0.1"], "--quality-edge (-0.1)"),
])
def test_plan_refuses_a_workload_or_device_it_cannot_mean_and_names_the_flag(tmp_path, flags, named):
    probe = tmp_path / "pi.json"
    probe.write_bytes(orjson.dumps({"host": "pi", "models": [{"name": "m", "advertises": {
        "decode_tps": 20.0, "ttft_ms": 80.0, "prefill_tps": 150.0, "decode_tps_at": [20.0, 14.0]}}]}))
    out = cli("plan", "--device", str(probe), "--jobs", "50", *flags)
    assert out.returncode == 1 and named in out.stderr and "Traceback" not in out.stderr, out.stderr
