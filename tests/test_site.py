"""A whole site end to end: a real broker, real coordinator and agents, the real model.

Every test here runs twice: on mosquitto, and on ejabberd's MQTT 5 broker (which requires a user
name and has no shared subscriptions), so that fogmesh depends on MQTT 5, not on one broker."""

from __future__ import annotations

import signal
import subprocess
import time

import orjson
import pytest

from tests.conftest import agent_args, any_broker, wait_online
from tests.services import mqtt_cli, wait_for

pytestmark = [pytest.mark.slow, any_broker]


def broker_name(url: str) -> str:
    """Which broker a row of docs/reliability.md was measured on."""
    return "ejabberd" if "@" in url else "mosquitto"


def test_a_plain_mqtt_client_gets_a_streamed_answer_and_one_final(daemons, broker_url, site_id):
    daemons("coordinator")
    daemons("agent", *agent_args("a1", threads=2))
    wait_online(broker_url, site_id, 1)
    sub = subprocess.Popen(
        ["mosquitto_sub", *mqtt_cli(broker_url), "-V", "mqttv5", "-q", "1", "-v",
         "-t", f"fogmesh/{site_id}/results/sensor-7/#", "-W", "60"],
        stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    subprocess.run(
        ["mosquitto_pub", *mqtt_cli(broker_url), "-V", "mqttv5", "-q", "1",
         "-t", f"fogmesh/{site_id}/prompts/sensor-7",
         "-m", orjson.dumps({"id": "j1", "prompt": "MQTT is a protocol that", "max_tokens": 24}).decode()],
        check=True)
    chunks, finals = [], []
    assert sub.stdout is not None
    for line in sub.stdout:
        topic, _, payload = line.partition(" ")
        assert topic == f"fogmesh/{site_id}/results/sensor-7/j1"
        msg = orjson.loads(payload)
        (finals if msg["final"] else chunks).append(msg)
        if msg["final"]:
            break
    time.sleep(0.5)  # anything more would be a second final
    sub.terminate()
    rest = sub.communicate()[0]
    assert not rest.strip(), f"more messages after the final: {rest!r}"
    assert len(finals) == 1
    final = finals[0]
    assert final["status"] == "done"
    assert final["served_by"] == {"tier": "edge", "node": "a1"}
    assert final["usage"]["completion_tokens"] > 0
    assert final["usage"]["prompt_tokens"] > 0
    assert {"ttft_ms", "decode_tps", "total_ms", "queue_ms"} <= set(final["timings"])
    assert chunks, "a streaming job must send chunks before its final"
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["text"] for c in chunks) == final["text"]


def test_concurrent_jobs_spread_over_two_agents(daemons, broker_url, site_id, device):
    daemons("coordinator")
    daemons("agent", *agent_args("a1"), name="a1")
    daemons("agent", *agent_args("a2"), name="a2")
    wait_online(broker_url, site_id, 2)
    for i in range(6):
        device.send({"id": f"j{i}", "prompt": f"Sensor {i} reports that", "max_tokens": 12})
    finals = [device.final(f"j{i}") for i in range(6)]
    assert all(f["status"] == "done" for f in finals)
    nodes = [f["served_by"]["node"] for f in finals]
    assert set(nodes) == {"a1", "a2"}, nodes


@pytest.mark.fault
def test_agent_killed_mid_generation_its_job_completes_elsewhere(daemons, broker_url, site_id, device):
    daemons("coordinator")
    agents = {"a1": daemons("agent", *agent_args("a1"), name="a1"),
              "a2": daemons("agent", *agent_args("a2"), name="a2")}
    wait_online(broker_url, site_id, 2)
    device.send({"id": "long", "prompt": "Count from one to one thousand in words: one, two, three, four,",
                 "max_tokens": 160})
    wait_for(lambda: len(device.chunks.get("long", [])) >= 2, 30, what="the job to be generating")
    first_node = wait_for(lambda: next((n for n, d in agents.items() if "job_accepted job=" in d.log()), None))
    agents[first_node].kill()
    final = device.final("long", timeout_s=90)
    time.sleep(1.0)
    assert final["status"] == "done"
    assert final["served_by"]["node"] != first_node
    row = device.tally(f"agent killed ({broker_name(broker_url)})", "SIGKILL mid-generation; the job reruns on the "
                       "other agent", ["long"])
    assert row["lost"] == 0 and row["twice"] == 0


@pytest.mark.fault
def test_coordinator_killed_and_restarted_loses_nothing(daemons, broker_url, site_id, device):
    coord = daemons("coordinator")
    daemons("agent", *agent_args("a1", threads=2))
    wait_online(broker_url, site_id, 1)
    ids = [f"k{i}" for i in range(5)]
    for job in ids:
        device.send({"id": job, "prompt": f"Gateway note {job}:", "max_tokens": 40})
    wait_for(lambda: device.chunks.get("k0"), 30, what="the first job to run")
    coord.kill()
    time.sleep(0.5)
    device.send({"id": "k5", "prompt": "Sent while the coordinator was down:", "max_tokens": 8})
    ids.append("k5")
    daemons("coordinator", name="coordinator-2")
    for job in ids:
        assert device.final(job, timeout_s=120)["status"] == "done"
    time.sleep(1.5)
    row = device.tally(f"coordinator killed ({broker_name(broker_url)})",
                       "SIGKILL with queued and running jobs, a prompt sent while it "
                       "was down, then restarted", ids)
    assert row["lost"] == 0 and row["twice"] == 0 and row["statuses"] == {"done": len(ids)}


BAD = [
    (b"this is not json", "not_json"),
    (b"[1, 2]", "not_object"),
    (orjson.dumps({"id": "e1", "prompt": ""}), "empty_prompt"),
    (orjson.dumps({"id": "e2", "prompt": "x", "max_tokens": "ten"}), "wrong_type"),
    (orjson.dumps({"id": "e3", "prompt": "x", "temperature": 5}), "invalid_temperature"),
    (orjson.dumps({"id": "e8", "prompt": "x", "colour": "red"}), "unknown_field"),
    (orjson.dumps({"id": "e4", "prompt": "x", "model": "llama-70b"}), "unknown_model"),
    (orjson.dumps({"id": "e5", "prompt": "x" * 70_000}), "too_large"),
    (orjson.dumps({"id": "e6", "prompt": "x", "max_tokens": 100_000}), "max_tokens_too_large"),
    (orjson.dumps({"id": "e7", "prompt": "x", "priority": 12}), "invalid_value"),
]


def test_bad_input_is_rejected_precisely_while_valid_jobs_are_served(daemons, broker_url, site_id, device):
    coord = daemons("coordinator")
    agent = daemons("agent", *agent_args("a1", threads=2))
    wait_online(broker_url, site_id, 1)
    device.send({"id": "before", "prompt": "Valid before:", "max_tokens": 8})
    for payload, _ in BAD:
        device.send(payload)
    device.send({"id": "after", "prompt": "Valid after:", "max_tokens": 8})
    assert device.final("before")["status"] == "done"
    assert device.final("after")["status"] == "done"
    wait_for(lambda: len(device.all_finals()) >= len(BAD) + 2, 30, what="every answer")
    rejected = [f for f in device.all_finals() if f["status"] == "rejected"]
    assert sorted(f["error"]["code"] for f in rejected) == sorted(code for _, code in BAD)
    for f in rejected:
        assert f["error"]["message"], f
    by_job = {f["job"]: f for f in rejected}
    assert "prompt" in by_job["e2"]["error"]["message"] or "max_tokens" in by_job["e2"]["error"]["message"]
    assert "temperature" in by_job["e3"]["error"]["message"]
    assert "llama-70b" in by_job["e4"]["error"]["message"]
    assert coord.alive() and agent.alive()


def test_agent_drains_on_sigterm_and_marks_itself_offline(daemons, broker_url, site_id, device):
    from broker.runtime.client import snapshot
    from broker.runtime.mqtt import BrokerAddress

    daemons("coordinator")
    agent = daemons("agent", *agent_args("a1", threads=2))
    wait_online(broker_url, site_id, 1)
    device.send({"id": "d1", "prompt": "Finish me before you go:", "max_tokens": 48})
    wait_for(lambda: device.chunks.get("d1"), 30, what="the job to start")
    agent.signal(signal.SIGTERM)
    assert agent.proc is not None and agent.proc.wait(30) == 0
    assert device.final("d1")["status"] == "done"
    snap = snapshot(BrokerAddress.parse(broker_url), site_id)
    assert snap["agents"]["a1"]["state"] == "offline"
