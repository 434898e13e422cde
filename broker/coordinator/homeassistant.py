"""Home Assistant MQTT discovery of the site (coordinator ``ha_discovery = true``): one device with
the site's queue depth, agents online, jobs per minute, cloud share and median latency, read from
the retained mesh status, and the coordinator's connectivity from its own status
(``broker.runtime.homeassistant`` builds the payload).

``recent`` is null in a mesh status until the coordinator has one, and missing from one an older
coordinator left retained: its sensors then render "None", which Home Assistant shows as unknown.
"""

from __future__ import annotations

from broker.runtime import __version__
from broker.runtime.homeassistant import Entity, connectivity, device_config
from schemas.topics import Topics, ha_site_node_id

RECENT = "{% set r = value_json.recent | default(None) %}"
SITE = (
    Entity("queue_depth", "sensor", "Queue depth", "{{ value_json.queue_depth }}", state_class="measurement"),
    Entity("agents_online", "sensor", "Agents online", "{{ value_json.agents_online }}", state_class="measurement"),
    # `finished` counts the jobs that ended in the last window_s (60 s), whatever their status
    Entity("jobs_per_minute", "sensor", "Jobs per minute",
           RECENT + "{{ (r.finished * 60 / r.window_s) | round(1) if r and r.window_s else None }}",
           unit="jobs/min", state_class="measurement", precision=1),
    Entity("cloud_share", "sensor", "Cloud share", RECENT + "{{ (r.cloud_share * 100) | round(1) if r else None }}",
           unit="%", state_class="measurement", precision=0),
    Entity("latency_p50_ms", "sensor", "Median latency", RECENT + "{{ r.latency_p50_ms if r else None }}",
           unit="ms", device_class="duration", state_class="measurement", precision=0),
)


def site_discovery(site: str, prefix: str) -> tuple[str, bytes]:
    """(topic, payload) of the site device's retained discovery config."""
    topics = Topics(site)
    device = {"name": f"fogmesh site {site}", "manufacturer": "fogmesh", "model": "site",
              "sw_version": __version__}
    entities = [*SITE, connectivity("coordinator", "Coordinator", state_topic=topics.coordinator_status)]
    config = device_config(ha_site_node_id(site), device, topics.mesh_status, entities,
                           availability_topic=topics.coordinator_status)
    return topics.ha_site_discovery(prefix), config
