"""One request's generation, token by token, whoever evaluates the tokens.

A :class:`Decoding` holds what a request owns while it generates: its sampler (sampling and
grammar), its stop strings, its incremental UTF-8 decoder, its counts and timings. The caller
evaluates the prompt and each token it returns (one context per request in
:class:`agents.backends.llama.LlamaBackend`, one batch for many requests in
:mod:`agents.backends.batched`), so both paths end a generation by the same rules.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable

from agents.backends.base import Generation, Stopped, StopStrings
from agents.backends.sampling import Sampler


class Decoding:
    """A request between its prompt and its last token. ``advance`` samples the next token from the
    logits the caller evaluated last; ``finish`` releases the sampler and says what was produced."""

    def __init__(self, tokens: list[int], limit: int, sampler: Sampler, *, chat: bool,
                 is_end: Callable[[int], bool], is_control: Callable[[int], bool],
                 piece: Callable[[int], bytes], stops: list[str], on_text: Callable[[str], None],
                 cancelled: Callable[[], bool], start: float) -> None:
        self.tokens, self.limit, self.sampler, self.chat = tokens, limit, sampler, chat
        self._is_end, self._is_control, self._piece = is_end, is_control, piece
        self.cancelled = cancelled
        self.start = start
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._stops = StopStrings(stops, on_text)
        self.first = 0.0
        self.count = 0
        self.stopped: Stopped = "length"
        self.token = -1  # the last token sampled: the next one to evaluate
        self.crowded_tokens, self.crowded_s, self.crowded_first = 0, 0.0, False  # see Generation

    def advance(self, token: int | None = None) -> bool:
        """Take the next token (``token``, already drawn by this request's sampler, or sample it now);
        False when the generation has ended (an end token, a stop string, the token limit, a cancel),
        else ``token`` is the one to evaluate next."""
        token = self.sampler.sample() if token is None else token
        if self.count == 0:
            self.first = time.perf_counter() - self.start
        if self._is_end(token) or (self.chat and self._is_control(token)):
            self.stopped = "stop"
            return False
        self.count += 1
        if self._stops.feed(self._decoder.decode(self._piece(token))):
            self.stopped = "stop"
            return False
        if self.count >= self.limit:
            return False
        if self.cancelled():
            self.stopped = "cancelled"
            return False
        self.token = token
        return True

    def cancel(self) -> None:
        """Ended from outside, between tokens (a cancel the caller saw before sampling)."""
        self.stopped = "cancelled"

    def close(self) -> None:
        self.sampler.close()

    def finish(self) -> Generation:
        self.close()
        stops = self._stops
        if self.stopped != "stop" or not stops.hit:
            stops.feed(self._decoder.decode(b"", final=True))
            stops.close()
        return Generation(text=stops.text, prompt_tokens=len(self.tokens), completion_tokens=self.count,
                          ttft_s=self.first, total_s=time.perf_counter() - self.start, stopped=self.stopped,
                          crowded_tokens=self.crowded_tokens, crowded_s=self.crowded_s,
                          crowded_first=self.crowded_first)
