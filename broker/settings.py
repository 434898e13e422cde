"""Settings of the gateway daemons (``[coordinator]`` and ``[site]`` in the config file)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def state_dir() -> Path:
    """Where daemons keep their state (the ledger) and ``fogmesh up`` records the site it started."""
    base = os.environ.get("FOGMESH_STATE_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "fogmesh"
    )
    return Path(base)


@dataclass
class CoordinatorSettings:
    broker: str = "mqtt://127.0.0.1:1883"
    site: str = "site"
    ledger: str = ""  # default: <state dir>/<site>/ledger.db
    ledger_sync: str = "normal"  # "full" also survives power loss, at an fsync per batch
    policy: str = "deadline"
    default_model: str = ""  # the model a job gets when it names none ("" = any agent's)
    max_prompt_bytes: int = 65536  # must stay below the broker's max_packet_size
    max_tokens_limit: int = 1024
    max_queue: int = 1000  # jobs waiting for an agent; beyond it prompts are rejected "overloaded"
    accept_timeout_s: float = 5.0
    agent_timeout_factor: float = 3.0  # heartbeats missed before an agent counts as gone
    max_attempts: int = 3
    aging_s: float = 10.0  # a waiting job gains one priority level per aging_s
    prefetch: int = 1
    status_interval_s: float = 5.0
    keepalive_s: int = 10
    log_level: str = "info"
    log_format: str = "kv"

    def __post_init__(self) -> None:
        if not self.ledger:
            self.ledger = str(state_dir() / self.site / "ledger.db")
