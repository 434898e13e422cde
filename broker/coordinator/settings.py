"""The coordinator's settings: ``[coordinator]`` in the config file, ``FOGMESH_COORDINATOR_*``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from msgspec import Meta

from broker.coordinator.scheduler import Policy
from broker.runtime.settings import Connection, NonNegative, NonNegativeFloat, Positive, Seconds, state_dir


@dataclass
class CoordinatorSettings(Connection):
    ledger: str = ""  # default: <state dir>/<site>/ledger.db
    ledger_sync: Literal["normal", "full"] = "normal"  # "full" also survives power loss, at an fsync per batch
    policy: Policy = "deadline"
    default_model: str = ""  # the model a job gets when it names none ("" = any agent's)
    max_prompt_bytes: Annotated[int, Meta(ge=256)] = 65536  # must stay below the broker's max_packet_size
    max_tokens_limit: Positive = 1024
    max_queue: Positive = 1000  # jobs waiting for an agent; beyond it prompts are rejected "overloaded"
    # Prompts held in memory (queued or running), in bytes: a flood of maximum-size prompts
    # is refused "overloaded" here before it can grow the coordinator without bound.
    max_queue_bytes: Annotated[int, Meta(ge=65536)] = 32 * 1024 * 1024
    # Finished jobs older than this are pruned from the ledger (0 keeps them for ever) ...
    ledger_retention_h: NonNegativeFloat = 168.0
    # ... and beyond this many finished jobs the oldest go first, so a flood cannot fill the disk.
    ledger_max_jobs: Positive = 200_000
    accept_timeout_s: Seconds = 5.0
    agent_timeout_factor: Annotated[float, Meta(ge=1)] = 3.0  # heartbeats missed before an agent counts as gone
    max_attempts: Positive = 3
    # A queued job that no agent online can take (none at all, none with its model) and the cloud
    # cannot either ends in error "no_agent" after waiting this long (0: it waits for ever).
    max_wait_no_agent_s: NonNegativeFloat = 120.0
    aging_s: Seconds = 10.0  # a waiting job gains one priority level per aging_s
    prefetch: NonNegative = 1
    status_interval_s: Seconds = 5.0
    ha_discovery: bool = False  # Home Assistant MQTT discovery: the site as an HA device
    ha_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        if not self.ledger:
            self.ledger = str(state_dir() / self.site / "ledger.db")
