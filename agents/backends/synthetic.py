"""A backend that emits ``w0 w1 ...`` at a fixed rate: for load tests of everything around the model."""

from __future__ import annotations

import time
from collections.abc import Callable

from agents.backends.base import Generation
from schemas.messages import ModelInfo


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
