"""Scheduling on a real site: cancellation, deadlines, priorities, idempotency, retries, models, budgets."""

from __future__ import annotations

import time

import pytest

from agents.model import default_model_path
from broker.runtime.client import request
from broker.runtime.mqtt import BrokerAddress
from schemas.topics import Topics
from tests.conftest import agent_args, wait_online
from tests.services import Listener, wait_for

pytestmark = pytest.mark.slow
LONG_PROMPT = "Write a long report about the sensors on the factory floor, one paragraph per machine:"
# A base model rarely stops counting: generations that must outlast a cancel or a deadline use this.
ENDLESS = "Count from one to one thousand in words: one, two, three, four, five, six,"


def test_cancel_stops_a_running_generation(daemons, broker_url, site_id, device):
    daemons("coordinator")
    agent = daemons("agent", *agent_args("a1", threads=2))
    wait_online(broker_url, site_id, 1)
    device.send({"id": "c1", "prompt": ENDLESS, "max_tokens": 400})
    wait_for(lambda: len(device.chunks.get("c1", [])) >= 3, 30, what="generation")
    device.cancel("c1")
    final = device.final("c1")
    assert final["status"] == "cancelled"
    wait_for(lambda: "stopped=cancelled" in agent.log(), 10, what="the agent to stop the generation")
    assert "cancel_to_stop_ms=" in agent.log()  # how long the generation ran on after the cancel arrived
    settled = len(device.chunks["c1"])
    time.sleep(1.0)
    assert len(device.chunks["c1"]) == settled, "chunks kept coming after the cancel"
    assert len(device.finals["c1"]) == 1


def test_cancel_removes_a_queued_job_before_it_runs(daemons, broker_url, site_id, device):
    daemons("coordinator", env={"FOGMESH_COORDINATOR_PREFETCH": "0"})
    agent = daemons("agent", *agent_args("a1", threads=2))
    wait_online(broker_url, site_id, 1)
    device.send({"id": "busy", "prompt": ENDLESS, "max_tokens": 120})
    device.send({"id": "queued", "prompt": "never run", "max_tokens": 8})
    wait_for(lambda: device.chunks.get("busy"), 30, what="the first job to run")
    device.cancel("queued")
    assert device.final("queued")["status"] == "cancelled"
    assert device.final("busy")["status"] == "done"
    assert "job=" + device.device_id + "/queued" not in agent.log()


def test_a_job_past_its_deadline_is_stopped_and_expired(daemons, broker_url, site_id, device):
    # load-aware runs it: the deadline policy refuses it at once as infeasible (test_feasibility.py)
    daemons("coordinator", "--policy", "load-aware")
    agent = daemons("agent", *agent_args("a1", threads=2))
    wait_online(broker_url, site_id, 1)
    device.send({"id": "late", "prompt": ENDLESS, "max_tokens": 400, "deadline_ms": 1500})
    final = device.final("late")
    assert final["status"] == "expired"
    assert final["error"]["code"] == "deadline"
    wait_for(lambda: "stopped=cancelled" in agent.log(), 10, what="the agent to stop the generation")


def test_mqtt5_message_expiry_counts_as_a_deadline(daemons, broker_url, site_id, device):
    daemons("coordinator")
    daemons("agent", *agent_args("a1", threads=2))
    wait_online(broker_url, site_id, 1)
    device.send({"id": "exp", "prompt": ENDLESS, "max_tokens": 400}, expiry_s=1)
    final = device.final("exp")  # 400 tokens do not fit in the second the message expiry leaves
    assert final["status"] == "rejected" and final["error"]["code"] == "deadline_infeasible", final


def test_higher_priority_jumps_the_queue_but_nothing_starves(daemons, broker_url, site_id, device):
    daemons("coordinator", env={"FOGMESH_COORDINATOR_PREFETCH": "0"})
    daemons("agent", *agent_args("a1", threads=2))
    wait_online(broker_url, site_id, 1)
    device.send({"id": "first", "prompt": ENDLESS, "max_tokens": 60})
    wait_for(lambda: device.chunks.get("first"), 30, what="the first job to run")
    for i in range(3):
        device.send({"id": f"low{i}", "prompt": f"Low {i}:", "max_tokens": 8, "priority": 1})
    device.send({"id": "high", "prompt": "High:", "max_tokens": 8, "priority": 9})
    jobs = ["first", "low0", "low1", "low2", "high"]
    for job in jobs:
        assert device.final(job)["status"] == "done"
    arrival = {j: device.finals[j][0]["timings"]["queue_ms"] for j in jobs}
    assert arrival["high"] < min(arrival[f"low{i}"] for i in range(3))


def test_a_prompt_sent_twice_runs_once(daemons, broker_url, site_id, device):
    daemons("coordinator")
    agent = daemons("agent", *agent_args("a1", threads=2))
    wait_online(broker_url, site_id, 1)
    for _ in range(3):
        device.send({"id": "same", "prompt": "Once only:", "max_tokens": 24})
    assert device.final("same")["status"] == "done"
    time.sleep(1.0)
    assert len(device.finals["same"]) == 1
    assert agent.log().count(f"job_accepted job={device.device_id}/same") == 1
    # after it finished, the same id gets the same answer again, not a second run
    device.send({"id": "same", "prompt": "Once only:", "max_tokens": 24})
    wait_for(lambda: len(device.finals["same"]) == 2, 10, what="the repeated answer")
    assert device.finals["same"][1]["text"] == device.finals["same"][0]["text"]
    assert agent.log().count(f"job_accepted job={device.device_id}/same") == 1


def test_a_failed_attempt_is_retried_on_another_agent(daemons, broker_url, site_id, device):
    daemons("coordinator")
    daemons("agent", *agent_args("big", threads=1), name="big")
    wait_online(broker_url, site_id, 1)
    # fill the big agent (one running, one waiting there) so the next job goes to the small one
    device.send({"id": "x1", "prompt": "Fill:", "max_tokens": 150})
    device.send({"id": "x2", "prompt": "Fill:", "max_tokens": 150})
    daemons("agent", *agent_args("small", 1, 1, "--n-ctx", "32"), name="small")
    wait_online(broker_url, site_id, 2)
    device.send({"id": "r1", "prompt": LONG_PROMPT + " " + LONG_PROMPT, "max_tokens": 8})
    final = device.final("r1", timeout_s=90)
    assert final["status"] == "done"
    assert final["served_by"]["node"] == "big"
    history = request(BrokerAddress.parse(broker_url), Topics(site_id).explain, {"job": "r1"})
    states = [h["state"] for h in history["jobs"][0]["history"]]
    assert "failed" in states and states.count("assigned") == 2


def test_a_job_no_agent_can_run_ends_in_error_and_the_dead_letter_topic(daemons, broker_url, site_id, device):
    daemons("coordinator")
    daemons("agent", *agent_args("small", 1, 1, "--n-ctx", "32"))
    wait_online(broker_url, site_id, 1)
    ops = Listener(BrokerAddress.parse(broker_url), f"fogmesh/{site_id}/deadletter/#")
    device.send({"id": "dl", "prompt": LONG_PROMPT + " " + LONG_PROMPT, "max_tokens": 8})
    final = device.final("dl")
    assert final["status"] == "error"
    assert final["error"]["code"] == "prompt_too_long"
    wait_for(lambda: ops.messages, 10, what="the dead letter")
    topic, letter = ops.messages[0]
    assert topic == f"fogmesh/{site_id}/deadletter/{device.device_id}/dl"
    assert letter["job"] == "dl" and letter["error"]["code"] == "prompt_too_long"
    ops.close()


def test_a_job_naming_a_model_goes_only_to_agents_that_hold_it(daemons, broker_url, site_id, device):
    path = default_model_path()
    daemons("coordinator")
    daemons("agent", *agent_args("a1", 1, 1, "--model", f"alpha={path}"), name="a1")
    daemons("agent", *agent_args("a2", 1, 1, "--model", f"beta={path}"), name="a2")
    wait_online(broker_url, site_id, 2)
    for i in range(3):
        device.send({"id": f"b{i}", "prompt": "Beta:", "max_tokens": 6, "model": "beta"})
    device.send({"id": "a", "prompt": "Alpha:", "max_tokens": 6, "model": "alpha"})
    device.send({"id": "g", "prompt": "Gamma:", "max_tokens": 6, "model": "gamma"})
    assert {device.final(f"b{i}")["served_by"]["node"] for i in range(3)} == {"a2"}
    assert device.final("a")["served_by"]["node"] == "a1"
    assert device.final("g")["error"]["code"] == "unknown_model"


def test_an_agents_token_budget_holds_work_back(daemons, broker_url, site_id, device):
    daemons("coordinator")
    daemons("agent", *agent_args("a1", 2, 1, "--budget-tokens", "40"), env={"FOGMESH_AGENT_BUDGET_WINDOW_S": "4"})
    wait_online(broker_url, site_id, 1)
    device.send({"id": "b1", "prompt": "One:", "max_tokens": 30})
    device.send({"id": "b2", "prompt": "Two:", "max_tokens": 30})
    one, two = device.final("b1"), device.final("b2", timeout_s=60)
    assert one["status"] == two["status"] == "done"
    # the second waited for the first's tokens to leave the 4 s window
    assert two["timings"]["queue_ms"] - one["timings"]["total_ms"] > 2000


def test_a_full_queue_rejects_with_overloaded_and_says_so_on_mesh_status(daemons, broker_url, site_id, device):
    from broker.runtime.client import snapshot

    daemons("coordinator", env={"FOGMESH_COORDINATOR_MAX_QUEUE": "3"})  # no agent: nothing drains the queue
    wait_for(lambda: (snapshot(BrokerAddress.parse(broker_url), site_id, 0.2)["coordinator"] or {}).get("state")
             == "online", 30, what="the coordinator")
    for i in range(5):
        device.send({"id": f"q{i}", "prompt": "Waiting:", "max_tokens": 4})
    assert device.final("q3")["error"]["code"] == "overloaded"
    assert device.final("q4")["error"]["code"] == "overloaded"
    assert "q0" not in device.finals
    mesh = wait_for(lambda: (snapshot(BrokerAddress.parse(broker_url), site_id, 0.3)["mesh"] or {}).get("overloaded")
                    and snapshot(BrokerAddress.parse(broker_url), site_id, 0.3)["mesh"], 10, what="overloaded")
    assert mesh["queue_depth"] == 3
