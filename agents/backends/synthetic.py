"""A backend that emits ``w0 w1 ...`` at a fixed rate: for load tests of everything around the model."""

from __future__ import annotations

import time
from collections.abc import Callable

from agents.backends.base import Generation, Stopped, StopStrings
from agents.errors import BackendError
from schemas.messages import Request
from schemas.status import ModelInfo


class SyntheticBackend:
    """Emits ``word0 word1 ...`` at a fixed rate; for tests of everything around the model."""

    def __init__(self, tokens_per_s: float = 1000.0, ttft_s: float = 0.001, name: str = "synthetic"):
        self.tokens_per_s = tokens_per_s
        self.ttft_s = ttft_s
        self.info = ModelInfo(name=name, quant="none", n_ctx=4096, file_bytes=0, chat_template="synthetic")

    def generate(
        self,
        request: Request,
        on_text: Callable[[str], None],
        cancelled: Callable[[], bool],
    ) -> Generation:
        """Words, or for a JSON request ``{}`` (a schema it cannot follow is refused, as llama.cpp would)."""
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_schema":
            raise BackendError("schema_unsupported", "the synthetic backend emits no schema-shaped JSON")
        start = time.perf_counter()
        time.sleep(self.ttft_s)
        first = time.perf_counter() - start
        stops = StopStrings(request.stops(), on_text)
        stopped: Stopped = "length"
        pieces = ["{}"] if request.wants_json else (f" w{i}" for i in range(request.max_tokens))
        count = 0
        for i, piece in enumerate(pieces):
            if cancelled():
                stopped = "cancelled"
                break
            if i:
                time.sleep(1.0 / self.tokens_per_s)
            count += 1
            if stops.feed(piece):
                stopped = "stop"
                break
        else:
            stopped = "stop" if request.wants_json else "length"
        stops.close()
        words = (request.prompt or "").split() + [w for m in request.messages or () for w in m.content.split()]
        return Generation(
            text=stops.text,
            prompt_tokens=len(words),
            completion_tokens=count,
            ttft_s=first,
            total_s=time.perf_counter() - start,
            stopped=stopped,
        )

    def close(self) -> None:
        pass
