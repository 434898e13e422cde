"""Continuous batching: one llama.cpp context serves all of an agent's slots.

Each slot gets a :class:`BatchedSlot` with the :class:`~agents.backends.base.Backend` interface;
its ``generate`` hands the request to the model's :class:`BatchedEngine` and waits. The engine's
thread owns the context (``n_seq_max`` = slots, one sequence per running request), and at every
step decodes one batch holding each running request's next token and a piece of each new
request's prompt, then samples each request at its own position in the batch with its own sampler
and grammar, as llama.cpp's server does with parallel slots. Requests join and leave between
steps; a request's cache is removed when it ends, so its sequence starts empty for the next.

One thread creates and drives the context: llama.cpp's OpenMP thread team belongs to the thread
that first used it, and a context driven from several threads decoded 2.5x slower here.

Separate contexts decode one token of one request per pass over the weights; a shared batch reads
the weights once for every running request, which is where a small model on a CPU (and any model
on a GPU) spends its time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.backends.base import Generation
from agents.backends.decoding import Decoding
from agents.backends.llama import LlamaBackend
from agents.backends.sampling import Candidates, Sampling, ThreadCandidates, sampling_threads
from agents.errors import BackendError
from broker.runtime.logs import kv
from schemas.messages import Request
from schemas.status import ModelInfo

log = logging.getLogger("fogmesh.batched")

# Prompt tokens a step may evaluate while no other request is decoding. A GPU evaluates more at
# once for the same time; on a CPU a prompt goes as fast in pieces of 64 as of 512 (230-270 tokens/s
# either way on 2 cores here), and a step of 512 held a cancel or a newly arrived request for 2-4 s.
PREFILL_TOKENS_GPU = 512
PREFILL_TOKENS_CPU = 64
PREFILL_SHARED = 64  # ... while others are: a step stays short, so their tokens and cancels are not held up
IDLE_POLL_S = 0.5


@dataclass(eq=False)
class _Job:
    request: Request
    on_text: Callable[[str], None]
    cancelled: Callable[[], bool]
    done: threading.Event = field(default_factory=threading.Event)
    decoding: Decoding | None = None
    result: Generation | None = None
    error: BaseException | None = None
    seq: int = -1
    pending: list[int] = field(default_factory=list)  # prompt tokens not evaluated yet
    pos: int = 0  # the position of the next token in its sequence
    index: int = -1  # its position in this step's batch whose logits it samples, or -1


class _Batch:
    """A llama_batch filled token by token (one sequence id per token)."""

    def __init__(self, lib: Any, capacity: int) -> None:
        self.lib, self.capacity = lib, capacity
        self.batch = lib.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        b, i = self.batch, self.n
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
        b.seq_id[i][0] = seq
        self.n += 1
        return i

    @property
    def room(self) -> int:
        return self.capacity - self.n

    def decode(self, ctx: Any) -> int:
        self.batch.n_tokens = self.n
        return int(self.lib.llama_decode(ctx, self.batch))

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)


def context_params(lib: Any, n_ctx: int, slots: int, threads: int, n_batch: int) -> Any:
    """The shared context's parameters: ``slots`` sequences of ``n_ctx`` tokens each."""
    params = lib.llama_context_default_params()
    params.n_ctx = n_ctx * slots  # the context holds every slot's whole context
    params.n_batch = params.n_ubatch = n_batch
    params.n_seq_max = slots
    # One cache for every sequence. With a stream per sequence (llama.cpp's default) a batch is
    # cut into one pass over the weights for each run of consecutive sequence ids: once jobs had
    # joined and left for a while, 8 running jobs in ids like 3..7, 0..2 took two passes a step
    # (75 ms against 45; docs/benchmarks.md, section 1c).
    params.kv_unified = True
    # A sliding-window layer (5 of Gemma 3's 6) keeps only its window of each sequence: with a
    # full-size cache instead, it attended over every cell, and four jobs beside 1,000-token
    # prompts decoded a step in 41 ms instead of 29-35. The engine never cuts into a sequence (a
    # job's cells go when it ends), which a window-sized cache could not undo.
    params.swa_full = False
    params.n_threads = params.n_threads_batch = threads
    return params


class BatchedEngine:
    """One model in one llama.cpp context with ``slots`` sequences, driven by its own thread."""

    def __init__(self, path: Path, name: str = "", n_ctx: int = 2048, threads: int = 1, slots: int = 2,
                 sampling: Sampling | None = None, chat_format: str = "auto",
                 gpu_layers: int | None = None) -> None:
        self.slots = slots
        self._args = (path, name, n_ctx, threads, sampling, chat_format, gpu_layers)
        self._inbox: queue.Queue[_Job | None] = queue.Queue()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._users = 0
        self._lock = threading.Lock()
        self.info: ModelInfo | None = None
        self.steps = 0
        self._stepped_at = time.perf_counter()  # when the last step ended (the engine thread's)
        self._pool: ThreadPoolExecutor | None = None  # the sampling threads
        self._thread = threading.Thread(target=self._main, name=f"engine-{name or path.stem}", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout_s: float | None = None) -> ModelInfo:
        self._ready.wait(timeout_s)
        if self._failure is not None:
            raise self._failure
        if self.info is None:
            raise BackendError("model_load_failed", "the batched engine did not load its model in time")
        return self.info

    def slot(self) -> BatchedSlot:
        """A handle for one slot's thread; the engine closes when the last one does."""
        info = self.wait_ready()
        with self._lock:
            self._users += 1
        return BatchedSlot(self, info)

    def submit(self, request: Request, on_text: Callable[[str], None], cancelled: Callable[[], bool]) -> Generation:
        job = _Job(request, on_text, cancelled)
        self._inbox.put(job)
        while not job.done.wait(1.0):
            if not self._thread.is_alive():  # it died of a fault of its own: no job waits forever
                raise BackendError("generation_failed", "the batched engine stopped")
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            last = self._users <= 0
        if last:
            self.close()

    def close(self) -> None:
        self._inbox.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------ the engine thread

    def _main(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # reported by wait_ready()
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._run()
        except Exception:
            log.exception(kv("engine_failed", model=self.info.name if self.info else ""))
        finally:
            self._unload()

    def _load(self) -> None:
        from llama_cpp import _internals

        path, name, n_ctx, threads, sampling, chat_format, gpu_layers = self._args
        self._backend = LlamaBackend(path, name, n_ctx, threads, sampling, chat_format, gpu_layers, own_ctx=False)
        lib = self._lib = self._backend._lib
        info = self._backend.info
        self._prefill = PREFILL_TOKENS_GPU if info.gpu_layers else PREFILL_TOKENS_CPU
        params = context_params(lib, n_ctx, self.slots, threads, self._prefill + self.slots)
        try:
            self._ctx = _internals.LlamaContext(model=self._backend._llm._model, params=params, verbose=False)
            self._batch = _Batch(lib, params.n_batch)
            workers = sampling_threads(self.slots, threads, offloaded=bool(info.gpu_layers))
            self._pool = ThreadPoolExecutor(workers, f"sample-{info.name}") if workers > 1 else None
        except Exception as exc:  # a context too big (ValueError), no memory for the batch or a thread
            self._unload()
            raise BackendError("model_load_failed", f"cannot make a context of {self.slots} sequences for "
                                                    f"{path}: {exc!r}") from exc
        self._local = ThreadCandidates(self._backend._candidates)
        self.info = info

    def _unload(self) -> None:
        """Close what :meth:`_load` made, the last made first (after a failed load, as far as it got)."""
        if self._pool is not None:
            self._pool.shutdown()
        for part in (getattr(self, name, None) for name in ("_batch", "_ctx", "_backend")):
            if part is not None:
                part.close()

    def _run(self) -> None:
        running: list[_Job] = []
        waiting: list[_Job] = []
        free = list(range(self.slots))
        closing = False
        while not closing or running:
            closing = self._collect(waiting, block=not running and not waiting) or closing
            while waiting and free and not self._alone(waiting[0], running):
                job = waiting.pop(0)
                if self._begin(job, free.pop(0)):
                    running.append(job)
                else:
                    free.append(job.seq)
            if not running:
                if closing:
                    for job in waiting:
                        self._fail(job, BackendError("generation_failed", "the engine is closing"))
                    return
                continue
            for job in [j for j in running if j.cancelled()]:
                self._end(job, running, free, cancel=True)
            if running:
                self._step(running, free)

    @staticmethod
    def _alone(job: _Job, running: list[_Job]) -> bool:
        """Whether ``job`` must wait to join: a seeded request runs alone. A seed promises the same
        answer every time, and llama.cpp's logits for one sequence are not bit-for-bit the same in
        batches of different sizes, so a seeded request neither joins nor is joined."""
        return bool(running) and (job.request.seed is not None or any(j.request.seed is not None for j in running))

    def _collect(self, waiting: list[_Job], block: bool) -> bool:
        """New requests into ``waiting``; True when the engine was asked to close."""
        try:
            item = self._inbox.get(timeout=IDLE_POLL_S) if block else self._inbox.get_nowait()
            while True:
                if item is None:
                    return True
                waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return False

    def _begin(self, job: _Job, seq: int) -> bool:
        job.seq = seq
        try:
            job.decoding = self._backend.begin(job.request, job.on_text, job.cancelled, ctx=self._ctx.ctx)
        except Exception as exc:  # this request's alone: prompt_too_long, an unsupported schema
            self._fail(job, exc)
            return False
        job.pending = list(job.decoding.tokens)
        job.pos = 0
        return True

    def _step(self, running: list[_Job], free: list[int]) -> None:
        batch = self._batch
        batch.clear()
        decoding = [j for j in running if not j.pending]
        for job in decoding:
            job.index = batch.add(job.decoding.token, job.pos, job.seq, True)  # type: ignore[union-attr]
            job.pos += 1
        budget = PREFILL_SHARED if decoding else self._prefill
        prompting: list[_Job] = []
        # The shortest prompt first: a reading that arrives while a 1,000-token log is being
        # evaluated gets its first token at the next step, not once the whole log is in.
        for job in sorted((j for j in running if j.pending), key=lambda j: len(j.pending)):
            job.index = -1
            take = min(len(job.pending), budget, batch.room)
            if take <= 0:
                job.decoding.crowded_first = True  # type: ignore[union-attr]
                continue
            chunk, job.pending = job.pending[:take], job.pending[take:]
            for k, token in enumerate(chunk):
                last = not job.pending and k == take - 1
                i = batch.add(token, job.pos + k, job.seq, last)
                if last:
                    job.index = i
            job.pos += take
            budget -= take
            prompting.append(job)
        self.steps += 1
        rc = batch.decode(self._ctx.ctx)
        self._crowding(decoding, prompting)
        if rc != 0:
            log.warning(kv("batch_decode_failed", rc=rc, tokens=batch.n, sequences=len(running)))
            for job in list(running):
                self._end(job, running, free, error=BackendError("generation_failed", f"llama_decode returned {rc}"))
            return
        sampled = [j for j in running if j.index >= 0]
        for job, drawn in zip(sampled, self._draw(sampled), strict=True):
            d = job.decoding
            assert d is not None
            try:
                if isinstance(drawn, Exception):
                    raise drawn
                going = d.advance(drawn)
            except Exception as exc:  # a sampler or a device's stream failing ends its request alone
                self._end(job, running, free, error=exc)
                continue
            if not going:
                self._end(job, running, free)

    def _draw(self, jobs: list[_Job]) -> list[int | Exception]:
        """Each job's next token, or what its sampler raised. Drawing from a 262k vocabulary costs
        ~0.7 ms a request on one core (copying the logits, then the chain), serially 5.5 ms of an
        8-request step whose decode took 2.5 ms on a GPU; the draws run on the sampling threads at once,
        after their rows of logits are taken here, on the thread that decoded the batch."""
        rows = []
        for job in jobs:
            sampler = job.decoding.sampler  # type: ignore[union-attr]
            sampler.index = job.index
            rows.append(sampler.logits())
        if self._pool is None or len(jobs) < 2:
            return [self._draw_one(job, row, self._backend._candidates) for job, row in zip(jobs, rows, strict=True)]
        return list(self._pool.map(self._draw_one, jobs, rows))

    def _draw_one(self, job: _Job, row: Any, cands: Candidates | None = None) -> int | Exception:
        try:  # without ``cands``, this sampling thread's own, whose making can fail
            cands = self._local.get() if cands is None else cands
            return job.decoding.sampler.sample(row, cands)  # type: ignore[union-attr]
        except Exception as exc:
            return exc

    def _crowding(self, decoding: list[_Job], prompting: list[_Job]) -> None:
        """Note which requests this step shared with another's prompt (``Generation.crowded_*``): a
        token decoded beside a piece of a prompt came at that prompt's pace, not the agent's."""
        now = time.perf_counter()
        took, self._stepped_at = now - self._stepped_at, now
        if not prompting:
            return
        for job in decoding:
            d = job.decoding
            assert d is not None
            d.crowded_tokens += 1
            d.crowded_s += took
        if len(prompting) > 1:
            for job in prompting:
                job.decoding.crowded_first = True  # type: ignore[union-attr]

    def _end(self, job: _Job, running: list[_Job], free: list[int], cancel: bool = False,
             error: BaseException | None = None) -> None:
        running.remove(job)
        self._lib.llama_memory_seq_rm(self._lib.llama_get_memory(self._ctx.ctx), job.seq, -1, -1)
        free.append(job.seq)
        d = job.decoding
        assert d is not None
        if error is not None:
            d.close()
            self._fail(job, error)
            return
        if cancel:
            d.cancel()
        try:
            job.result = d.finish()
        except Exception as exc:
            job.error = exc
        job.done.set()

    @staticmethod
    def _fail(job: _Job, exc: BaseException) -> None:
        job.error = exc
        job.done.set()


class BatchedSlot:
    """One slot's view of a shared engine: the Backend interface, one request at a time."""

    def __init__(self, engine: BatchedEngine, info: ModelInfo) -> None:
        self.engine, self.info = engine, info
        self._closed = False

    def generate(self, request: Request, on_text: Callable[[str], None],
                 cancelled: Callable[[], bool]) -> Generation:
        return self.engine.submit(request, on_text, cancelled)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.engine.release()
