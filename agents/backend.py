"""The inference backend interface, and a synthetic backend for unit and load tests.

The real backend is :class:`agents.llama.LlamaBackend`; the synthetic one only
stands in where the model is not what is being tested (scheduler load tests,
unit tests of the agent's bookkeeping), never as the only test of a path.
"""

from __future__ import annotations

import time
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


class SyntheticBackend:
    """Emits ``word0 word1 ...`` at a fixed rate; for tests of everything around the model."""

    def __init__(self, tokens_per_s: float = 1000.0, ttft_s: float = 0.001, name: str = "synthetic"):
        self.tokens_per_s = tokens_per_s
        self.ttft_s = ttft_s
        self.info = ModelInfo(name=name, quant="none", n_ctx=4096, file_bytes=0)

    def generate(
        self,
        prompt: str,
        max_tokens: int,
        on_text: Callable[[str], None],
        cancelled: Callable[[], bool],
    ) -> Generation:
        start = time.perf_counter()
        time.sleep(self.ttft_s)
        first = time.perf_counter() - start
        parts: list[str] = []
        stopped = "length"
        for i in range(max_tokens):
            if cancelled():
                stopped = "cancelled"
                break
            if i:
                time.sleep(1.0 / self.tokens_per_s)
            piece = f" w{i}"
            parts.append(piece)
            on_text(piece)
        return Generation(
            text="".join(parts),
            prompt_tokens=len(prompt.split()),
            completion_tokens=len(parts),
            ttft_s=first,
            total_s=time.perf_counter() - start,
            stopped=stopped,
        )

    def close(self) -> None:
        pass
