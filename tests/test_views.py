"""The coordinator's agent view: stale and out-of-order statuses are ignored, lapsed agents dropped."""

from __future__ import annotations

from broker.coordinator.registry import Registry
from schemas.status import AgentStatus


def status(epoch: int, seq: int, state: str = "online", **kw) -> AgentStatus:
    return AgentStatus(agent="a1", epoch=epoch, seq=seq, state=state, heartbeat_s=1.0, **kw)


def test_a_retained_status_from_an_earlier_boot_is_ignored():
    r = Registry()
    assert r.update(status(200, 1), 0.0) == "new"
    assert r.update(status(100, 9), 0.1) == "ignored"
    assert r.agents["a1"].status.epoch == 200


def test_out_of_order_statuses_are_ignored():
    r = Registry()
    r.update(status(1, 5), 0.0)
    assert r.update(status(1, 4, slots_free=9), 0.1) == "ignored"


def test_the_will_of_this_boot_marks_it_offline_but_an_old_will_does_not():
    r = Registry()
    r.update(status(2, 5), 0.0)
    assert r.update(status(1, 0, "offline"), 0.1) == "ignored"
    assert r.is_online("a1")
    assert r.update(status(2, 0, "offline"), 0.2) == "offline"
    assert not r.is_online("a1")


def test_a_new_boot_is_a_restart():
    r = Registry()
    r.update(status(1, 3), 0.0)
    assert r.update(status(2, 1), 0.1) == "restarted"


def test_draining_agents_are_alive_but_take_no_work():
    r = Registry()
    r.update(status(1, 1), 0.0)
    assert r.update(status(1, 2, "draining"), 0.1) == "draining"
    assert r.is_online("a1") and not r.agents["a1"].accepting


def test_a_lapsed_heartbeat_drops_the_agent():
    r = Registry(timeout_factor=3)
    r.update(status(1, 1), 0.0)
    assert r.sweep(2.9) == []
    assert r.sweep(3.1) == ["a1"]
    assert not r.is_online("a1")
