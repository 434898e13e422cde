"""The edge agent driven in-process: an in-memory session, a synthetic backend, assignments
handed to it as the broker would. The same agent runs with the real model in test_site.py."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from agents.agent import Agent
from agents.backends.synthetic import SyntheticBackend
from agents.settings import AgentSettings
from broker.runtime.memory import MemorySession
from broker.runtime.mqtt import Message
from schemas import encode
from schemas.messages import Assignment, Control
from schemas.topics import Topics
from tests.services import wait_for

SITE = "inproc"
T = Topics(SITE)


@pytest.fixture
def agent():
    a = Agent(AgentSettings(site=SITE, agent_id="a1", slots=1, calibrate_tokens=2, heartbeat_s=0.2),
              lambda: {"m": SyntheticBackend(tokens_per_s=200.0)}, session=MemorySession())
    a.start()
    yield a
    a.request_stop()


def assign(agent: Agent, job: str, max_tokens: int = 8, **extra: Any) -> None:
    spec = Assignment(key=f"dev/{job}", device="dev", job=job, attempt=1, prompt="x", max_tokens=max_tokens,
                      result_topic=T.results("dev", job), assigned_at=time.time(), **extra)
    agent._on_message(Message(topic=T.assign("a1"), payload=encode(spec), qos=1))


def events(agent: Agent, job: str) -> list[str]:
    return [body["kind"] for topic, body in agent.session.messages(T.events("a1")) if body["key"] == f"dev/{job}"]


def test_an_assignment_to_a_free_slot_is_started_streamed_and_done(agent):
    wait_for(lambda: agent._idle == 1, 10, what="the slot to wait for work")
    assign(agent, "j1")
    wait_for(lambda: "done" in events(agent, "j1"), 10, what="the done event")
    assert events(agent, "j1") == ["started", "done"]  # started at once: it says accepted as well
    chunks = [body for _, body in agent.session.messages(T.results("dev", "j1"))]
    done = next(body for _, body in agent.session.messages(T.events("a1")) if body["kind"] == "done")
    assert "".join(c["text"] for c in chunks) == done["text"] and done["usage"]["completion_tokens"] == 8
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))


def test_an_assignment_that_waits_for_a_slot_is_accepted_first(agent):
    assign(agent, "busy", max_tokens=100)
    wait_for(lambda: "started" in events(agent, "busy"), 10, what="the slot to be busy")
    assign(agent, "next")
    wait_for(lambda: "done" in events(agent, "next"), 10, what="the done event")
    assert events(agent, "next") == ["accepted", "started", "done"]


def test_a_response_topic_outside_the_devices_results_gets_no_chunk(agent):
    assign(agent, "j2", response_topic="elsewhere/replies")
    wait_for(lambda: "done" in events(agent, "j2"), 10, what="the done event")
    assert not agent.session.messages("elsewhere/")


def test_a_cancel_stops_the_generation(agent):
    assign(agent, "long", max_tokens=1000)
    wait_for(lambda: "started" in events(agent, "long"), 10, what="the job to start")
    ctl = Control(cancel="dev/long", attempt=1)
    agent._on_message(Message(topic=T.control("a1"), payload=encode(ctl), qos=1))
    wait_for(lambda: events(agent, "long")[-1] != "started", 10, what="the job to end")
    last = [body for _, body in agent.session.messages(T.events("a1")) if body["key"] == "dev/long"][-1]
    assert last["kind"] != "done" or last["usage"]["completion_tokens"] < 1000


def test_a_malformed_assignment_is_dropped_and_the_agent_serves_on(agent):
    agent._on_message(Message(topic=T.assign("a1"), payload=b'{"key": 5}', qos=1))
    assign(agent, "after")
    wait_for(lambda: "done" in events(agent, "after"), 10, what="the done event")
    statuses = [orjson.loads(p) for t, p, _ in agent.session.published if t == T.agent_status("a1")]
    assert statuses and statuses[-1]["state"] == "online"


def test_the_status_advertises_prefill_and_decode_rates_by_slots_busy():
    from agents.status import StatusBoard

    board = StatusBoard(AgentSettings(site=SITE, agent_id="a2", slots=2), [])
    board.base_prompt_tokens = 10
    board.record_prefill(240, 1.2, prior=True)  # 240 more prompt tokens took 1.2 s more: 200 tokens/s
    board.record(0.1, 40.0, 8, prompt_tokens=10, running=1)
    board.record(1.1, 25.0, 8, prompt_tokens=210, running=2)  # a long prompt, with the other slot busy
    st = board.snapshot()
    assert st.prefill_tps == 200.0 and st.decode_tps_at == [40.0, 25.0]
    assert st.ttft_ms == 100.0  # the long prompt's prefill is not counted into the short prompt's TTFT


def test_a_jobs_rate_is_kept_at_the_level_it_ran_at_not_the_one_it_ended_at():
    """Two jobs start together; the short one ends first. The long one decoded most of its tokens
    beside the other, so its rate is a two-jobs rate, although it ended alone."""
    a = Agent(AgentSettings(site=SITE, agent_id="a3", slots=2, calibrate_tokens=2, heartbeat_s=0.2),
              lambda: {"m": SyntheticBackend(tokens_per_s=100.0)}, session=MemorySession())
    a.start()
    try:
        wait_for(lambda: a._idle == 2, 10, what="both slots to wait for work")
        for job, tokens in (("long", 40), ("short", 30)):
            spec = Assignment(key=f"dev/{job}", device="dev", job=job, attempt=1, prompt="x", max_tokens=tokens,
                              result_topic=T.results("dev", job), assigned_at=time.time())
            a._on_message(Message(topic=T.assign("a3"), payload=encode(spec), qos=1))
        done = lambda: [b for _, b in a.session.messages(T.events("a3")) if b["kind"] == "done"]  # noqa: E731
        wait_for(lambda: len(done()) == 2, 10, what="both jobs to finish")
        assert [b["key"] for b in done()] == ["dev/short", "dev/long"]
        one, two = a.board.decode_at
        assert (one.samples, two.samples) == (0, 2)  # level 1 still holds only the calibration's prior
    finally:
        a.request_stop()


def test_steps_shared_with_another_requests_prompt_teach_no_rate():
    """A reading decoded beside a neighbour's 1,000-token prompt came at the prompt's pace: its
    rate is measured over the steps it had to itself, and its first token, if crowded, teaches
    nothing. The device's own figures (``decode_tps``) stay what it saw."""
    from agents.backends.base import Generation
    from agents.status import StatusBoard

    alone = Generation("", 10, 33, 0.1, 1.7, "length")
    crowded = Generation("", 10, 33, 0.1, 3.3, "length", crowded_tokens=16, crowded_s=2.0, crowded_first=True)
    swamped = Generation("", 10, 33, 0.1, 6.1, "length", crowded_tokens=28, crowded_s=5.0)
    assert alone.steady_tps == alone.decode_tps == 20.0
    assert crowded.decode_tps == 10.0 and round(crowded.steady_tps, 2) == 13.33  # 16 tokens in 1.2 s
    assert swamped.steady_tps == 0.0  # 4 tokens alone: too few to tell

    board = StatusBoard(AgentSettings(site=SITE, agent_id="a4", slots=1), [])
    board.record(0.1, 20.0, 8, prior=True)
    board.record(None, swamped.steady_tps, 32)  # nothing to learn from it
    st = board.snapshot()
    assert (st.ttft_ms, st.decode_tps, st.decode_tps_at) == (100.0, 20.0, [20.0])


def test_a_long_prompt_teaches_the_prefill_rate_and_a_job_cancelled_before_its_first_token_nothing():
    from agents.status import StatusBoard

    board = StatusBoard(AgentSettings(site=SITE, agent_id="a5", slots=1), [])
    board.base_prompt_tokens = 10
    board.record(0.1, 20.0, 0, prior=True)
    board.record_prefill(100, 0.4, prior=True)  # calibrated on ~100 tokens: 250 tokens/s
    board.record(8.6, 20.0, 32, prompt_tokens=1090)  # a 1,090-token log: 1,080 more in 8.5 s
    board.record(0.0, 0.0, 0, prompt_tokens=1090)  # a log cancelled before its first token
    st = board.snapshot()
    assert st.ttft_ms == 100.0 and round(st.prefill_tps) == 127


def test_the_prefill_rate_is_advertised_by_prompt_length_and_each_length_learns_its_own():
    from agents.status import StatusBoard

    board = StatusBoard(AgentSettings(site=SITE, agent_id="a6", slots=1), [])
    board.base_prompt_tokens = 10
    board.record(0.1, 20.0, 0, prior=True)
    board.record_prefill(90, 0.25, prior=True)  # calibration, ~100 tokens: 360 tokens/s
    board.record_prefill(500, 1.6, prior=True, curve_only=True)  # ... and ~512: 312.5 tokens/s
    st = board.snapshot()
    assert st.prefill_tps == 360.0  # the one rate, as before the table: the ~100-token prompt's at start
    assert st.prefill_tps_at == [(90, 360.0), (500, 312.5)]
    board.record(0.1 + 1080 / 270, 20.0, 32, prompt_tokens=1090)  # a log, 1,080 tokens at 270/s
    board.record(0.1 + 480 / 300, 20.0, 32, prompt_tokens=490)  # a 480-token prompt: replaces 512's prior
    st = board.snapshot()
    assert st.prefill_tps_at == [(90, 360.0), (480, 300.0), (1080, 270.0)]
    board.prefill_at.add(4000, 0.04)  # a rate that rounds to 0 is not advertised: the status must validate
    assert board.snapshot().prefill_tps_at == [(90, 360.0), (480, 300.0), (1080, 270.0)]


def test_prompts_a_few_dozen_tokens_long_do_not_inflate_the_ttft_or_the_next_prefill_rate():
    from agents.status import StatusBoard

    board = StatusBoard(AgentSettings(site=SITE, agent_id="a6", slots=1), [])
    board.base_prompt_tokens = 10
    board.record(0.1, 20.0, 0, prior=True)
    board.record_prefill(240, 1.0, prior=True)  # 240 tokens/s
    for _ in range(5):  # readings 60 tokens past the calibration prompt: 0.25 s of prefill each
        board.record(0.1 + 60 / 240, 20.0, 32, prompt_tokens=70)
    board.record(0.1 + 64 / 240, 20.0, 32, prompt_tokens=74)  # 64 past: a prefill sample
    st = board.snapshot()
    assert round(st.ttft_ms) == 100 and round(st.prefill_tps) == 240
