"""What an agent measures of itself at start beyond one short generation: how fast it reads a
long prompt, so that the coordinator can predict a log's or a chat history's first token, and how
fast one job decodes while every slot decodes, so that it can predict a busy agent."""

from __future__ import annotations

import logging
import statistics
import threading

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


def measure_concurrency(backends: list[Backend], board: StatusBoard, prompt: str, tokens: int) -> None:
    """One generation on every slot at once, as a full agent runs them: the median job's decode rate
    becomes the advertised rate with all slots busy (batched slots share a forward pass; separate
    contexts share the cores). Later jobs refine it as they end."""
    k = len(backends)
    if k < 2:
        return
    gens: list[Generation] = []

    def one(backend: Backend) -> None:
        try:
            gens.append(backend.generate(Request(prompt=prompt, max_tokens=tokens), lambda _t: None, lambda: False))
        except BackendError as exc:
            log.info(kv("concurrency_not_measured", reason=exc.message))

    threads = [threading.Thread(target=one, args=(b,), name=f"calibrate-{i}", daemon=True)
               for i, b in enumerate(backends)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rates = [g.decode_tps for g in gens if g.decode_tps > 0]
    if len(rates) == k:
        board.record_concurrent(k, statistics.median(rates))
        log.info(kv("calibrated_busy", slots=k, decode_tps=statistics.median(rates)))
