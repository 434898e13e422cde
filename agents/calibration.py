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


def _first_token(backend: Backend, prompt: str, times: int) -> Generation:
    return backend.generate(Request(prompt=" ".join([prompt + "."] * times), max_tokens=1), lambda _t: None,
                            lambda: False)


def measure_prefill(backend: Backend, board: StatusBoard, prompt: str, short: Generation, longest: int = 0) -> None:
    """The calibration prompt again, ``REPEAT`` times longer: the extra tokens over the extra time to
    the first token is the prefill rate the agent advertises. Then, where ``longest`` (tokens) is
    longer still, a prompt about that long: the rate at that length too, since a long prompt reads
    slower per token. Each is skipped where the context is too small."""
    try:
        long = _first_token(backend, prompt, REPEAT)
        # The short prompt again, now warm: the agent's first generation also pays for first touches
        # of the model (pages, buffers), and a first TTFT over the long one's would leave the prefill
        # rate unmeasured: an agent in a test once came online advertising prefill 0.
        again = backend.generate(Request(prompt=prompt, max_tokens=1), lambda _t: None, lambda: False)
    except BackendError as exc:
        log.info(kv("prefill_not_measured", reason=exc.message))
        return
    base_s = min(short.ttft_s, again.ttft_s)
    board.record_prefill(long.prompt_tokens - short.prompt_tokens, long.ttft_s - base_s, prior=True)
    times = round(REPEAT * longest / max(long.prompt_tokens, 1))
    if times <= REPEAT * 2:
        return
    try:
        longer = _first_token(backend, prompt, times)
    except BackendError as exc:
        log.info(kv("prefill_not_measured", tokens=longest, reason=exc.message))
        return
    board.record_prefill(longer.prompt_tokens - short.prompt_tokens, longer.ttft_s - base_s, prior=True,
                         curve_only=True)


def concurrent_rate(backends: list[Backend], prompt: str, tokens: int) -> float | None:
    """One generation on every backend at once, as a full agent runs its slots: the median job's
    decode rate (batched slots share a forward pass; separate contexts share the cores), or None
    when one of them could not run."""
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
    return statistics.median(rates) if len(rates) == len(backends) else None


def measure_concurrency(backends: list[Backend], board: StatusBoard, prompt: str, tokens: int) -> None:
    """The rate with every slot busy, advertised beside the single-job rate from the start, so that
    the coordinator predicts a busy agent from a measurement; later jobs refine it as they end."""
    if len(backends) < 2:
        return
    rate = concurrent_rate(backends, prompt, tokens)
    if rate is not None:
        board.record_concurrent(len(backends), rate)
        log.info(kv("calibrated_busy", slots=len(backends), decode_tps=rate))
