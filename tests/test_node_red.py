"""deploy/node-red/fogmesh-flow.json, the Node-RED example: an importable flow of core nodes that asks a
site for JSON following a schema and switches on the answer's ``json`` field.

Node-RED is not installed here; the flow is checked as Node-RED and fogmesh would read it, and its prompt
is sent, as it stands in the flow, to a real site with the real model (docs/node-red.md)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from paho.mqtt.client import topic_matches_sub

from broker.ops.security import acl_rules
from broker.runtime.mqtt import BrokerAddress
from schemas import decode, output
from schemas.enforce import check as enforceable
from schemas.messages import Prompt
from schemas.topics import Topics, check_id
from tests.conftest import agent_args, wait_online
from tests.services import ROOT, Device

FLOW = ROOT / "deploy" / "node-red" / "fogmesh-flow.json"

# The node types Node-RED 4 registers itself (@node-red/nodes), and the flow file's own structure types:
# a user who imports the flow needs no palette module.
CORE_TYPES = frozenset({
    "tab", "group", "subflow",
    "inject", "debug", "complete", "catch", "status", "link in", "link out", "link call", "comment", "junction",
    "global-config", "unknown",
    "function", "switch", "change", "range", "template", "delay", "trigger", "exec", "rbe",
    "tls-config", "http proxy", "mqtt in", "mqtt out", "mqtt-broker", "http in", "http response", "http request",
    "websocket in", "websocket out", "websocket-listener", "websocket-client", "tcp in", "tcp out", "tcp request",
    "udp in", "udp out",
    "csv", "html", "json", "xml", "yaml",
    "split", "join", "sort", "batch",
    "file", "file in", "watch",
})
PROMPT_LITERAL = re.compile(r"^const prompt = (\{.*?\n\});$", re.DOTALL | re.MULTILINE)


def load_flow(path: Path = FLOW) -> list[dict[str, Any]]:
    nodes = orjson.loads(path.read_bytes())
    assert isinstance(nodes, list) and all(isinstance(n, dict) for n in nodes), "a flow export is a list of nodes"
    return nodes


def by_type(nodes: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [n for n in nodes if n["type"] == kind]


def one(nodes: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_type(nodes, kind)
    assert len(found) == 1, f"expected one {kind} node, found {len(found)}"
    return found[0]


def downstream(nodes: list[dict[str, Any]], start: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node a message from ``start`` can reach, in the order first reached."""
    index = {n["id"]: n for n in nodes}
    seen: list[str] = []
    todo = [start["id"]]
    while todo:
        node = index[todo.pop(0)]
        for port in node.get("wires", []):
            for target in port:
                if target not in seen:
                    seen.append(target)
                    todo.append(target)
    return [index[i] for i in seen]


def targets(node: dict[str, Any], port: int = 0) -> list[str]:
    return list(node["wires"][port])


def the_prompt(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The prompt the flow publishes, as the JSON literal in its function node."""
    (builder,) = [n for n in by_type(nodes, "function") if PROMPT_LITERAL.search(n["func"])]
    match = PROMPT_LITERAL.search(builder["func"])
    assert match is not None
    return dict(orjson.loads(match.group(1)))


def level_switch(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    (switch,) = [n for n in by_type(nodes, "switch") if n["property"].startswith("payload.json.")]
    return switch


def where(nodes: list[dict[str, Any]]) -> tuple[Topics, str]:
    """The site and device of the flow's topics, as fogmesh parses them."""
    out = one(nodes, "mqtt out")["topic"]
    site = out.split("/")[1]
    kind, device = Topics(site).parse(out)
    assert kind == "prompts"
    return Topics(site), device


@pytest.fixture(scope="module")
def flow() -> list[dict[str, Any]]:
    return load_flow()


def test_the_flow_is_an_importable_list_of_core_nodes(flow):
    ids = [n["id"] for n in flow]
    assert len(ids) == len(set(ids)), "node ids must be unique"
    known = set(ids)
    for node in flow:
        assert node["type"] in CORE_TYPES, f"{node['id']}: {node['type']!r} is not a core Node-RED node"
        for port in node.get("wires", []):
            assert set(port) <= known, f"{node['id']} is wired to a node the flow does not have: {port}"
        if "z" in node:
            assert node["z"] in known, f"{node['id']} sits on a tab the flow does not have"
    tabs = {n["id"] for n in by_type(flow, "tab")}
    assert tabs and all(n.get("z") in tabs for n in flow if n["type"] not in ("tab", "mqtt-broker"))


def test_the_mqtt_nodes_share_one_mqtt5_broker_and_carry_no_secret(flow):
    broker = one(flow, "mqtt-broker")
    assert str(broker["protocolVersion"]) == "5"
    for node in by_type(flow, "mqtt in") + by_type(flow, "mqtt out"):
        assert node["broker"] == broker["id"], node["id"]
    # user and password live in Node-RED's credentials store, never in the exported flow
    assert not {"credentials", "user", "password"} & set(broker)
    assert b"password" not in orjson.dumps(broker).lower()


def test_the_topics_are_one_devices_own_and_its_acl_allows_them(flow):
    topics, device = where(flow)
    check_id(device, "device id")
    ask, answers = one(flow, "mqtt out"), one(flow, "mqtt in")
    assert ask["topic"] == topics.prompts(device)
    assert (str(ask["qos"]), str(ask["retain"])) == ("1", "false")
    assert topics.parse(answers["topic"]) == ("results", device, "+")
    assert str(answers["qos"]) == "1"
    # what `fogmesh broker config` gives a user of role device with this name
    rules = acl_rules(topics, device, "device")
    assert ("write", ask["topic"]) in rules
    assert any(access == "read" and topic_matches_sub(acl, answers["topic"].replace("+", "room-1"))
               for access, acl in rules)


def test_the_prompt_is_valid_and_asks_for_json_the_switch_reads(flow):
    prompt = the_prompt(flow)
    request = decode(orjson.dumps(prompt), Prompt)  # the coordinator's own validation
    assert request.stream is False and request.wants_json
    fmt = request.response_format
    assert fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None
    schema = fmt.json_schema.schema
    enforceable(schema)
    output.check(fmt)  # the grammar the agent would constrain generation with
    switch = level_switch(flow)
    field = switch["property"].removeprefix("payload.json.")
    assert field in schema["properties"] and field in schema.get("required", [])
    matched = {r["v"] for r in switch["rules"] if r["t"] == "eq"}
    assert matched == set(schema["properties"][field]["enum"]), "a rule for every value the schema allows"
    assert len(switch["wires"]) == len(switch["rules"]) == switch["outputs"]


def test_results_are_parsed_and_only_a_done_final_reaches_the_switch(flow):
    answers = one(flow, "mqtt in")
    path = downstream(flow, answers)
    parse, is_final, is_done = path[0], path[1], path[2]
    assert parse["type"] == "json" and parse["property"] == "payload"
    assert (is_final["type"], is_final["property"], is_final["rules"]) == ("switch", "payload.final", [{"t": "true"}])
    assert (is_done["type"], is_done["property"]) == ("switch", "payload.status")
    assert is_done["rules"] == [{"t": "eq", "v": "done", "vt": "str"}, {"t": "else"}]
    assert targets(is_done, 0) == [level_switch(flow)["id"]]
    # a status other than done is shown with its error code
    (why,) = [n for n in flow if n["id"] in targets(is_done, 1)]
    assert "payload.error.code" in orjson.dumps(why).decode()
    assert all(n["type"] == "debug" for n in downstream(flow, why))
    assert all(n["type"] == "debug" for n in downstream(flow, level_switch(flow)))


def test_the_inject_feeds_the_function_that_publishes_the_prompt(flow):
    path = downstream(flow, one(flow, "inject"))
    assert [n["type"] for n in path] == ["function", "mqtt out"]
    assert PROMPT_LITERAL.search(path[0]["func"])


@pytest.mark.slow
def test_the_flows_prompt_gets_an_answer_its_switch_can_route(daemons, broker_url, site_id):
    """The flow's prompt, published as the flow publishes it, on a site with the real model."""
    _, device_id = where(load_flow())
    daemons("coordinator")
    daemons("agent", *agent_args("a1", threads=2))
    wait_online(broker_url, site_id, 1)
    flow = load_flow()
    prompt = {**the_prompt(flow), "id": "room-1"}
    device = Device(BrokerAddress.parse(broker_url), site_id, device_id)
    try:
        device.send(prompt)
        final = device.final("room-1", timeout_s=120)
    finally:
        device.close()
    assert final["final"] is True and final["status"] == "done", final
    assert "room-1" not in device.chunks, "stream false: the final message only"
    switch = level_switch(flow)
    value = final["json"][switch["property"].removeprefix("payload.json.")]
    assert value in {r["v"] for r in switch["rules"] if r["t"] == "eq"}
