"""Every daemon serves Prometheus metrics that follow real jobs, named by Prometheus' conventions, and
they are the metrics deploy/'s Grafana dashboard and alert rules read.

One site serves every test here: a coordinator, an agent with the real model, the cloud bridge and a
cloud worker on a local SQS-compatible server, the HTTP gateway; it answers two edge jobs, one cloud
job (a model only the cloud tier has) and one malformed prompt.
"""

from __future__ import annotations

import secrets
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from broker.ops.mosquitto import Mosquitto
from broker.runtime.client import snapshot
from broker.runtime.mqtt import BrokerAddress
from broker.runtime.proc import free_port
from cloud_bridge.local import LOCAL_CREDENTIALS, LocalSqs
from tests.conftest import agent_args, wait_online
from tests.promql import alert_exprs, dashboard_exprs, metric_names
from tests.services import Daemon, Device, wait_for

pytestmark = pytest.mark.slow
KINDS = ("coordinator", "agent", "bridge", "gateway", "cloud-worker")
FAST = {"FOGMESH_BRIDGE_WAIT_S": "1", "FOGMESH_BRIDGE_STATUS_INTERVAL_S": "0.5", "FOGMESH_CLOUD_WORKER_WAIT_S": "1"}
# Sample names a family of each type exposes (the text parser strips a counter's _total from its name).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> list[Metric]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return list(text_string_to_metric_families(r.read().decode()))


def samples(families: list[Metric]) -> Samples:
    """Samples by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


@dataclass
class Site:
    id: str
    ports: dict[str, int]
    gateway_port: int

    def scrape(self, kind: str) -> list[Metric]:
        return scrape(self.ports[kind])

    def samples(self, kind: str) -> Samples:
        return samples(self.scrape(kind))


@pytest.fixture(scope="module")
def site(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("metrics")
    site_id = f"t{secrets.token_hex(4)}"
    ports = {kind: free_port() for kind in KINDS}
    gateway_port = free_port()
    sqs = LocalSqs(free_port(), tmp / "moto")
    config = tmp / "fogmesh.toml"
    config.write_text('[bridge]\ncloud_models = ["big"]\n')  # a model only the cloud tier answers to
    started: list[Daemon] = []

    def start(kind: str, *args: str, on_site: bool = True, env: dict[str, str] | None = None) -> None:
        where = ["--broker", mosquitto.url, "--site", site_id] if on_site else []
        started.append(Daemon(kind, [kind, *where, *args, "--metrics-port", str(ports[kind])], tmp, env).start())

    sqs.start()
    device = Device(BrokerAddress.parse(mosquitto.url), site_id)
    try:
        cloud_env = {**FAST, **LOCAL_CREDENTIALS}
        start("coordinator", "--ledger", str(tmp / "ledger.db"))
        start("agent", *agent_args("a1", threads=2))
        start("bridge", "--config", str(config), "--endpoint-url", sqs.url, "--outbox", str(tmp / "outbox.db"),
              env=cloud_env)
        start("cloud-worker", "--endpoint-url", sqs.url, "--backend", "synthetic", on_site=False, env=cloud_env)
        start("gateway", "--port", str(gateway_port))
        wait_online(mosquitto.url, site_id, 1)
        wait_for(lambda: (snapshot(BrokerAddress.parse(mosquitto.url), site_id, settle_s=0.2)["bridge"] or {})
                 .get("reachable"), 30, what="the bridge to reach the queue")
        for i in range(2):
            device.send({"id": f"m{i}", "prompt": "The pump's pressure is", "max_tokens": 8})
        device.send({"id": "c1", "prompt": "The pump's pressure is", "max_tokens": 8, "model": "big"})
        device.send(b"not json at all")
        for job in ("m0", "m1", "c1"):
            assert device.final(job)["status"] == "done", device.final(job)
        wait_for(lambda: len(device.all_finals()) == 4, 10, what="the rejection")
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway_port}/v1/models", timeout=5) as r:
            assert r.status == 200
        yield Site(site_id, ports, gateway_port)
    finally:
        device.close()
        for d in started:
            if d.alive():
                d.kill()
        sqs.stop()


def test_the_coordinator_counts_jobs_by_status_tier_and_model(site):
    c = site.samples("coordinator")
    s, model = ("site", site.id), ("model", "gemma-3-270m-q4_k_m")
    assert c[("fogmesh_coordinator_jobs_total", (model, s, ("status", "done"), ("tier", "edge")))] == 2
    assert c[("fogmesh_coordinator_jobs_total", (("model", "big"), s, ("status", "done"), ("tier", "cloud")))] == 1
    assert c[("fogmesh_coordinator_jobs_total", (("model", "none"), s, ("status", "rejected"), ("tier", "none")))] == 1
    assert c[("fogmesh_coordinator_rejections_total", (("code", "not_json"), s))] == 1
    assert c[("fogmesh_coordinator_ttft_seconds_count", (model, s, ("tier", "edge")))] == 2
    assert c[("fogmesh_coordinator_latency_seconds_count", (model, s, ("tier", "edge")))] == 2
    assert 0 < c[("fogmesh_coordinator_latency_seconds_sum", (model, s, ("tier", "edge")))] < 60
    assert c[("fogmesh_coordinator_queue_wait_seconds_count", (s,))] == 2
    assert c[("fogmesh_coordinator_decode_tokens_per_second_count", (model, s, ("tier", "edge")))] == 2
    assert c[("fogmesh_coordinator_agents_online", (s,))] == 1 and c[("fogmesh_coordinator_queue_depth", (s,))] == 0
    assert c[("fogmesh_coordinator_slots", (s,))] == 1
    assert c[("fogmesh_coordinator_events_total", (("event", "accepted"), s))] == 3
    assert c[("fogmesh_coordinator_mqtt_reconnects_total", (s,))] == 0


def test_cloud_spend_and_offloads_are_counters_of_the_coordinator(site):
    c = site.samples("coordinator")
    s = ("site", site.id)
    assert c[("fogmesh_coordinator_offloads_total", (("reason", "no_eligible_agent"), s))] == 1
    spend = c[("fogmesh_coordinator_spend_total", (("model", "big"), s, ("tier", "cloud")))]
    # 8 synthetic tokens at the bridge's default prices: a fraction of a cent, but not nothing
    assert 0 < spend < 0.001
    assert c[("fogmesh_coordinator_dead_letters_total", (s,))] == 0


def test_the_agent_measures_tokens_ttft_and_decode_by_model(site):
    a = site.samples("agent")
    labels = (("agent", "a1"), ("model", "gemma-3-270m-q4_k_m"), ("site", site.id))
    assert a[("fogmesh_agent_tokens_total", labels)] >= 2
    assert a[("fogmesh_agent_ttft_seconds_count", labels)] == 2
    decoded, seconds = a[("fogmesh_agent_decode_tokens_total", labels)], a[("fogmesh_agent_decode_seconds_total",
                                                                            labels)]
    assert decoded > 0 and 1 < decoded / seconds < 1000  # tokens per second of decoding
    mine = (("agent", "a1"), ("site", site.id))
    assert a[("fogmesh_agent_slots", mine)] == 1 and a[("fogmesh_agent_slots_busy", mine)] == 0
    assert a[("fogmesh_agent_decode_tokens_per_second", mine)] > 1
    assert a[("fogmesh_agent_events_total", (("agent", "a1"), ("event", "done"), ("site", site.id)))] == 2


def test_the_bridge_worker_and_gateway_report_their_part(site):
    s = ("site", site.id)
    b = site.samples("bridge")
    assert b[("fogmesh_bridge_cloud_reachable", (s,))] == 1 and b[("fogmesh_bridge_outbox_depth", (s,))] == 0
    assert b[("fogmesh_bridge_dead_letter_queue_depth", (s,))] == 0
    w = site.samples("cloud-worker")
    assert w[("fogmesh_cloud_worker_tokens_total", (("model", "cloud-synthetic"), s))] > 0
    assert w[("fogmesh_cloud_worker_job_seconds_count", (("model", "cloud-synthetic"), s))] == 1
    assert w[("fogmesh_cloud_worker_events_total", (("event", "done"),))] == 1
    g = site.samples("gateway")
    assert g[("fogmesh_gateway_request_seconds_count", (("http_status", "200"), ("path", "/v1/models"), s))] == 1
    assert g[("fogmesh_gateway_broker_connected", (s,))] == 1


def test_metric_names_follow_prometheus_conventions_with_one_namespace_per_daemon(site):
    for kind in KINDS:
        namespace = "fogmesh_" + kind.replace("-", "_") + "_"
        for family in site.scrape(kind):
            assert family.name.startswith(namespace) or family.name == "fogmesh_build_info", family.name
            assert family.type in SUFFIXES, family.name
            for sample in family.samples:
                # the parser names a counter's family without _total: its samples, and only its, end in it
                assert sample.name.endswith("_total") == (family.type == "counter"), (kind, sample.name)
            if family.type != "counter":
                assert not family.name.endswith("_total"), family.name


def test_every_sample_carries_its_site_and_build_info_says_what_runs(site):
    for kind in KINDS:
        families = site.scrape(kind)
        build = [s for f in families if f.name == "fogmesh_build_info" for s in f.samples]
        assert len(build) == 1 and build[0].value == 1, kind
        assert build[0].labels["daemon"] == kind and build[0].labels["version"]
        assert build[0].labels["python"].count(".") == 2 and build[0].labels["llama_cpp"] == "0.3.16"
        if kind == "cloud-worker":  # it serves every site: its job metrics carry theirs
            assert all(s.labels["site"] == site.id for f in families for s in f.samples
                       if f.name.startswith(("fogmesh_cloud_worker_tokens", "fogmesh_cloud_worker_job_seconds")))
            continue
        for family in families:
            for sample in family.samples:
                assert sample.labels.get("site") == site.id, (kind, sample)
                assert not {"job", "device", "key"} & set(sample.labels), (kind, sample)  # no unbounded labels


def test_every_metric_the_dashboard_and_the_alerts_read_is_exported(site):
    exported = {"up"}  # Prometheus' own, per scrape target
    for kind in KINDS:
        for family in site.scrape(kind):
            exported |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    for where, exprs in (("deploy/grafana/fogmesh.json", dashboard_exprs()),
                         ("deploy/prometheus/fogmesh-alerts.yml", alert_exprs())):
        for expr in exprs:
            missing = metric_names(expr) - exported
            assert not missing, f"{where} reads {sorted(missing)}, which no daemon exports: {expr}"
