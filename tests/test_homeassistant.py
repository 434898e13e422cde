"""Home Assistant: the agents and the site announce themselves as Home Assistant documents it
(device-based discovery), and what Home Assistant makes of it is what a user should see."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson
import pytest

from agents.homeassistant import AgentDiscovery
from broker.coordinator.homeassistant import site_discovery
from broker.ops.security import acl_rules
from broker.runtime.mqtt import BrokerAddress, Message
from schemas.topics import HA_PREFIX, Topics, ha_node_id, ha_site_node_id
from tests.conftest import agent_args, wait_online
from tests.homeassistant import entities, render, shown
from tests.services import Listener, wait_for

ON = {"FOGMESH_AGENT_HA_DISCOVERY": "true", "FOGMESH_COORDINATOR_HA_DISCOVERY": "true"}


def keys(value: Any) -> set[str]:
    """Every key at any depth of a JSON value."""
    if isinstance(value, dict):
        return set(value).union(*(keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys(v) for v in value))
    return set()


def agent_config(site: str, agent: str, models: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    ((topic, payload),) = AgentDiscovery(site, agent, HA_PREFIX).messages(models or ["gemma-3-270m"])
    return topic, orjson.loads(payload)


def test_agent_and_site_configs_pass_home_assistants_discovery_schema():
    for site, agent in (("plant", "edge-01"), ("a_b", "edge.7"), ("s", "x@y:z")):
        topic, config = agent_config(site, agent)
        assert topic == f"homeassistant/device/{ha_node_id(site, agent)}/config"
        agent_entities = entities(config)
        assert {k: p for k, (p, _) in agent_entities.items()} == {
            "state": "sensor", "decode_tps": "sensor", "ttft_ms": "sensor", "slots_free": "sensor",
            "queue_depth": "sensor", "online": "binary_sensor"}
        topic, raw = site_discovery(site, HA_PREFIX)
        assert topic == f"homeassistant/device/{ha_site_node_id(site)}/config"
        site_entities = entities(orjson.loads(raw))
        assert {k: p for k, (p, _) in site_entities.items()} == {
            "queue_depth": "sensor", "agents_online": "sensor", "jobs_per_minute": "sensor",
            "cloud_share": "sensor", "latency_p50_ms": "sensor", "coordinator": "binary_sensor"}
        everything = [c for _, c in [*agent_entities.values(), *site_entities.values()]]
        assert "object_id" not in keys(config) | keys(orjson.loads(raw))
        # one entity each in Home Assistant's registry: unique ids and proposed entity ids differ
        assert len({c["unique_id"] for c in everything}) == len({c["default_entity_id"] for c in everything}) == 12
        assert agent_entities["online"][1]["device_class"] == "connectivity"
        assert "availability_topic" not in agent_entities["online"][1]  # OFF when offline, not unavailable
        assert agent_entities["ttft_ms"][1]["unit_of_measurement"] == "ms"
        assert site_entities["cloud_share"][1]["unit_of_measurement"] == "%"
        assert site_entities["coordinator"][1]["state_topic"] == f"fogmesh/{site}/coordinator/status"
        assert site_entities["queue_depth"][1]["state_topic"] == f"fogmesh/{site}/mesh/status"


# what Home Assistant refuses (the payload) or drops (an option), and a word of the reason
@pytest.mark.parametrize("change, reason", [
    (lambda c: c["cmps"]["state"].update(object_id="x"), "object_id"),
    (lambda c: c["cmps"]["decode_tps"].update(unit_of_measure="tok/s"), "unit_of_measure"),
    (lambda c: c.update(retain=True), "retain"),
    (lambda c: c.pop("o"), "origin"),
    (lambda c: c["dev"].pop("identifiers"), "identifiers"),
    (lambda c: c["cmps"]["online"].pop("unique_id"), "unique_id"),
    (lambda c: c["cmps"]["state"].update(state_class="measurement"), "state_class"),
    (lambda c: c["cmps"]["ttft_ms"].update(unit_of_measurement="tok"), "'tok'"),
    (lambda c: c["cmps"]["online"].update(p="light"), "light"),
])
def test_the_schema_rejects_what_home_assistant_would_refuse_or_drop(change, reason):
    _, config = agent_config("plant", "edge-01")
    entities(config)
    change(config)
    with pytest.raises(jsonschema.ValidationError) as err:
        entities(config)
    assert reason in str(err.value)


def test_site_sensors_show_unknown_before_the_coordinator_has_a_window():
    _, raw = site_discovery("plant", HA_PREFIX)
    site = entities(orjson.loads(raw))
    mesh = {"agents_online": 2, "slots_total": 2, "slots_free": 2, "queue_depth": 3, "running": 0}
    for status in ({**mesh, "recent": None}, mesh):  # none yet; and from a coordinator older than `recent`
        assert render(site["queue_depth"][1]["value_template"], status) == "3"
        for key in ("jobs_per_minute", "cloud_share", "latency_p50_ms"):
            assert render(site[key][1]["value_template"], status) == "None"  # HA: unknown
    recent = {"window_s": 60.0, "finished": 7, "done": 4, "cloud_share": 0.25, "latency_p50_ms": 812.5}
    status = {**mesh, "recent": recent}
    assert render(site["jobs_per_minute"][1]["value_template"], status) == "7.0"
    assert render(site["cloud_share"][1]["value_template"], status) == "25.0"
    assert render(site["latency_p50_ms"][1]["value_template"], status) == "812.5"


def test_an_agent_migrates_the_per_sensor_configs_it_finds_and_only_those():
    ha = AgentDiscovery("plant", "edge-01", HA_PREFIX)
    old = [Topics("plant").ha_discovery("edge-01", key) for key in ("state", "ttft_ms")]
    for topic in old:
        ha.saw(Message(topic=topic, payload=b'{"name": "State"}', qos=1, retain=True))
    ha.saw(Message(topic=Topics("plant").ha_discovery("edge-01", "slots_free"), payload=b"", qos=1, retain=True))
    device = Topics("plant").ha_device_discovery("edge-01")
    sent = ha.messages(["gemma"])
    # HA's documented order: migrate (the entity is unloaded, kept), the device config takes it over
    # under the same discovery id and unique id, then the old topics are cleared
    assert [(t, p) for t, p in sent if t != device] == [*((t, b'{"migrate_discovery":true}') for t in old),
                                                         *((t, b"") for t in old)]
    assert [t for t, _ in sent].index(device) == len(old)
    config = orjson.loads(dict(sent)[device])
    for topic in old:
        key = topic.split("/")[-2]
        assert config["cmps"][key]["unique_id"] == f"{ha_node_id('plant', 'edge-01')}_{key}"
    assert [t for t, _ in ha.messages(["gemma"])] == [device]  # the next start: nothing left to migrate


def test_the_acl_lets_each_daemon_write_its_own_device_config_only():
    t = Topics("s")
    agent = acl_rules(t, "edge-1", "agent")
    assert ("write", t.ha_device_discovery("edge-1")) in agent
    assert ("read", t.ha_discovery("edge-1")) in agent and ("write", t.ha_discovery("edge-1")) in agent
    assert not any(t.ha_site_discovery() == topic or "edge-2" in topic for _, topic in agent)
    assert ("write", t.ha_site_discovery()) in acl_rules(t, "gw", "coordinator")
    nodes = {ha_site_node_id(site) for site in ("a", "a_b", "a.b", "a-b")}
    agents = {ha_node_id(site, agent) for site, agent in (("a", "b"), ("a", "b_c"), ("a_b", "c"), ("a", "b.c"))}
    assert len(nodes) == 4 and len(agents) == 4 and not nodes & agents


@pytest.mark.slow
def test_home_assistant_sees_the_site_and_an_agent_from_their_own_status(daemons, broker_url, site_id, device):
    """Coordinator and agent with discovery on, each entity's state rendered from the real retained
    statuses as Home Assistant renders it, through a job and the agent's death."""
    address = BrokerAddress.parse(broker_url)
    topics = Topics(site_id)
    # per-sensor configs an older fogmesh left for this agent: migrated, not left behind
    old = Listener(address)
    for key in ("state", "decode_tps"):
        old.session.publish_wait(topics.ha_discovery("edge.7", key), b'{"name": "x"}', retain=True)
    old.close()
    ha = Listener(address, "homeassistant/#", f"fogmesh/{site_id}/#")
    try:
        daemons("coordinator", env=ON)
        agent = daemons("agent", *agent_args("edge.7"), env=ON)
        wait_online(broker_url, site_id, 1)
        agent_topic, site_topic = topics.ha_device_discovery("edge.7"), topics.ha_site_discovery()

        def latest() -> dict[str, dict[str, Any]]:
            return {topic: msg for topic, msg in list(ha.messages)}

        wait_for(lambda: {agent_topic, site_topic} <= set(latest()), 30, what="both device configs")
        legacy = {topics.ha_discovery("edge.7", k) for k in ("decode_tps", "state")}
        seen = [(t, m) for t, m in list(ha.messages) if t.startswith("homeassistant/")]
        migrated = [i for i, (t, m) in enumerate(seen) if t in legacy and m == {"migrate_discovery": True}]
        cleared = [i for i, (t, m) in enumerate(seen) if t in legacy and m == {}]
        configured = [i for i, (t, _) in enumerate(seen) if t == agent_topic]
        assert len(migrated) == len(cleared) == 2 and len(configured) == 1
        assert max(migrated) < configured[0] < min(cleared)  # Home Assistant's documented order
        agent_view = {k: c for k, (_, c) in entities(latest()[agent_topic]).items()}
        site_view = {k: c for k, (_, c) in entities(latest()[site_topic]).items()}
        assert "object_id" not in keys(latest()[agent_topic]) | keys(latest()[site_topic])

        def agent_sees(key: str) -> str | None:
            return shown(agent_view[key], latest())

        def site_sees(key: str) -> str | None:
            return shown(site_view[key], latest())

        assert agent_sees("state") == "online" and agent_sees("online") == "ON"
        assert float(agent_sees("decode_tps") or 0) > 1 and float(agent_sees("ttft_ms") or 0) > 0
        assert agent_sees("slots_free") == "1" and agent_sees("queue_depth") == "0"
        assert site_sees("coordinator") == "ON" and site_sees("agents_online") == "1"
        assert site_sees("queue_depth") == "0"

        device.send({"id": "ha-1", "prompt": "The greenhouse humidity is", "max_tokens": 8})
        assert device.final("ha-1")["status"] == "done"
        wait_for(lambda: site_sees("jobs_per_minute") == "1.0", 15, what="one job in the last minute")
        assert site_sees("cloud_share") == "0.0"
        assert float(site_sees("latency_p50_ms") or 0) > 0

        agent.kill()  # its Last Will says offline
        wait_for(lambda: agent_sees("online") == "OFF", 20, what="the agent's connectivity OFF")
        assert agent_sees("state") == "offline"
        assert agent_sees("decode_tps") is None and agent_sees("queue_depth") is None  # unavailable
        wait_for(lambda: site_sees("agents_online") == "0", 30, what="no agent online on the site")
        assert site_sees("coordinator") == "ON"
    finally:
        ha.close()
