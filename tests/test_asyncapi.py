"""schemas/asyncapi.json, the MQTT API as AsyncAPI 3.0: valid against the official AsyncAPI schema, generated
from the types (never drifts), every topic and message of the contract in it, every reference resolving,
its examples valid messages, and its operations the ones the broker's ACL allows each kind of client."""

from __future__ import annotations

import hashlib
import inspect
import re
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from paho.mqtt.client import topic_matches_sub

from broker.ops.security import acl_rules
from schemas import decode
from schemas.asyncapi import PARAMETERS, placeholder
from schemas.catalog import ALL_MESSAGES
from schemas.generate import ASYNCAPI_FILE, OUT_DIR, generated
from schemas.topics import Topics

SPEC = Path(__file__).parent / "asyncapi" / "asyncapi-3.0.0.schema.json"
SPEC_SHA256 = "d4571a420e6ffb7fcc7066c95a6db1202f299a3c51daa103d0706bf30f95e626"
# Topics methods that are not topics of fogmesh's tree, or not topics at all.
NOT_CHANNELS = {"parse", "response_topic_problem", "prefix",
                # Home Assistant's discovery tree: its format is Home Assistant's
                "ha_discovery", "ha_device_discovery", "ha_site_discovery"}
ARGUMENT_PARAMETERS = {"device": "device_id", "job": "job_id", "agent": "agent_id"}
# Which role of docs/security.md uses the operations of each tag, and as whom.
ROLES = {"device": "device", "status": "dashboard", "operator": "operator"}


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return dict(orjson.loads(ASYNCAPI_FILE.read_bytes()))


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """A $ref of the document: a JSON pointer into it, or a file beside it (and a pointer into that)."""
    where, _, pointer = ref.partition("#")
    node: Any = orjson.loads((ASYNCAPI_FILE.parent / where).read_bytes()) if where else doc
    for part in filter(None, pointer.split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve (at {part!r})"
        node = node[part]
    return node


def refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return own + [r for v in value.values() for r in refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    return []


def concrete(address: str, **values: str) -> str:
    """The address with its parameters filled in."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), f"x-{m.group(1)}"), address)


def test_the_committed_document_is_what_the_types_generate():
    assert ASYNCAPI_FILE.read_bytes() == generated()[ASYNCAPI_FILE], "run: python -m schemas.generate"


def test_the_document_is_valid_asyncapi_3(doc):
    raw = SPEC.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SPEC_SHA256, "the official schema was changed; see its README"
    spec = orjson.loads(raw)
    jsonschema.Draft7Validator.check_schema(spec)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
              for e in jsonschema.Draft7Validator(spec).iter_errors(doc)]
    assert errors == []
    assert doc["asyncapi"] == "3.0.0"


def test_the_official_schema_catches_a_wrong_document(doc):
    """The check above can fail: an MQTT binding with a QoS MQTT does not have is refused."""
    spec = orjson.loads(SPEC.read_bytes())
    wrong = orjson.loads(orjson.dumps(doc))
    wrong["operations"]["sendPrompt"]["bindings"]["mqtt"]["qos"] = 3
    assert not jsonschema.Draft7Validator(spec).is_valid(wrong)


def test_every_reference_resolves(doc):
    found = refs(doc)
    assert len(found) > 50
    for ref in found:
        resolve(doc, ref)
    # the payloads are the generated JSON Schema files, not copies
    files = {ref.partition("#")[0] for ref in found if not ref.startswith("#")}
    assert files == {f"json/{p.name}" for p in OUT_DIR.glob("*.schema.json")}


def test_every_topic_of_the_tree_is_a_channel_with_its_parameters_declared(doc):
    site = Topics(placeholder("site"))
    addresses = {ch["address"] for ch in doc["channels"].values()}
    for name, member in inspect.getmembers(Topics):
        if name.startswith("_") or name in NOT_CHANNELS or not (callable(member) or isinstance(member, property)):
            continue  # the site field
        if isinstance(member, property):
            topic = getattr(site, name)
        else:
            args = [a for a in inspect.signature(member).parameters if a != "self"]
            topic = getattr(site, name)(*(placeholder(ARGUMENT_PARAMETERS[a]) for a in args))
        for param in PARAMETERS:
            topic = topic.replace(placeholder(param), "{" + param + "}")
        assert topic in addresses, f"Topics.{name} ({topic}) has no channel in schemas/asyncapi.py"
    for key, ch in doc["channels"].items():
        named = re.findall(r"\{(\w+)\}", ch["address"])
        assert sorted(named) == sorted(ch.get("parameters", {})), key
        for param in named:
            assert param in doc["components"]["parameters"], param
        assert ch["address"].startswith("fogmesh/{site}/"), key


def test_every_operation_uses_its_channels_messages(doc):
    for name, op in doc["operations"].items():
        channel_ref = op["channel"]["$ref"]
        channel = resolve(doc, channel_ref)
        for m in op["messages"]:
            assert m["$ref"].startswith(channel_ref + "/messages/"), (name, m)
        if "reply" in op:
            for m in op["reply"]["messages"]:
                assert m["$ref"].startswith(op["reply"]["channel"]["$ref"] + "/messages/"), (name, m)
        assert op["bindings"]["mqtt"]["qos"] == 1, name
        # the statuses a dashboard reads on subscribing are retained, nothing else is
        assert op["bindings"]["mqtt"]["retain"] is (op["tags"][0]["name"] == "status"), name
        assert channel["tags"] == op["tags"], name
        assert op["action"] in ("send", "receive")


def test_every_message_type_is_described_with_examples_that_are_valid_messages(doc):
    messages = doc["components"]["messages"]
    assert {kind.__name__ for kind in ALL_MESSAGES.values()} == set(messages)
    in_channels = {m["$ref"].rsplit("/", 1)[-1] for ch in doc["channels"].values() for m in ch["messages"].values()}
    assert in_channels == set(messages)
    for file_name, kind in ALL_MESSAGES.items():
        message = messages[kind.__name__]
        assert message["summary"] and message["examples"], kind.__name__
        schema = resolve(doc, resolve(doc, message["payload"]["$ref"])["schema"]["$ref"])
        assert schema["$id"].endswith(f"/{file_name}.schema.json")
        for example in message["examples"]:
            jsonschema.Draft202012Validator(schema).validate(example["payload"])
            decode(orjson.dumps(example["payload"]), kind)


def test_the_operations_are_what_the_acl_allows_each_client(doc):
    """A device may do every device operation, a dashboard every status one, an operator every
    operator one; no device or dashboard may publish on an internal channel."""
    site = Topics("plant")
    for name, op in doc["operations"].items():
        address = resolve(doc, op["channel"]["$ref"])["address"]
        tag = op["tags"][0]["name"]
        topic = concrete(address, site="plant", device_id="sensor-7", job_id="j1", agent_id="edge-01", token="t1")
        if tag == "internal":
            for role in ("device", "dashboard"):
                assert not any(a == "write" and topic_matches_sub(f, topic)
                               for a, f in acl_rules(site, "sensor-7", role)), (name, role)
            continue
        access = "write" if op["action"] == "send" else "read"
        rules = acl_rules(site, "sensor-7", ROLES[tag])
        assert any(a == access and topic_matches_sub(f, topic) for a, f in rules), (name, ROLES[tag], topic)
        if "reply" in op:
            reply = concrete(resolve(doc, op["reply"]["channel"]["$ref"])["address"], site="plant", token="t1")
            assert any(a == "read" and topic_matches_sub(f, reply) for a, f in rules), name


def test_each_servers_host_variables_are_declared(doc):
    assert {s["protocol"] for s in doc["servers"].values()} == {"mqtt", "secure-mqtt", "ws", "wss"}
    for name, server in doc["servers"].items():
        assert set(re.findall(r"\{(\w+)\}", server["host"])) == set(server["variables"]), name
        assert server["protocolVersion"] == "5"
