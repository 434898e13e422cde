"""The coordinator's admission and failure rules, driven in-process: what a hostile or unlucky
device, or an agent that keeps dying, can and cannot do to a site."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from broker.coordinator.loop import Coordinator
from broker.coordinator.settings import CoordinatorSettings
from broker.runtime.delivery import Delivery
from broker.runtime.memory import MemorySession
from broker.runtime.mqtt import Message
from schemas import encode
from schemas.status import AgentStatus, BridgeStatus, ModelInfo
from schemas.topics import Topics

SITE = "adm"
T = Topics(SITE)


def finals_of(coord: Coordinator, device: str = "dev", job: str = "+") -> list[dict[str, Any]]:
    """The finals the coordinator published to ``device`` (for ``job``)."""
    return [body for topic, body in coord.session.messages(f"{T.prefix}/results/{device}/")
            if body.get("final") and (job == "+" or topic.endswith(f"/{job}"))]


@pytest.fixture
def coord(tmp_path):
    c = Coordinator(CoordinatorSettings(site=SITE, ledger=str(tmp_path / "ledger.db"), max_attempts=3),
                    session=MemorySession())
    yield c
    c.ledger.close()


def prompt(body: dict[str, Any] | bytes, device: str = "dev", response_topic: str | None = None) -> Message:
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    return Message(topic=T.prompts(device), payload=payload, qos=1, response_topic=response_topic)


def status(agent: str, epoch: int = 1, seq: int = 1, state: str = "online", jobs: list[str] | None = None) -> Message:
    body = encode(AgentStatus(agent=agent, epoch=epoch, seq=seq, state=state, slots_total=1, slots_free=1,  # type: ignore[arg-type]
                              decode_tps=50.0, ttft_ms=20.0, heartbeat_s=1.0, models=[ModelInfo(name="m")],
                              jobs=jobs or []))
    return Message(topic=T.agent_status(agent), payload=body, qos=1)


def run(coord: Coordinator, *messages: Message) -> None:
    for msg in messages:
        coord._inbox.put(msg)
    coord.step(timeout_s=0.0)


def test_a_response_topic_outside_the_devices_results_is_refused_on_the_devices_own_topic(coord):
    for topic in ("devices/dev/replies", "fogmesh/adm/agents/a1/assign", "fogmesh/adm/results/other/x",
                  "fogmesh/adm/results/dev/", "$SYS/x", "fogmesh/adm/results/dev/#"):
        run(coord, prompt({"id": "r1", "prompt": "hello"}, response_topic=topic))
    finals = finals_of(coord, job="r1")
    assert [f["error"]["code"] for f in finals] == ["bad_response_topic"] * 6
    # nothing was published anywhere but the device's own results
    assert all(topic == T.results("dev", "r1") for topic, _ in coord.session.messages()
               if "/results/" in topic or not topic.startswith(T.prefix))
    run(coord, prompt({"id": "r2", "prompt": "hello"}, response_topic=T.results("dev", "replies/r2")))
    assert coord.jobs["dev/r2"].response_topic == T.results("dev", "replies/r2")


def test_a_rejected_id_can_be_corrected_and_sent_again(coord):
    run(coord, prompt({"id": "fix", "prompt": ""}))
    assert finals_of(coord, job="fix")[-1]["error"]["code"] == "empty_prompt"
    run(coord, prompt({"id": "fix", "prompt": "now with a prompt"}))
    assert "dev/fix" in coord.jobs  # accepted this time, not answered with the old rejection
    assert len(finals_of(coord, job="fix")) == 1


def test_overloaded_is_not_remembered_for_the_id(coord):
    coord.settings.max_queue = 1
    run(coord, prompt({"id": "a", "prompt": "x"}), prompt({"id": "b", "prompt": "x"}))
    assert finals_of(coord, job="b")[-1]["error"]["code"] == "overloaded"
    coord.finals.finish(coord.jobs["dev/a"], "cancelled")
    run(coord, prompt({"id": "b", "prompt": "x"}))
    assert "dev/b" in coord.jobs


def test_a_bad_copy_of_a_running_jobs_id_gets_no_final_on_that_jobs_topic(coord):
    run(coord, prompt({"id": "live", "prompt": "the real one"}))
    run(coord, prompt(b'{"id": "live", "prompt": 5}'), prompt(b'{"id": "live", "nonsense": true}'))
    assert finals_of(coord, job="live") == []
    assert "dev/live" in coord.jobs and coord.counters["unanswered"] == 2
    assert {r["state"] for r in coord.ledger.find("live")} == {"queued", "rejected"}
    coord.finals.finish(coord.jobs["dev/live"], "cancelled")
    run(coord, prompt(b'{"id": "live", "prompt": 5}'))  # nor after it was answered
    assert [f["status"] for f in finals_of(coord, job="live")] == ["cancelled"]


@pytest.mark.parametrize("device", ["", "has space", "naïve", "x" * 129, "a+b"])
def test_a_prompt_on_a_device_topic_that_cannot_be_answered_is_counted(coord, device):
    run(coord, Message(topic=f"{T.prefix}/prompts/{device}", payload=b'{"prompt": "x"}', qos=1))
    assert coord.counters["unanswered"] == 1 and not len(coord.jobs)
    assert coord.m.unanswered.labels("bad_device_id")._value.get() == 1
    assert not [t for t, _ in coord.session.messages() if "/results/" in t]


def test_a_job_whose_agent_keeps_dying_ends_in_error_after_max_attempts(coord):
    run(coord, status("a1"), prompt({"id": "poison", "prompt": "x"}))
    epoch = 1
    for attempt in range(1, 4):
        job = coord.jobs.get("dev/poison")
        assert job is not None and job.agent == "a1" and job.attempt == attempt
        epoch += 1  # the agent died and came back: a new boot
        run(coord, status("a1", epoch=epoch))
    finals = finals_of(coord, job="poison")
    assert [f["status"] for f in finals] == ["error"] and finals[0]["error"]["code"] == "agent_lost"
    letters = [body for topic, body in coord.session.messages() if topic == T.deadletter("dev", "poison")]
    assert letters and letters[0]["attempts"] == 3


def test_the_prompts_held_in_memory_are_bounded_in_bytes(coord):
    coord.settings.max_queue_bytes = 10_000
    big = "word " * 800  # ~4 KB
    for i in range(4):
        run(coord, prompt({"id": f"b{i}", "prompt": big}))
    assert sorted(j.key for j in coord.jobs) == ["dev/b0", "dev/b1"]
    assert all(f["error"]["code"] == "overloaded" and "bytes" in f["error"]["message"]
               for f in finals_of(coord))
    coord.finals.finish(coord.jobs["dev/b0"], "cancelled")
    run(coord, prompt({"id": "b2", "prompt": big}))
    assert "dev/b2" in coord.jobs and coord.jobs.held_bytes < 10_000


class AwaySession(MemorySession):
    """The broker is away: publishes are queued, and acknowledged only when ``back()`` is called."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[Delivery] = []

    def publish(self, topic: str, payload: bytes, *args: Any, **kwargs: Any) -> Delivery:
        self.queued.append(Delivery(len(self.queued)))
        return self.queued[-1]

    def back(self) -> None:
        for delivery in self.queued:
            delivery._set(0)


def test_a_final_is_marked_delivered_once_the_broker_acknowledges_it(tmp_path):
    session = AwaySession()
    coord = Coordinator(CoordinatorSettings(site=SITE, ledger=str(tmp_path / "ledger.db")), session=session)
    run(coord, prompt({"id": "away", "prompt": ""}))
    assert coord.ledger.get("dev/away")["delivered"] == 0  # no crash, and not marked
    session.back()  # the session came back and the PUBACK arrived
    run(coord)
    assert coord.ledger.get("dev/away")["delivered"] == 1
    coord.ledger.close()


def test_the_ledger_forgets_old_finished_jobs(tmp_path):
    from broker.coordinator.ledger import Ledger

    ledger = Ledger(tmp_path / "l.db")
    now = time.time()
    with ledger.transaction():
        for i in range(30):
            ledger.insert({"key": f"d/{i}", "device": "d", "job": str(i), "state": "done" if i < 25 else "queued",
                           "request": "{}", "created_at": now, "final": "{}" if i < 25 else None,  # open: none yet
                           "delivered": int(i != 3)})
    with ledger.transaction():
        assert ledger.prune(older_than=time.time() + 1, keep=1000, batch=10) == 10  # a batch at a time
        assert ledger.prune(older_than=time.time() + 1, keep=1000) == 14  # not the undelivered, not open jobs
    assert {r["key"] for r in ledger.open_jobs()} == {f"d/{i}" for i in range(25, 30)}
    assert ledger.get("d/3") is not None and ledger.history("d/0") == []
    with ledger.transaction():
        for i in range(30, 40):
            ledger.insert({"key": f"d/{i}", "device": "d", "job": str(i), "state": "done", "request": "{}",
                           "created_at": now, "final": "{}", "delivered": 1})
        assert ledger.prune(older_than=None, keep=4) == 6  # beyond `keep`, the oldest go
    assert sum(1 for i in range(30, 40) if ledger.get(f"d/{i}")) == 4
    ledger.close()


@pytest.mark.parametrize(("payload", "code"), [
    (b"not json", "not_json"),
    (b"[1, 2]", "not_object"),
    (b'{"max_tokens": 5}', "missing_field"),
    (b'{"prompt": "x", "max_tokens": "ten"}', "wrong_type"),
    (b'{"prompt": "x", "priority": 12}', "invalid_value"),
    (b'{"prompt": "x", "colour": "red"}', "unknown_field"),
    (b'{"prompt": "   "}', "empty_prompt"),
    (orjson.dumps({"prompt": "x" * 70_000}), "too_large"),
    (b'{"prompt": "x", "max_tokens": 5000}', "max_tokens_too_large"),
    (b'{"prompt": "x", "model": "nope"}', "unknown_model"),
])
def test_every_rejection_path_answers_its_precise_code(coord, payload, code):
    run(coord, status("a1"))  # an agent holding model "m", so an unknown model is known to be unknown
    run(coord, prompt(payload))
    got = finals_of(coord)
    assert [f["status"] for f in got] == ["rejected"] and got[0]["error"]["code"] == code
    assert got[0]["error"]["message"] and not len(coord.jobs)


def test_a_model_only_the_cloud_tier_answers_to_is_known_but_not_for_edge_only_jobs(coord):
    bridge = encode(BridgeStatus(state="online", reachable=True, models=["big-cloud-model"]))
    run(coord, status("a1"), Message(topic=T.bridge_status, payload=bridge, qos=1))
    run(coord, prompt({"id": "cloud", "prompt": "x", "model": "big-cloud-model"}),
        prompt({"id": "edge", "prompt": "x", "model": "big-cloud-model", "privacy": "edge-only"}))
    assert [f["job"] for f in finals_of(coord)] == ["edge"]
    assert finals_of(coord)[0]["error"]["code"] == "unknown_model"
    assert [t for t, _ in coord.session.messages(T.cloud_requests)] == [T.cloud_requests]


def test_a_job_no_agent_can_take_ends_after_max_wait_instead_of_waiting_for_ever(coord):
    coord.settings.max_wait_no_agent_s = 0.3
    run(coord, prompt({"id": "alone", "prompt": "anyone?"}), prompt({"id": "other", "prompt": "x", "model": "m"}))
    time.sleep(0.15)
    run(coord)  # stranded from now on
    assert not finals_of(coord)
    time.sleep(0.4)
    run(coord)
    got = {f["job"]: f for f in finals_of(coord)}
    assert got["alone"]["status"] == "error" and got["alone"]["error"]["code"] == "no_agent"
    assert "max_wait_no_agent_s" in got["alone"]["error"]["message"]


def test_a_job_waits_while_an_agent_could_take_it(coord):
    coord.settings.max_wait_no_agent_s = 0.2
    coord.settings.prefetch = 0
    run(coord, status("a1"), prompt({"id": "busy", "prompt": "x"}), prompt({"id": "next", "prompt": "x"}))
    time.sleep(0.4)
    run(coord)
    time.sleep(0.15)
    run(coord)
    assert not finals_of(coord)  # "next" waits for a1's slot: a1 is online and holds the model
