"""Home Assistant MQTT discovery for an agent (``ha_discovery = true``): its status as HA sensors.

Retained config messages under ``<prefix>/sensor/<node>/<key>/config`` point Home
Assistant at the agent's own retained status topic, so HA shows the agent's
state, speed and capacity with no extra traffic, and marks it unavailable when
the Last Will says offline.
"""

from __future__ import annotations

from typing import Any

import orjson

from broker.runtime import __version__
from schemas.topics import HA_PREFIX, Topics, ha_node_id

SENSORS: tuple[tuple[str, str, str | None, str | None], ...] = (
    # key, name, unit, value
    ("state", "State", None, "{{ value_json.state }}"),
    ("decode_tps", "Decode speed", "tok/s", "{{ value_json.decode_tps }}"),
    ("ttft_ms", "Time to first token", "ms", "{{ value_json.ttft_ms }}"),
    ("slots_free", "Free slots", None, "{{ value_json.slots_free }}"),
    ("queue_depth", "Queued jobs", None, "{{ value_json.queue_depth }}"),
)


def discovery(site: str, agent: str, status_topic: str, models: list[str],
              prefix: str = HA_PREFIX) -> list[tuple[str, bytes]]:
    """(topic, payload) of each retained discovery config message."""
    node, topics = ha_node_id(site, agent), Topics(site)
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
        out.append((topics.ha_discovery(agent, key, prefix), orjson.dumps(config)))
    return out
