"""The agent daemon's settings (``[agent]`` in the config file, ``FOGMESH_AGENT_*``)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Annotated

from msgspec import Meta

from agents.backends.sampling import Sampling
from broker.runtime.settings import Connection, NonNegative, NonNegativeFloat, Positive, Seconds


@dataclass
class AgentSettings(Connection):
    agent_id: str = ""  # default: the host name
    # GGUF files this agent serves, each "path" or "name=path" (the name jobs ask for;
    # default: the file's stem). Empty: the bundled Gemma 3 270M. The first is the default.
    models: list[str] = field(default_factory=list)
    n_ctx: Annotated[int, Meta(ge=16)] = 2048
    threads: NonNegative = 0  # 0: all cores
    slots: Positive = 1
    # Slots share one llama.cpp context per model and decode in one batch; false: a context per slot.
    batching: bool = True
    heartbeat_s: Seconds = 5.0
    drain_timeout_s: NonNegativeFloat = 30.0
    chunk_interval_ms: NonNegativeFloat = 50.0
    temperature: Annotated[float, Meta(ge=0, le=2)] = 0.7
    top_p: Annotated[float, Meta(gt=0, le=1)] = 0.95
    top_k: NonNegative = 40
    min_p: Annotated[float, Meta(ge=0, le=1)] = 0.05
    repeat_penalty: Annotated[float, Meta(gt=0)] = 1.1
    # How each model renders chat messages, by model name: "auto" (the GGUF's own template, else
    # Gemma's format for Gemma models), "gemma", "chatml", "none" or a Jinja file. Unlisted: auto.
    chat_formats: dict[str, str] = field(default_factory=dict)
    # Layers each model offloads to the GPU, by model name ("*": every model not named); -1 all.
    # Unlisted: all layers when llama-cpp-python was built with a GPU backend, none otherwise.
    gpu_layers: dict[str, Annotated[int, Meta(ge=-1)]] = field(default_factory=dict)
    calibrate_tokens: Positive = 16
    # At start, the prefill rate is measured on a ~100-token prompt and on one about this long (0:
    # only the first), as long as the longest prompts expected: a 1,000-token log reads ~15% slower
    # per token than 100 tokens. Costs its prefill at start (~1.6 s for 512 tokens on one core).
    calibrate_prompt_tokens: NonNegative = 512
    budget_tokens: NonNegative = 0  # sliding-window token budget; 0 = unlimited
    budget_window_s: Seconds = 60.0
    energy_j_per_token: NonNegativeFloat = 0.0
    power_w: NonNegativeFloat = 0.0  # when set, energy per token = power / measured decode rate
    price_per_kwh: NonNegativeFloat = 0.30
    ha_discovery: bool = False  # Home Assistant MQTT discovery: the agent's status as HA sensors
    ha_prefix: str = "homeassistant"

    def __post_init__(self) -> None:
        if not self.agent_id:
            self.agent_id = socket.gethostname().split(".")[0]
        if self.threads <= 0:
            self.threads = os.cpu_count() or 1
        if self.slots < 1:
            raise ValueError("agent.slots must be at least 1")

    def gpu_layers_for(self, model: str) -> int | None:
        return self.gpu_layers.get(model, self.gpu_layers.get("*"))

    def sampling(self) -> Sampling:
        """The sampling a request gets for the fields it leaves out."""
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p,
                        repeat_penalty=self.repeat_penalty)
