"""Home Assistant MQTT discovery of an agent (``ha_discovery = true``): one device with its state,
speed and capacity as sensors and its connectivity as a binary sensor, all read from the agent's
own retained status (``broker.runtime.homeassistant`` builds the payload).

An older fogmesh announced each sensor on its own topic (``<prefix>/sensor/<node>/<key>/config``).
Home Assistant documents how to move such entities to device-based discovery without losing them:
``{"migrate_discovery": true}`` on each old topic (it unloads the entity but keeps its settings and
history), then the device config with the same component ids and unique ids (it takes the entities
over), then an empty retained payload on the old topics. An agent does that for the old configs it
finds retained at start, and only for those: on a topic already migrated the same messages would
make Home Assistant log a conflict at every start.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson

from broker.runtime import __version__
from broker.runtime.homeassistant import Entity, connectivity, device_config
from broker.runtime.mqtt import Message
from schemas.topics import Topics, ha_node_id

# The component ids are the keys the per-sensor configs had: Home Assistant matches the migrated
# entities by them. Change none.
ENTITIES = (
    Entity("state", "sensor", "State", "{{ value_json.state }}", device_class="enum",
           options=("online", "draining", "offline"), gated=False),
    Entity("decode_tps", "sensor", "Decode speed", "{{ value_json.decode_tps }}", unit="tok/s",
           state_class="measurement", precision=1),
    Entity("ttft_ms", "sensor", "Time to first token", "{{ value_json.ttft_ms }}", unit="ms",
           device_class="duration", state_class="measurement", precision=0),
    Entity("slots_free", "sensor", "Free slots", "{{ value_json.slots_free }}", state_class="measurement"),
    Entity("queue_depth", "sensor", "Queued jobs", "{{ value_json.queue_depth }}", state_class="measurement"),
    connectivity("online", "Online"),
)
LEGACY_SENSORS = tuple(e.key for e in ENTITIES if e.platform == "sensor")  # the per-sensor configs of old
MIGRATE = orjson.dumps({"migrate_discovery": True})
LEGACY_SETTLE_S = 0.5  # the broker sends retained messages right after the SUBACK


class AgentDiscovery:
    """What an agent publishes for Home Assistant, old per-sensor configs it finds migrated first."""

    def __init__(self, site: str, agent: str, prefix: str) -> None:
        self.site, self.agent, self.prefix = site, agent, prefix
        self.topics = Topics(site)
        self.legacy_filter = self.topics.ha_discovery(agent, "+", prefix)
        self._legacy: set[str] = set()
        self._lock = threading.Lock()

    def saw(self, msg: Message) -> None:
        """Note a retained per-sensor config (called on paho's thread for what the agent subscribed to)."""
        if msg.retain and msg.payload and msg.topic.startswith(self.prefix + "/"):
            with self._lock:
                self._legacy.add(msg.topic)

    def announce(self, session: Any, models: list[str]) -> None:
        """Publish the device config on ``session`` (started), migrating the per-sensor configs of an
        older fogmesh that the broker still holds."""
        session.subscribe(self.legacy_filter, qos=1)
        time.sleep(LEGACY_SETTLE_S)
        session.unsubscribe(self.legacy_filter)
        for topic, payload in self.messages(models):
            session.publish(topic, payload, qos=1, retain=True)

    def messages(self, models: list[str]) -> list[tuple[str, bytes]]:
        """(topic, payload) to publish retained, in this order."""
        with self._lock:
            legacy = sorted(self._legacy)
            self._legacy.clear()
        node = ha_node_id(self.site, self.agent)
        status = self.topics.agent_status(self.agent)
        device = {"name": f"fogmesh agent {self.agent}", "manufacturer": "fogmesh",
                  "model": ", ".join(models) or "agent", "sw_version": __version__}
        config = device_config(node, device, status, ENTITIES, availability_topic=status)
        return [*((t, MIGRATE) for t in legacy), (self.topics.ha_device_discovery(self.agent, self.prefix), config),
                *((t, b"") for t in legacy)]
