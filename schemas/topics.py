"""The topic tree. Everything lives under ``fogmesh/<site>/`` so one ACL file can describe a site.

Device-facing (fixed contract)::

    fogmesh/<site>/prompts/<device_id>             device -> coordinator   (QoS 1)
    fogmesh/<site>/cancel/<device_id>              device -> coordinator   (QoS 1)
    fogmesh/<site>/results/<device_id>/<job_id>    fogmesh -> device       (QoS 1)

Fleet dashboards (retained)::

    fogmesh/<site>/agents/<agent_id>/status
    fogmesh/<site>/coordinator/status
    fogmesh/<site>/bridge/status
    fogmesh/<site>/mesh/status
    fogmesh/<site>/mesh/jobs                       live jobs and the last to end
    fogmesh/<site>/mesh/history                    the last 15 minutes in 10-second steps

Internal::

    fogmesh/<site>/agents/<agent_id>/assign        coordinator -> agent    (QoS 1)
    fogmesh/<site>/agents/<agent_id>/control       coordinator -> agent    (QoS 1, cancels)
    fogmesh/<site>/agents/<agent_id>/events        agent -> coordinator    (QoS 1)
    fogmesh/<site>/cloud/requests                  coordinator -> bridge   (QoS 1)
    fogmesh/<site>/cloud/events                    bridge -> coordinator   (QoS 1)
    fogmesh/<site>/deadletter/<device_id>/<job_id> coordinator -> operators (QoS 1)
    fogmesh/<site>/coordinator/explain             operator -> coordinator (MQTT 5 request/response)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from schemas.errors import TopicError

ROOT = "fogmesh"
HA_PREFIX = "homeassistant"  # Home Assistant's MQTT discovery prefix (its default)
ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"  # one topic level; the message types use it too
_ID = re.compile(ID_PATTERN)


def check_id(value: str, what: str = "id") -> str:
    """Return ``value`` if it can stand as one topic level, else raise TopicError."""
    if not _ID.fullmatch(value):
        raise TopicError(
            f"{what} {value!r} must be 1-128 characters of letters, digits and _ . : @ -"
        )
    return value


def is_valid_id(value: str) -> bool:
    return bool(_ID.fullmatch(value))


@dataclass(frozen=True)
class Topics:
    """The topics of one site."""

    site: str = "site"

    def __post_init__(self) -> None:
        check_id(self.site, "site id")

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.site}"

    # device-facing
    def prompts(self, device: str = "+") -> str:
        return f"{self.prefix}/prompts/{device}"

    def cancel(self, device: str = "+") -> str:
        return f"{self.prefix}/cancel/{device}"

    def results(self, device: str, job: str = "#") -> str:
        return f"{self.prefix}/results/{device}/{job}"

    # status
    def agent_status(self, agent: str = "+") -> str:
        return f"{self.prefix}/agents/{agent}/status"

    @property
    def coordinator_status(self) -> str:
        return f"{self.prefix}/coordinator/status"

    @property
    def explain(self) -> str:
        return f"{self.prefix}/coordinator/explain"

    @property
    def bridge_status(self) -> str:
        return f"{self.prefix}/bridge/status"

    @property
    def mesh_status(self) -> str:
        return f"{self.prefix}/mesh/status"

    @property
    def mesh_jobs(self) -> str:
        return f"{self.prefix}/mesh/jobs"

    @property
    def mesh_history(self) -> str:
        return f"{self.prefix}/mesh/history"

    # internal
    def assign(self, agent: str) -> str:
        return f"{self.prefix}/agents/{agent}/assign"

    def control(self, agent: str) -> str:
        return f"{self.prefix}/agents/{agent}/control"

    def events(self, agent: str = "+") -> str:
        return f"{self.prefix}/agents/{agent}/events"

    @property
    def cloud_requests(self) -> str:
        return f"{self.prefix}/cloud/requests"

    @property
    def cloud_events(self) -> str:
        return f"{self.prefix}/cloud/events"

    def deadletter(self, device: str, job: str) -> str:
        return f"{self.prefix}/deadletter/{device}/{job}"

    # Home Assistant MQTT discovery, outside fogmesh's tree: one device per agent, one for the site

    def ha_device_discovery(self, agent: str, prefix: str = HA_PREFIX) -> str:
        """Where an agent's retained device-based discovery config (all its entities) lives."""
        return f"{prefix}/device/{ha_node_id(self.site, agent)}/config"

    def ha_site_discovery(self, prefix: str = HA_PREFIX) -> str:
        """Where the coordinator's retained discovery config of the site device lives."""
        return f"{prefix}/device/{ha_site_node_id(self.site)}/config"

    def ha_discovery(self, agent: str, sensor: str = "+", prefix: str = HA_PREFIX) -> str:
        """Where an agent's per-sensor discovery config lived before device-based discovery; an
        agent migrates what it finds there to its device config and clears it."""
        return f"{prefix}/sensor/{ha_node_id(self.site, agent)}/{sensor}/config"

    def response_topic_problem(self, device: str, topic: str | None) -> str | None:
        """Why a prompt's MQTT 5 Response Topic cannot be honoured, if it cannot.

        Only a topic under the device's own results is honoured: it is what the device may
        read, and the one subtree where the coordinator and the agents may write for it. A
        topic anywhere else would either let a device make them write where its own ACL does
        not let it (another device's results, an agent's assignments), or, outside
        ``fogmesh/``, make the broker disconnect them for an ACL-denied publish (mosquitto
        closes the connection instead of answering with a reason code), which once took a
        whole site down in a retry loop.
        """
        if topic is None:
            return None
        own = self.results(device, "")
        if not topic or "+" in topic or "#" in topic or topic.startswith("$") or len(topic) > 512:
            return f"response topic {topic[:128]!r} must be a plain topic name without wildcards or '$'"
        if not topic.startswith(own) or topic == own:
            return (f"response topic {topic[:128]!r} is not under this device's results; "
                    f"use one under {own} (or none: answers always go to {own}<job id>)")
        return None

    def parse(self, topic: str) -> tuple[str, ...]:
        """Split a topic of this site into its levels after the prefix.

        ``fogmesh/site/prompts/dev1`` -> ``("prompts", "dev1")``.
        """
        head = self.prefix + "/"
        if not topic.startswith(head):
            raise TopicError(f"topic {topic!r} is not under {head!r}")
        return tuple(topic[len(head) :].split("/"))


def ha_node_id(site: str, agent: str) -> str:
    """The agent's node id in Home Assistant's discovery topics, one per (site, agent).

    HA allows [a-zA-Z0-9_-]; fogmesh ids may also hold _ . : @. Ids made of letters, digits and
    ``-`` read as they are (``fogmesh_plant_edge-01``); any other id gets a hash of both ids as
    well, because the ACL gives each agent its node's topics: without it agents ``edge.1`` and
    ``edge_1``, or agent ``b_c`` of site ``a`` and agent ``c`` of site ``a_b``, would share one."""
    return _ha_id(f"fogmesh_{site}_{agent}", site + agent, f"{site}/{agent}")


def ha_site_node_id(site: str) -> str:
    """The site's node id (the device its coordinator announces): ``fogmesh_<site>``.

    Never an agent's: a readable agent node has exactly two ``_`` and a readable site node one; a
    hashed node has three or more, and its hash covers ``site/agent`` or ``site``, which differ."""
    return _ha_id(f"fogmesh_{site}", site, site)


def _ha_id(plain: str, ids: str, hashed: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9-]+", ids):
        return plain
    digest = hashlib.sha256(hashed.encode()).hexdigest()[:12]
    return re.sub(r"[^A-Za-z0-9_-]", "_", plain) + f"_{digest}"
