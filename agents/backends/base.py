"""The inference backend interface, and a synthetic backend for unit and load tests.

The real backend is :class:`agents.backends.llama.LlamaBackend`; the synthetic one only
stands in where the model is not what is being tested (scheduler load tests,
unit tests of the agent's bookkeeping), never as the only test of a path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from schemas.messages import ModelInfo


@dataclass(frozen=True)
class Generation:
    """What one generation produced and how long it took."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    total_s: float
    stopped: str  # "eos", "length" or "cancelled"

    @property
    def decode_tps(self) -> float:
        decode_s = self.total_s - self.ttft_s
        if self.completion_tokens <= 1 or decode_s <= 0:
            return 0.0
        return (self.completion_tokens - 1) / decode_s


class Backend(Protocol):
    """Runs one generation at a time; an agent holds one backend per slot."""

    info: ModelInfo

    def generate(
        self,
        prompt: str,
        max_tokens: int,
        on_text: Callable[[str], None],
        cancelled: Callable[[], bool],
    ) -> Generation: ...

    def close(self) -> None: ...


