"""The MQTT API as an AsyncAPI 3.0 document, built from the topic tree and the message types.

``python -m schemas.generate`` writes it to ``schemas/asyncapi.json`` beside the JSON Schemas in
``schemas/json/``, which its message payloads refer to (one definition of each message, not two).
Channel addresses come from :class:`schemas.topics.Topics` itself, with placeholder ids turned into
the document's parameters; operations are what a device, a dashboard or an operator's tool does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import orjson

from schemas.catalog import ALL_MESSAGES
from schemas.codec import encode
from schemas.examples import EXAMPLES
from schemas.topics import ID_PATTERN, Topics

ASYNCAPI = "3.0.0"
MQTT_BINDING = "0.2.0"
# The payloads are the generated JSON Schema files, in their own dialect.
SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
CONTENT_TYPE = "application/json"

# Ids Topics accepts as they are; in an address each becomes its parameter, e.g. {device_id}.
PARAMETERS: dict[str, tuple[str, str]] = {
    "site": ("The site's id (`[site] site` in fogmesh.toml, `--site`; default `site`).", "site"),
    "device_id": ("The device's id; on a secured broker, its MQTT user name (role `device`).", "sensor-7"),
    "job_id": ("The job's id: the prompt's `id`, or one fogmesh made when it had none.", "reading-0042"),
    "agent_id": ("An agent's id (`fogmesh agent --agent-id`; on a secured broker, its user name).", "edge-01"),
    "token": ("A level of the requester's choosing, so that its reply reaches it alone.", "3f9a1c0b"),
}
SITE = Topics("__site__")


def placeholder(name: str) -> str:
    return f"__{name}__"


Audience = Literal["device", "status", "operator", "internal"]
TAGS: dict[Audience, str] = {
    "device": "What any MQTT client does to ask the site, as a device of its own id.",
    "status": "Retained statuses: a dashboard reads the site's state on subscribing.",
    "operator": "What `fogmesh` itself does for an operator: dead letters, explanations.",
    "internal": "Between fogmesh's own daemons. The ACL lets no device or dashboard publish here; "
                "listed so the whole topic tree is described, and to read while debugging a site.",
}


@dataclass(frozen=True)
class Channel:
    """One topic of the tree, its messages, and what an application does with it."""

    key: str
    address: Callable[[Topics], str]
    messages: tuple[str, ...]
    audience: Audience
    description: str
    action: Literal["send", "receive"] | None  # None: no operation of its own (the reply of another)
    operation: str = ""
    summary: str = ""
    retain: bool = False
    reply: str = ""  # the channel key of the reply to this operation


P = placeholder
CHANNELS: tuple[Channel, ...] = (
    Channel("prompts", lambda t: t.prompts(P("device_id")), ("prompt",), "device",
            "A device's prompts. The coordinator validates each one, records it in its ledger, then acknowledges "
            "it (PUBACK); a prompt it cannot run is answered with a final message of status `rejected`. An "
            "MQTT 5 Response Topic is honoured when it is under the device's own results.",
            "send", "sendPrompt", "Ask the site: a text to complete, or a chat, optionally for JSON."),
    Channel("cancel", lambda t: t.cancel(P("device_id")), ("cancel",), "device",
            "A device's cancellations: the job stops and its final message says `cancelled`.",
            "send", "sendCancel", "Stop one of this device's jobs."),
    Channel("results", lambda t: t.results(P("device_id"), P("job_id")), ("chunk", "final"), "device",
            "A job's answer: chunks while it streams (unless the prompt said `stream: false`), then exactly one "
            "final message, whose `text` is authoritative. Subscribe to `.../results/<device_id>/#`. A chunk "
            "with a higher `attempt`, or `seq` back at 0, starts the answer again: the job moved to another "
            "agent. Chunks are published at QoS 1, the final at QoS 2, so a final whose acknowledgement a "
            "dropped connection lost is not passed on twice; subscribe at QoS 2 for the same on your leg.",
            "receive", "receiveResults", "Read the answers to this device's prompts."),
    Channel("agentStatus", lambda t: t.agent_status(P("agent_id")), ("agent-status",), "status",
            "Each agent's retained status, refreshed every `heartbeat_s`; its Last Will is the same with "
            "`state: offline`.", "receive", "receiveAgentStatus", "Follow the agents: models, slots, speed.",
            retain=True),
    Channel("coordinatorStatus", lambda t: t.coordinator_status, ("coordinator-status",), "status",
            "The coordinator's retained status and heartbeat, with its counters by outcome.",
            "receive", "receiveCoordinatorStatus", "Follow the coordinator.", retain=True),
    Channel("meshStatus", lambda t: t.mesh_status, ("mesh-status",), "status",
            "The site at a glance, retained: agents online, free slots, queue, predicted wait.",
            "receive", "receiveMeshStatus", "Follow the site's capacity.", retain=True),
    Channel("meshJobs", lambda t: t.mesh_jobs, ("mesh-jobs",), "status",
            "The site's live jobs (state, node, tokens so far) and the last to end, retained.",
            "receive", "receiveMeshJobs", "Follow the jobs in flight.", retain=True),
    Channel("meshHistory", lambda t: t.mesh_history, ("mesh-history",), "status",
            "The last 15 minutes in steps: jobs by final status, tokens, cloud share and spend, latency; "
            "retained.", "receive", "receiveMeshHistory", "Chart the site's recent past.", retain=True),
    Channel("bridgeStatus", lambda t: t.bridge_status, ("bridge-status",), "status",
            "The cloud bridge's retained status: whether the cloud is reachable, its outbox, the cloud tier's "
            "prices.", "receive", "receiveBridgeStatus", "Follow the way to the cloud.", retain=True),
    Channel("deadLetters", lambda t: t.deadletter(P("device_id"), P("job_id")), ("dead-letter",), "operator",
            "Jobs given up after their attempts (the device got a final message of status `error`).",
            "receive", "receiveDeadLetters", "Read the jobs the site gave up on."),
    Channel("explain", lambda t: t.explain, ("explain-request",), "operator",
            "MQTT 5 request/response (`fogmesh explain`): a request with a Response Topic under "
            "`coordinator/explain/reply/`; the reply carries the request's Correlation Data.",
            "send", "requestExplanation", "Ask why a job went where it went.", reply="explainReply"),
    Channel("explainReply", lambda t: f"{t.explain}/reply/{P('token')}", ("explain-reply",), "operator",
            "The coordinator's answer to an explain request, on that request's Response Topic.", None),
    Channel("assign", lambda t: t.assign(P("agent_id")), ("assignment",), "internal",
            "Coordinator to agent: run this job. `attempt` tells a reassignment from the first try.",
            "receive", "observeAssignments", "Coordinator -> agent: jobs to run."),
    Channel("control", lambda t: t.control(P("agent_id")), ("control",), "internal",
            "Coordinator to agent: stop an attempt of a job.", "receive", "observeControl",
            "Coordinator -> agent: cancellations."),
    Channel("events", lambda t: t.events(P("agent_id")), ("agent-event",), "internal",
            "Agent to coordinator: what became of an assignment (accepted, started, done, failed, refused).",
            "receive", "observeAgentEvents", "Agent -> coordinator: progress of assignments."),
    Channel("cloudRequests", lambda t: t.cloud_requests, ("cloud-request",), "internal",
            "Coordinator to bridge: jobs for the cloud tier, forwarded to the SQS request queue.",
            "receive", "observeCloudRequests", "Coordinator -> bridge: jobs offloaded to the cloud."),
    Channel("cloudEvents", lambda t: t.cloud_events, ("cloud-result",), "internal",
            "Bridge to coordinator: what the cloud worker made of them, from the SQS result queue.",
            "receive", "observeCloudEvents", "Bridge -> coordinator: cloud answers."),
)


# The MQTT 5 properties a message may carry (fogmesh sets no others: no content type, no format indicator).
MESSAGE_BINDINGS: dict[str, dict[str, Any]] = {
    "prompt": {
        "responseTopic": {"type": "string", "description": (
            "Optional. Also send the chunks and the final message here; honoured only under the device's own "
            "results, `fogmesh/<site>/results/<device_id>/...` (else the prompt is rejected: `bad_response_topic`).")},
        "correlationData": {"type": "string", "description": (
            "Optional, with a Response Topic: copied onto every message sent there.")},
    },
    "explain-request": {
        "responseTopic": {"type": "string", "description": (
            "Required: `fogmesh/<site>/coordinator/explain/reply/<token>`, where the reply goes.")},
        "correlationData": {"type": "string", "description": "Copied onto the reply."},
    },
}


def address(channel: Channel) -> str:
    text = channel.address(SITE)
    for name in PARAMETERS:
        text = text.replace(placeholder(name), "{" + name + "}")
    return text


def parameters_of(text: str) -> list[str]:
    return [name for name in PARAMETERS if "{" + name + "}" in text]


def title(key: str) -> str:
    return ALL_MESSAGES[key].__name__


def first_line(kind: type[Any]) -> str:
    return (kind.__doc__ or "").strip().splitlines()[0] if kind.__doc__ else ""


def message(key: str) -> dict[str, Any]:
    kind = ALL_MESSAGES[key]
    doc = (kind.__doc__ or "").strip()
    return {
        "name": kind.__name__,
        "title": kind.__name__,
        "summary": first_line(kind),
        **({"description": " ".join(doc.split())} if doc and doc != first_line(kind) else {}),
        "contentType": CONTENT_TYPE,
        "payload": {"$ref": f"#/components/schemas/{kind.__name__}"},
        "examples": [{"name": ex.name, "summary": ex.summary, "payload": orjson.loads(encode(ex.message))}
                     for ex in EXAMPLES[key]],
        **({"bindings": {"mqtt": {**MESSAGE_BINDINGS[key], "bindingVersion": MQTT_BINDING}}}
           if key in MESSAGE_BINDINGS else {}),
    }


def channel(ch: Channel) -> dict[str, Any]:
    addr = address(ch)
    return {
        "address": addr,
        "title": ch.key,
        "description": ch.description + (" Retained." if ch.retain else ""),
        "messages": {title(m): {"$ref": f"#/components/messages/{title(m)}"} for m in ch.messages},
        "parameters": {name: {"$ref": f"#/components/parameters/{name}"} for name in parameters_of(addr)},
        "tags": [{"name": ch.audience}],
    }


def operation(ch: Channel) -> dict[str, Any]:
    op: dict[str, Any] = {
        "action": ch.action,
        "channel": {"$ref": f"#/channels/{ch.key}"},
        "summary": ch.summary,
        "messages": [{"$ref": f"#/channels/{ch.key}/messages/{title(m)}"} for m in ch.messages],
        "tags": [{"name": ch.audience}],
        "bindings": {"mqtt": {"qos": 1, "retain": ch.retain, "bindingVersion": MQTT_BINDING}},
    }
    if ch.reply:
        reply = next(c for c in CHANNELS if c.key == ch.reply)
        op["reply"] = {"channel": {"$ref": f"#/channels/{reply.key}"},
                       "messages": [{"$ref": f"#/channels/{reply.key}/messages/{title(m)}"} for m in reply.messages]}
    return op


def server(protocol: str, port: int, description: str, secured: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "host": "{host}:{port}", "protocol": protocol, "protocolVersion": "5", "description": description,
        "variables": {"host": {"description": "The site gateway's name or address.", "default": "localhost"},
                      "port": {"default": str(port)}},
    }
    if secured:
        body["security"] = [{"$ref": "#/components/securitySchemes/userPassword"}]
    return body


SERVERS = {
    "mqtt": server("mqtt", 1883, "The broker `fogmesh up` starts: loopback only, no TLS, anonymous clients.", False),
    "mqtts": server("secure-mqtt", 8883, "A production broker (`fogmesh broker config`, docs/security.md): TLS "
                    "with the site's CA, a password per user, an ACL by role.", True),
    "ws": server("ws", 9001, "MQTT over WebSockets on the development broker, for the web dashboard (`fogmesh "
                 "up` picks a free port and prints it).", False),
    "wss": server("wss", 8884, "MQTT over secure WebSockets on a production broker (`ws_port`).", True),
}


def package_version() -> str:
    try:
        return version("fogmesh")
    except PackageNotFoundError:  # a checkout that was never installed
        return "0.0.0"


def document() -> dict[str, Any]:
    """The whole AsyncAPI document, as a JSON value."""
    used = sorted({m for ch in CHANNELS for m in ch.messages}, key=title)
    return {
        "asyncapi": ASYNCAPI,
        "id": "urn:fogmesh:mqtt",
        "info": {
            "title": "fogmesh MQTT API",
            "version": package_version(),
            "description": (
                "An MQTT inference mesh for small language models on IoT sites. A device publishes a prompt on "
                "`fogmesh/<site>/prompts/<device_id>` at QoS 1 and receives its answer on "
                "`fogmesh/<site>/results/<device_id>/<job_id>`: chunks, then exactly one final message. "
                "Every payload is a UTF-8 JSON object; unknown fields are rejected. Operations are what a "
                "device, a dashboard or an operator's tool does. Generated from fogmesh's message types and "
                "topic tree (`python -m schemas.generate`); the payloads are the JSON Schemas in `json/`."),
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
            "tags": [{"name": name, "description": text} for name, text in TAGS.items()],
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": SERVERS,
        "channels": {ch.key: channel(ch) for ch in CHANNELS},
        "operations": {ch.operation: operation(ch) for ch in CHANNELS if ch.action},
        "components": {
            "schemas": {title(m): {"schemaFormat": SCHEMA_FORMAT, "schema": {"$ref": f"json/{m}.schema.json"}}
                        for m in used},
            "messages": {title(m): message(m) for m in used},
            "parameters": {name: {"description": f"{text} One topic level matching `{ID_PATTERN}`.",
                                  "examples": [example]} for name, (text, example) in PARAMETERS.items()},
            "securitySchemes": {"userPassword": {
                "type": "userPassword",
                "description": "A user of the site's roster (`[broker.users]`) and its password; the broker "
                               "takes the user name as the client id."}},
        },
    }
