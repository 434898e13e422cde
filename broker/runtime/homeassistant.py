"""Home Assistant MQTT discovery, device-based, as Home Assistant documents it: one retained config
per fogmesh device on ``<prefix>/device/<node>/config``, naming the device (``dev``), the software
that announced it (``o``) and all its entities (``cmps``, each with its platform ``p``).

The entities read the retained status topics every dashboard reads, through templates: nothing is
published for Home Assistant alone. A component's key is its discovery id together with the node
and must never change, nor its ``unique_id``: Home Assistant keeps an entity's settings and history
by them. ``object_id`` is deprecated (Home Assistant 2026.11 no longer reads it);
``default_entity_id`` proposes the entity id instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from broker.runtime import __version__

ORIGIN = {"name": "fogmesh", "sw_version": __version__}
QOS = 1  # the status topics are published at QoS 1; Home Assistant subscribes to them at this QoS
# Both daemons' status says "offline" in its Last Will; any other state (online, draining) is up.
AVAILABLE = "{{ 'offline' if value_json.state == 'offline' else 'online' }}"


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity of a device, its value rendered from a retained status message."""

    key: str  # the component id; the unique id is <node>_<key>
    platform: Literal["sensor", "binary_sensor"]
    name: str
    value_template: str  # a sensor's "None" shows as unknown; a binary sensor renders ON or OFF
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = None  # "measurement": Home Assistant keeps long-term statistics
    options: tuple[str, ...] = ()  # the states of an enum sensor
    precision: int | None = None  # suggested_display_precision
    state_topic: str | None = None  # default: the device's
    # False for what means something while the daemon is offline (its state, its connectivity);
    # the rest shows unavailable then, rather than the last value it left retained.
    gated: bool = True


def connectivity(key: str, name: str, state_topic: str | None = None) -> Entity:
    """A connectivity binary sensor: ON while the status says online or draining, OFF once the Last
    Will (or a clean stop) says offline."""
    return Entity(key, "binary_sensor", name, "{{ 'OFF' if value_json.state == 'offline' else 'ON' }}",
                  device_class="connectivity", state_topic=state_topic, gated=False)


def entity_slug(node: str, key: str) -> str:
    """The proposed entity id after its platform: Home Assistant's are lower case letters, digits and
    single ``_`` (it slugifies a proposal too; this one reads the same in the payload)."""
    return re.sub(r"[^a-z0-9]+", "_", f"{node}_{key}".lower()).strip("_")


def device_config(node: str, device: dict[str, str], state_topic: str, entities: Sequence[Entity],
                  availability_topic: str) -> bytes:
    """The retained payload of ``<prefix>/device/<node>/config``.

    ``state_topic`` is shared by every entity that names none; ``availability_topic`` is a status
    topic whose ``state`` gates each entity that is ``gated``. Availability is set per entity, not
    shared, because a shared one would also gate the connectivity sensor: it must read OFF, not
    unavailable, when its daemon is offline.
    """
    components: dict[str, dict[str, Any]] = {}
    for e in entities:
        config: dict[str, Any] = {"p": e.platform, "name": e.name, "unique_id": f"{node}_{e.key}",
                                  "default_entity_id": f"{e.platform}.{entity_slug(node, e.key)}",
                                  "value_template": e.value_template}
        optional = {"state_topic": e.state_topic, "device_class": e.device_class, "unit_of_measurement": e.unit,
                    "state_class": e.state_class, "suggested_display_precision": e.precision,
                    "options": list(e.options) or None}
        config.update({k: v for k, v in optional.items() if v is not None})
        if e.gated:
            config.update(availability_topic=availability_topic, availability_template=AVAILABLE)
        components[e.key] = config
    return orjson.dumps({"dev": {"identifiers": [node], **device}, "o": ORIGIN, "cmps": components,
                         "state_topic": state_topic, "qos": QOS})
