"""Every daemon serves Prometheus metrics that follow real jobs."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.runtime.proc import free_port
from tests.conftest import agent_args, wait_online
from tests.services import wait_for

pytestmark = pytest.mark.slow


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_follow_real_jobs_in_every_daemon(daemons, broker_url, site_id, device, sqs_endpoint, tmp_path):
    ports = {kind: free_port() for kind in ("coordinator", "agent", "bridge", "cloud-worker")}
    daemons("coordinator", "--metrics-port", str(ports["coordinator"]))
    daemons("agent", *agent_args("a1", threads=2), "--metrics-port", str(ports["agent"]))
    daemons("bridge", "--endpoint-url", sqs_endpoint, "--outbox", str(tmp_path / "outbox.db"),
            "--metrics-port", str(ports["bridge"]), env={"FOGMESH_BRIDGE_STATUS_INTERVAL_S": "0.5"})
    daemons("cloud-worker", "--endpoint-url", sqs_endpoint, "--backend", "synthetic",
            "--metrics-port", str(ports["cloud-worker"]), on_site=False)
    wait_online(broker_url, site_id, 1)
    for i in range(2):
        device.send({"id": f"m{i}", "prompt": "The pump's pressure is", "max_tokens": 8})
    device.send(b"not json at all")
    for i in range(2):
        assert device.final(f"m{i}")["status"] == "done"
    wait_for(lambda: len(device.all_finals()) == 3, 10, what="the rejection")

    c = scrape(ports["coordinator"])
    assert c[("fogmesh_jobs_total", (("status", "done"), ("tier", "edge")))] == 2
    assert c[("fogmesh_jobs_total", (("status", "rejected"), ("tier", "none")))] == 1
    assert c[("fogmesh_rejections_total", (("code", "not_json"),))] == 1
    assert c[("fogmesh_ttft_seconds_count", (("tier", "edge"),))] == 2
    assert c[("fogmesh_latency_seconds_count", (("tier", "edge"),))] == 2
    assert 0 < c[("fogmesh_latency_seconds_sum", (("tier", "edge"),))] < 60
    assert c[("fogmesh_queue_wait_seconds_count", ())] == 2
    assert c[("fogmesh_decode_tokens_per_second_count", (("tier", "edge"),))] == 2
    assert c[("fogmesh_agents_online", ())] == 1 and c[("fogmesh_queue_depth", ())] == 0
    assert c[("fogmesh_coordinator_events_total", (("event", "accepted"),))] == 2
    assert ("fogmesh_mqtt_reconnects", ()) in c

    a = scrape(ports["agent"])
    assert a[("fogmesh_agent_tokens_total", ())] >= 2
    assert a[("fogmesh_agent_ttft_seconds_count", ())] == 2
    assert a[("fogmesh_agent_slots_total", ())] == 1 and a[("fogmesh_agent_slots_busy", ())] == 0
    assert a[("fogmesh_agent_decode_tokens_per_second", ())] > 1
    assert a[("fogmesh_agent_events_total", (("event", "done"),))] == 2

    wait_for(lambda: scrape(ports["bridge"])[("fogmesh_bridge_cloud_reachable", ())] == 1, 30,
             what="the bridge to reach the queue")
    b = scrape(ports["bridge"])
    assert b[("fogmesh_bridge_outbox_depth", ())] == 0
    w = scrape(ports["cloud-worker"])
    assert w[("fogmesh_cloud_worker_events_total", (("event", "done"),))] == 0
