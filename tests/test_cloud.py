"""The cloud path on a real SQS-compatible server: overflow, offline store-and-forward, one answer per job."""

from __future__ import annotations

import signal
import time

import boto3
import pytest

from broker.runtime.client import snapshot
from broker.runtime.mqtt import BrokerAddress
from broker.runtime.proc import free_port
from cloud_bridge.local import LOCAL_CREDENTIALS, LocalSqs
from tests.conftest import agent_args, wait_online
from tests.services import wait_for

pytestmark = pytest.mark.slow
WORKER = ["--threads", "1", "--visibility-s", "4"]
FAST = {"FOGMESH_BRIDGE_WAIT_S": "1", "FOGMESH_BRIDGE_STATUS_INTERVAL_S": "0.5",
        "FOGMESH_BRIDGE_RESULT_VISIBILITY_S": "3", "FOGMESH_CLOUD_WORKER_WAIT_S": "1"}


def cloud(daemons, endpoint, tmp_path, bridge_env=None, worker_env=None):
    return start_bridge(daemons, endpoint, tmp_path, bridge_env), start_worker(daemons, endpoint, worker_env)


def start_bridge(daemons, endpoint, tmp_path, env=None, name="bridge"):
    """A bridge on this test's site; a restarted one (another name) reuses the same outbox."""
    return daemons("bridge", "--endpoint-url", endpoint, "--outbox", str(tmp_path / "outbox.db"), name=name,
                   env={**FAST, **(env or {})})


def start_worker(daemons, endpoint, env=None, name="cloud-worker"):
    return daemons("cloud-worker", "--endpoint-url", endpoint, *WORKER, name=name, env={**FAST, **(env or {})},
                   on_site=False)


def wait_cloud(broker_url, site_id, reachable=True, timeout_s=30):
    def ok():
        b = snapshot(BrokerAddress.parse(broker_url), site_id, settle_s=0.2)["bridge"] or {}
        return b.get("state") == "online" and b.get("reachable") is reachable
    wait_for(ok, timeout_s, what=f"bridge reachable={reachable}")


def sqs(endpoint):
    return boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")


def test_overflow_the_edge_saturated_the_cloud_answers(daemons, broker_url, site_id, device, sqs_endpoint, tmp_path):
    coordinator = daemons("coordinator")
    daemons("agent", *agent_args("a1", threads=1))
    cloud(daemons, sqs_endpoint, tmp_path, bridge_env={"FOGMESH_BRIDGE_CLOUD_LATENCY_S": "0.5"})
    wait_online(broker_url, site_id, 1)
    wait_cloud(broker_url, site_id)
    device.send({"id": "busy", "prompt": "Count from one to one thousand in words: one, two, three,",
                 "max_tokens": 300})
    wait_for(lambda: device.chunks.get("busy"), 30, what="the edge to be busy")
    device.send({"id": "over", "prompt": "Overflow:", "max_tokens": 12, "deadline_ms": 5000})
    final = device.final("over", timeout_s=60)
    assert final["status"] == "done"
    assert final["served_by"]["tier"] == "cloud"
    assert final["usage"]["completion_tokens"] > 0
    assert "cloud" in final["cost"]
    device.send({"id": "private", "prompt": "Stays here:", "max_tokens": 12, "deadline_ms": 5000,
                 "privacy": "edge-only"})
    private = device.final("private", timeout_s=60)
    assert private.get("served_by", {}).get("tier") != "cloud"
    assert f"job_offloaded job={device.device_id}/private" not in coordinator.log()
    time.sleep(1)
    assert len(device.finals["over"]) == 1


@pytest.mark.fault
def test_offline_ok_jobs_wait_for_the_cloud_and_drain_in_order(daemons, broker_url, site_id, device, tmp_path,
                                                                monkeypatch):
    for k, v in LOCAL_CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    server = LocalSqs(port, tmp_path / "moto")
    server.start()
    try:
        daemons("coordinator")
        cloud(daemons, server.url, tmp_path)
        wait_cloud(broker_url, site_id)
        server.stop()
        wait_cloud(broker_url, site_id, reachable=False)
        ids = [f"o{i}" for i in range(4)]
        for job in ids:
            device.send({"id": job, "prompt": f"Stored {job}:", "max_tokens": 6, "offline_ok": True})
        device.send({"id": "hurry", "prompt": "Not offline_ok:", "max_tokens": 6})
        assert device.final("hurry", timeout_s=40)["status"] == "error"
        assert device.finals["hurry"][0]["error"]["code"] == "cloud_unreachable"
        snap = snapshot(BrokerAddress.parse(broker_url), site_id)
        assert snap["bridge"]["outbox_depth"] == 4
        server = LocalSqs(port, tmp_path / "moto")
        server.start()
        for job in ids:
            assert device.final(job, timeout_s=90)["status"] == "done"
        order = sorted(ids, key=lambda j: device.finals[j][0]["timings"]["total_ms"] -
                       device.finals[j][0]["timings"].get("generate_ms", 0))
        time.sleep(1)
        row = device.tally("cloud endpoint down", "SQS-compatible server stopped, 4 offline_ok jobs and one "
                           "not offline_ok sent, server restarted", [*ids, "hurry"])
        assert row["lost"] == 0 and row["twice"] == 0
        assert [f["served_by"]["tier"] for j in ids for f in device.finals[j]] == ["cloud"] * 4
        assert order == ids
    finally:
        server.stop()


@pytest.mark.fault
def test_bridge_killed_between_receive_and_publish_still_answers_once(daemons, broker_url, site_id, device,
                                                                      sqs_endpoint, tmp_path):
    daemons("coordinator")
    bridge, _ = cloud(daemons, sqs_endpoint, tmp_path, bridge_env={"FOGMESH_FAILPOINT": "bridge-after-receive"})
    wait_cloud(broker_url, site_id)
    device.send({"id": "k1", "prompt": "Survive the bridge:", "max_tokens": 8})
    assert bridge.proc is not None
    bridge.proc.wait(60)
    assert bridge.proc.returncode == -signal.SIGKILL
    start_bridge(daemons, sqs_endpoint, tmp_path, name="bridge-2")
    final = device.final("k1", timeout_s=60)
    assert final["status"] == "done" and final["served_by"]["tier"] == "cloud"
    time.sleep(4)  # past the result's visibility timeout: a second delivery would show now
    row = device.tally("bridge killed", "SIGKILL between receiving a result from SQS and publishing it", ["k1"])
    assert row["lost"] == 0 and row["twice"] == 0


@pytest.mark.fault
def test_bridge_killed_between_publish_and_delete_drops_the_redelivery(daemons, broker_url, site_id, device,
                                                                       sqs_endpoint, tmp_path):
    daemons("coordinator")
    bridge, _ = cloud(daemons, sqs_endpoint, tmp_path, bridge_env={"FOGMESH_FAILPOINT": "bridge-after-publish"})
    wait_cloud(broker_url, site_id)
    device.send({"id": "k2", "prompt": "Once:", "max_tokens": 8})
    assert device.final("k2", timeout_s=60)["status"] == "done"
    assert bridge.proc is not None and bridge.proc.wait(30) == -signal.SIGKILL
    b2 = start_bridge(daemons, sqs_endpoint, tmp_path, name="bridge-2")
    wait_for(lambda: "result_duplicate" in b2.log(), 30, what="the redelivered result to be dropped")
    row = device.tally("bridge killed", "SIGKILL between publishing a result and deleting it from SQS", ["k2"])
    assert row["lost"] == 0 and row["twice"] == 0


@pytest.mark.fault
def test_cloud_worker_killed_mid_job_sqs_redelivers_one_answer(daemons, broker_url, site_id, device,
                                                               sqs_endpoint, tmp_path):
    daemons("coordinator")
    _, worker = cloud(daemons, sqs_endpoint, tmp_path)
    wait_cloud(broker_url, site_id)
    device.send({"id": "w1", "prompt": "A long cloud answer:", "max_tokens": 200})
    assert worker is not None
    wait_for(lambda: "job_started" in worker.log(), 30, what="the worker to start the job")
    time.sleep(1.0)  # mid-generation
    worker.kill()
    second = start_worker(daemons, sqs_endpoint, name="cloud-worker-2")
    final = device.final("w1", timeout_s=120)
    assert final["status"] == "done" and final["served_by"]["tier"] == "cloud"
    assert "receives=2" in second.log()  # SQS handed the unfinished job to the next worker
    time.sleep(2)
    row = device.tally("cloud worker killed", "SIGKILL mid-generation; SQS redelivers to another worker", ["w1"])
    assert row["lost"] == 0 and row["twice"] == 0


def test_a_prompt_over_the_sqs_limit_travels_by_s3_claim_check(daemons, broker_url, site_id, device,
                                                               sqs_endpoint, tmp_path):
    env = {"FOGMESH_BRIDGE_MAX_MESSAGE_BYTES": "1024", "FOGMESH_BRIDGE_BUCKET": "fogmesh-claims"}
    daemons("coordinator")
    worker_env = {"FOGMESH_CLOUD_WORKER_MAX_MESSAGE_BYTES": "1024", "FOGMESH_CLOUD_WORKER_BUCKET": "fogmesh-claims"}
    cloud(daemons, sqs_endpoint, tmp_path, bridge_env=env, worker_env=worker_env)
    wait_cloud(broker_url, site_id)
    big = "Sensor log: " + " ".join(f"t{i}=21.{i % 10}C" for i in range(300))
    assert len(big) > 2048
    device.send({"id": "big", "prompt": big + "\nSummary:", "max_tokens": 8})
    final = device.final("big", timeout_s=90)
    assert final["status"] == "done" and final["served_by"]["tier"] == "cloud"
    assert final["usage"]["prompt_tokens"] > 300
    s3 = boto3.client("s3", endpoint_url=sqs_endpoint, region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fogmesh-claims").get("Contents", [])]
    assert any(k.endswith(f"{device.device_id}/big/1.json") for k in keys), keys


def test_a_malformed_sqs_message_ends_in_the_dead_letter_queue(daemons, broker_url, site_id, device,
                                                               sqs_endpoint, tmp_path):
    daemons("coordinator")
    bridge, _ = cloud(daemons, sqs_endpoint, tmp_path, bridge_env={"FOGMESH_BRIDGE_RESULT_VISIBILITY_S": "1"})
    wait_cloud(broker_url, site_id)
    client = sqs(sqs_endpoint)
    url = client.get_queue_url(QueueName=f"fogmesh-results-{site_id}")["QueueUrl"]
    client.send_message(QueueUrl=url, MessageBody="{not json")
    dlq = client.get_queue_url(QueueName=f"fogmesh-results-{site_id}-dlq")["QueueUrl"]

    def dead_lettered():
        attrs = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"]) == 1
    wait_for(dead_lettered, 60, what="the malformed message in the dead-letter queue")
    assert bridge.alive()
    device.send({"id": "fine", "prompt": "Still working:", "max_tokens": 6})
    assert device.final("fine", timeout_s=60)["status"] == "done"
    wait_for(lambda: (snapshot(BrokerAddress.parse(broker_url), site_id)["bridge"] or {}).get("dlq_depth", 0) >= 1,
             15, what="the dead-letter depth in the bridge's status")


VERDICT = {"type": "object", "properties": {"level": {"enum": ["ok", "warn", "alarm"]}}, "required": ["level"]}
CHAT = {"messages": [{"role": "user", "content": "Server room at 31 C: ok, warn or alarm?"}], "max_tokens": 40,
        "temperature": 0.5, "seed": 3,
        "response_format": {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}}}


def structured_through_the_cloud(device):
    """A chat request with sampling and a schema, answered by the cloud tier: valid, parsed, the same twice."""
    import jsonschema

    device.send({**CHAT, "id": "c1"})
    device.send({**CHAT, "id": "c2"})
    first, second = device.final("c1", timeout_s=90), device.final("c2", timeout_s=90)
    assert first["status"] == "done", first
    assert first["served_by"]["tier"] == "cloud"
    jsonschema.validate(first["json"], VERDICT)
    assert first["finish_reason"] == "stop"
    assert second["text"] == first["text"]  # the seed travelled with the request


def test_the_cloud_tier_carries_chat_sampling_and_structured_output(daemons, broker_url, site_id, device,
                                                                     sqs_endpoint, tmp_path):
    daemons("coordinator")  # no edge agent: everything goes to the cloud
    cloud(daemons, sqs_endpoint, tmp_path)
    wait_cloud(broker_url, site_id)
    structured_through_the_cloud(device)
    device.send({**CHAT, "id": "cut", "max_tokens": 2})
    cut = device.final("cut", timeout_s=90)
    assert (cut["status"], cut["error"]["code"]) == ("error", "output_truncated")


def test_an_openai_compatible_cloud_backend_gets_chat_and_response_format(daemons, broker_url, site_id, device,
                                                                          sqs_endpoint, tmp_path):
    """The worker's OpenAI backend against a real OpenAI-compatible server (llama-cpp-python's):
    /v1/chat/completions with response_format, in the form that server takes a schema."""
    import subprocess
    import sys

    from agents.model import default_model_path
    from broker.runtime.proc import wait_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
                               "--model_alias", "big", "--chat_format", "gemma", "--n_threads", "1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_port("127.0.0.1", port, 60), "llama_cpp.server did not start"
        daemons("coordinator")
        start_bridge(daemons, sqs_endpoint, tmp_path)
        start_worker(daemons, sqs_endpoint, {"FOGMESH_CLOUD_WORKER_BACKEND": "openai",
                                             "FOGMESH_CLOUD_WORKER_MODEL": "big",
                                             "FOGMESH_CLOUD_WORKER_OPENAI_SCHEMA_STYLE": "llama-cpp-python",
                                             "FOGMESH_CLOUD_WORKER_OPENAI_URL": f"http://127.0.0.1:{port}"})
        wait_cloud(broker_url, site_id)
        structured_through_the_cloud(device)
    finally:
        server.terminate()
        server.wait(10)
