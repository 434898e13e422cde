"""What an agent measures of itself at start beyond one short generation: how fast it reads a
long prompt, so that the coordinator can predict a log's or a chat history's first token."""

from __future__ import annotations

import logging

from agents.backends.base import Backend, Generation
from agents.errors import BackendError
from agents.status import StatusBoard
from broker.runtime.logs import kv
from schemas.messages import Request

log = logging.getLogger("fogmesh.agent")
REPEAT = 12  # the calibration prompt this many times over: ~100 tokens with Gemma 3, a short delay at start


def measure_prefill(backend: Backend, board: StatusBoard, prompt: str, short: Generation) -> None:
    """The calibration prompt again, ``REPEAT`` times longer: the extra tokens over the extra time to
    the first token is the prefill rate the agent advertises. Skipped where the context is too small."""
    try:
        long = backend.generate(Request(prompt=" ".join([prompt + "."] * REPEAT), max_tokens=1), lambda _t: None,
                                lambda: False)
    except BackendError as exc:
        log.info(kv("prefill_not_measured", reason=exc.message))
        return
    board.record_prefill(long.prompt_tokens - short.prompt_tokens, long.ttft_s - short.ttft_s, prior=True)
