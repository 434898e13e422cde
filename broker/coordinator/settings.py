"""The coordinator's settings: ``[coordinator]`` in the config file, ``FOGMESH_COORDINATOR_*``."""

from __future__ import annotations

from dataclasses import dataclass

from broker.runtime.settings import Connection, state_dir


@dataclass
class CoordinatorSettings(Connection):
    ledger: str = ""  # default: <state dir>/<site>/ledger.db
    ledger_sync: str = "normal"  # "full" also survives power loss, at an fsync per batch
    policy: str = "deadline"
    default_model: str = ""  # the model a job gets when it names none ("" = any agent's)
    max_prompt_bytes: int = 65536  # must stay below the broker's max_packet_size
    max_tokens_limit: int = 1024
    max_queue: int = 1000  # jobs waiting for an agent; beyond it prompts are rejected "overloaded"
    # Prompts held in memory (queued or running), in bytes: a flood of maximum-size prompts
    # is refused "overloaded" here before it can grow the coordinator without bound.
    max_queue_bytes: int = 32 * 1024 * 1024
    # Finished jobs older than this are pruned from the ledger (0 keeps them for ever) ...
    ledger_retention_h: float = 168.0
    # ... and beyond this many finished jobs the oldest go first, so a flood cannot fill the disk.
    ledger_max_jobs: int = 200_000
    accept_timeout_s: float = 5.0
    agent_timeout_factor: float = 3.0  # heartbeats missed before an agent counts as gone
    max_attempts: int = 3
    # A queued job that no agent online can take (none at all, none with its model) and the cloud
    # cannot either ends in error "no_agent" after waiting this long (0: it waits for ever).
    max_wait_no_agent_s: float = 120.0
    aging_s: float = 10.0  # a waiting job gains one priority level per aging_s
    prefetch: int = 1
    status_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.ledger:
            self.ledger = str(state_dir() / self.site / "ledger.db")
