"""Home Assistant MQTT discovery for an agent (``ha_discovery = true``): its status as HA sensors.

Retained config messages under ``<prefix>/sensor/<node>/<key>/config`` point Home
Assistant at the agent's own retained status topic, so HA shows the agent's
state, speed and capacity with no extra traffic, and marks it unavailable when
the Last Will says offline.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson

from broker.runtime import __version__

HA_PREFIX = "homeassistant"
SENSORS: tuple[tuple[str, str, str | None, str | None], ...] = (
    # key, name, unit, value
    ("state", "State", None, "{{ value_json.state }}"),
    ("decode_tps", "Decode speed", "tok/s", "{{ value_json.decode_tps }}"),
    ("ttft_ms", "Time to first token", "ms", "{{ value_json.ttft_ms }}"),
    ("slots_free", "Free slots", None, "{{ value_json.slots_free }}"),
    ("queue_depth", "Queued jobs", None, "{{ value_json.queue_depth }}"),
)


def node_id(site: str, agent: str) -> str:
    """The agent's node id in Home Assistant's discovery topics, one per (site, agent).

    HA allows [a-zA-Z0-9_-]; fogmesh ids may also hold _ . : @. Ids made of letters, digits and
    ``-`` read as they are (``fogmesh_plant_edge-01``); any other id gets a hash of both ids as
    well, because the ACL gives each agent its node's topics: without it agents ``edge.1`` and
    ``edge_1``, or agent ``b_c`` of site ``a`` and agent ``c`` of site ``a_b``, would share one."""
    plain = f"fogmesh_{site}_{agent}"
    if re.fullmatch(r"[A-Za-z0-9-]+", site + agent):
        return plain
    digest = hashlib.sha256(f"{site}/{agent}".encode()).hexdigest()[:12]
    return re.sub(r"[^A-Za-z0-9_-]", "_", plain) + f"_{digest}"


def discovery(site: str, agent: str, status_topic: str, models: list[str],
              prefix: str = HA_PREFIX) -> list[tuple[str, bytes]]:
    """(topic, payload) of each retained discovery config message."""
    node = node_id(site, agent)
    device: dict[str, Any] = {"identifiers": [node], "name": f"fogmesh agent {agent}", "manufacturer": "fogmesh",
                              "model": ", ".join(models) or "agent", "sw_version": __version__}
    out = []
    for key, name, unit, template in SENSORS:
        config: dict[str, Any] = {
            "name": name, "unique_id": f"{node}_{key}", "object_id": f"{node}_{key}", "state_topic": status_topic,
            "value_template": template, "availability_topic": status_topic,
            "availability_template": "{{ 'offline' if value_json.state == 'offline' else 'online' }}",
            "device": device,
        }
        if unit:
            config["unit_of_measurement"] = unit
            config["state_class"] = "measurement"
        out.append((f"{prefix}/sensor/{node}/{key}/config", orjson.dumps(config)))
    return out
