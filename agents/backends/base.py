"""The inference backend interface, and what every backend shares: stop strings and how a
generation ends.

The real backend is :class:`agents.backends.llama.LlamaBackend`; the synthetic one only
stands in where the model is not what is being tested (scheduler load tests,
unit tests of the agent's bookkeeping), never as the only test of a path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from schemas import output
from schemas.messages import Request
from schemas.status import ModelInfo

Stopped = Literal["stop", "length", "cancelled"]
STEADY_MIN_TOKENS = 8  # uncrowded tokens a request needs before its rate teaches the agent's


@dataclass(frozen=True)
class Generation:
    """What one generation produced and how long it took."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    total_s: float
    stopped: Stopped  # the final message's finish_reason: an end token or stop string, max_tokens, a cancel
    # Shared with another request's prompt (batched slots: a step that evaluated a piece of it):
    # its tokens sampled in such steps and their time, and whether its first token waited on one.
    crowded_tokens: int = 0
    crowded_s: float = 0.0
    crowded_first: bool = False

    @property
    def decode_tps(self) -> float:
        """The rate this request decoded at, as its device saw it."""
        decode_s = self.total_s - self.ttft_s
        if self.completion_tokens <= 1 or decode_s <= 0:
            return 0.0
        return (self.completion_tokens - 1) / decode_s

    @property
    def steady_tps(self) -> float:
        """The rate over its steps that evaluated no other request's prompt: what the agent decodes at
        with this many requests running, which a neighbour's 1,000-token prompt says nothing about
        (0: too few such steps to tell)."""
        if not self.crowded_tokens:
            return self.decode_tps
        tokens = self.completion_tokens - 1 - self.crowded_tokens
        decode_s = self.total_s - self.ttft_s - self.crowded_s
        return tokens / decode_s if tokens >= STEADY_MIN_TOKENS and decode_s > 0 else 0.0


class Backend(Protocol):
    """Runs one generation at a time; an agent holds one backend per slot. ``info.chat`` says whether
    it can render ``messages``; a request it cannot serve raises BackendError with a precise code."""

    info: ModelInfo

    def generate(
        self,
        request: Request,
        on_text: Callable[[str], None],
        cancelled: Callable[[], bool],
    ) -> Generation: ...

    def close(self) -> None: ...


class StopStrings:
    """Ends an answer at the first of the request's stop strings, which is not part of the answer.

    Text that could be the start of a stop string is held back until the next piece shows
    whether it is, so the device's stream never carries a stop string or a piece of one.
    """

    def __init__(self, stops: list[str], emit: Callable[[str], None]) -> None:
        self.stops = [s for s in stops if s]
        self.emit = emit
        self.parts: list[str] = []
        self.pending = ""
        self.hit = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def _out(self, text: str) -> None:
        if text:
            self.parts.append(text)
            self.emit(text)

    def feed(self, piece: str) -> bool:
        """Take the next piece of text; True once a stop string is complete (generation should end)."""
        if self.hit:
            return True
        if not self.stops:
            self._out(piece)
            return False
        self.pending += piece
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            self._out(self.pending[: min(found)])
            self.pending, self.hit = "", True
            return True
        keep = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.pending)), 0, -1):
                if s.startswith(self.pending[-k:]):
                    keep = max(keep, k)
                    break
        cut = len(self.pending) - keep
        self._out(self.pending[:cut])
        self.pending = self.pending[cut:]
        return False

    def close(self) -> None:
        """Generation ended without a stop string: what was held back is part of the answer."""
        if not self.hit:
            self._out(self.pending)
            self.pending = ""


def answer(backend: Backend, request: Request, on_text: Callable[[str], None],
           cancelled: Callable[[], bool] = lambda: False) -> Generation:
    """Generate, and check the answer against the requested format before anyone calls it done:
    raises BackendError, or OutputError (``output_truncated``, ``output_invalid``). A cancelled
    generation is not checked: it ends cancelled whatever it holds."""
    gen = backend.generate(request, on_text, cancelled)
    if gen.stopped != "cancelled":
        output.parse(gen.text, gen.stopped, request.response_format)
    return gen
