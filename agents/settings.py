"""The agent daemon's settings (``[agent]`` in the config file, ``FOGMESH_AGENT_*``)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from broker.runtime.settings import Connection


@dataclass
class AgentSettings(Connection):
    agent_id: str = ""  # default: the host name
    # GGUF files this agent serves, each "path" or "name=path" (the name jobs ask for;
    # default: the file's stem). Empty: the bundled Gemma 3 270M. The first is the default.
    models: list[str] = field(default_factory=list)
    n_ctx: int = 2048
    threads: int = 0  # 0: all cores
    slots: int = 1
    heartbeat_s: float = 5.0
    drain_timeout_s: float = 30.0
    chunk_interval_ms: float = 50.0
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    calibrate_tokens: int = 16
    budget_tokens: int = 0  # sliding-window token budget; 0 = unlimited
    budget_window_s: float = 60.0
    energy_j_per_token: float = 0.0
    power_w: float = 0.0  # when set, energy per token = power / measured decode rate
    price_per_kwh: float = 0.30
    ha_discovery: bool = False  # Home Assistant MQTT discovery: the agent's status as HA sensors
    ha_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        if not self.agent_id:
            self.agent_id = socket.gethostname().split(".")[0]
        if self.threads <= 0:
            self.threads = os.cpu_count() or 1
        if self.slots < 1:
            raise ValueError("agent.slots must be at least 1")
