"""The agent daemon: one persistent MQTT session, a retained status, N slots running jobs.

Lifecycle: calibrate (a short real generation, so the first status carries
measured speed) -> connect with a retained offline Last Will -> online status ->
serve assignments -> on SIGTERM drain: refuse queued work back to the
coordinator, finish running jobs (or hand them back after ``drain_timeout_s``),
publish offline, exit 0.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.backends.base import Backend, Generation, answer
from agents.calibration import measure_concurrency, measure_prefill
from agents.errors import AgentError, BackendError
from agents.homeassistant import AgentDiscovery
from agents.metering import AgentMetrics
from agents.settings import AgentSettings
from agents.status import Beside, StatusBoard, id_holder
from agents.stream import Stream
from broker.runtime.daemon import Daemon
from broker.runtime.logs import kv
from broker.runtime.mqtt import Message, Session
from schemas import encode, output
from schemas.messages import AgentEvent, Assignment, Control, ErrorInfo, EventKind, Request, Usage
from schemas.topics import Topics

log = logging.getLogger("fogmesh.agent")

CALIBRATION_PROMPT = "The weather station reported that the temperature"


@dataclass
class _Job:
    spec: Assignment
    accepted_at: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    cancelled_at: float = 0.0  # monotonic time the cancel arrived
    handback: bool = False


class Agent(Daemon):
    name, stopped_event = "agent", "agent_stopped"

    def __init__(self, settings: AgentSettings, make_slot: Callable[[], dict[str, Backend]],
                 session: Any = None) -> None:
        """``make_slot`` builds one slot's backends by model name (the first is the default model);
        ``session``: given by a test (an in-memory session), else a real MQTT session.

        Each slot thread calls it itself and is the only thread that ever touches
        those backends: llama.cpp's OpenMP thread team belongs to the thread that
        first used the context, and a context driven from another thread decoded
        2.5x slower here (50 -> 20 tokens/s with 2 threads on 2 cores).
        """
        super().__init__(settings, {"accepted": 0, "done": 0, "failed": 0, "cancelled": 0, "refused": 0},
                         labels={"agent": settings.agent_id})
        self.settings = settings
        self._make_slot = make_slot
        self.slots: list[dict[str, Backend]] = []
        self.default_model = ""
        self.topics = Topics(settings.site)
        self.board = StatusBoard(settings, [])
        self.session = session or Session(
            settings.address(),
            client_id=f"fogmesh-agent-{settings.agent_id}",
            on_message=self._on_message,
            will=(self.topics.agent_status(settings.agent_id), encode(self.board.will())),
            keepalive_s=settings.keepalive_s,
        )
        self.ha = (AgentDiscovery(settings.site, settings.agent_id, settings.ha_prefix) if settings.ha_discovery
                   else None)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._idle = 0  # slots waiting for a job (under _lock)
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._dirty = threading.Event()  # the status changed and should be republished
        self._closed = threading.Event()  # drained: no more status publishing
        self._status_thread: threading.Thread | None = None
        self._draining = False
        self._workers: list[threading.Thread] = []
        self.meter = AgentMetrics(self.metrics, settings, self.board, self._queue.qsize)
        self.metrics.reconnects(lambda: self.session.reconnects)

    # ------------------------------------------------------------------ lifecycle

    def calibrate(self, backend: Backend) -> Generation:
        """Run one short real generation so the first status carries measured TTFT and tokens/s."""
        gen = backend.generate(
            Request(prompt=CALIBRATION_PROMPT, max_tokens=self.settings.calibrate_tokens), lambda _t: None,
            lambda: False,
        )
        self.board.base_prompt_tokens = gen.prompt_tokens
        self.board.record(gen.ttft_s, gen.decode_tps, 0, prior=True)
        measure_prefill(backend, self.board, CALIBRATION_PROMPT, gen, self.settings.calibrate_prompt_tokens)
        log.info(kv("calibrated", agent=self.settings.agent_id, ttft_ms=gen.ttft_s * 1000, decode_tps=gen.decode_tps,
                    tokens=gen.completion_tokens, prefill_tps=self.board.prefill_tps.value,
                    prefill_tps_at=self.board.prefill_at.points()))
        return gen

    def start(self, timeout_s: float = 300.0) -> None:
        """Check the id is free, load the model in every slot, calibrate, connect, go online."""
        # Asked anonymously only: with a user name, the broker binds the client id to the user, and
        # even this check's short session would take the live agent's (and fire its Will).
        if isinstance(self.session, Session) and not self.session.address.username:
            holder = id_holder(self.session.address, self.topics, self.settings.agent_id)
            if holder:
                raise AgentError(f"agent id {self.settings.agent_id!r} is in use by {holder}: give this agent "
                                 "another --agent-id (agent.agent_id), or stop that one first")
        ready = threading.Semaphore(0)
        failures: list[BaseException] = []
        for i in range(self.settings.slots):
            t = threading.Thread(target=self._slot, args=(i, ready, failures), name=f"slot-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        for _ in range(self.settings.slots):
            if not ready.acquire(timeout=timeout_s):
                raise AgentError(f"slots did not load the model within {timeout_s:.0f} s")
        if failures:
            raise failures[0]
        measure_concurrency([b[self.default_model] for b in self.slots], self.board, CALIBRATION_PROMPT,
                            self.settings.calibrate_tokens)
        self.session.start()
        me = self.settings.agent_id
        self.session.subscribe(self.topics.assign(me), qos=1)
        self.session.subscribe(self.topics.control(me), qos=1)
        self.publish_status()
        if self.ha:
            self.ha.announce(self.session, [m.name for m in self.board.models])
        log.info(kv("agent_online", agent=me, broker=self.session.address.url, site=self.settings.site,
                    slots=self.settings.slots, batching=self.settings.batching and self.settings.slots > 1,
                    models=",".join(m.name for m in self.board.models)))

    def ready(self) -> str:
        return (f"agent {self.settings.agent_id}: {self.settings.slots} slot(s), "
                f"models {','.join(m.name for m in self.board.models)}")

    def serve(self) -> None:
        self._status_thread = threading.Thread(target=self._status_loop, name="status", daemon=True)
        self._status_thread.start()
        self._stop.wait()

    def draining(self) -> str:
        return "draining: running jobs finish, queued ones go back"

    def stop(self) -> None:
        self.drain()

    def identity(self) -> dict[str, str]:
        return {"agent": self.settings.agent_id}

    def _status_loop(self) -> None:
        """Republish the status when it changed (at most every 100 ms) and on every heartbeat.

        Off the job path on purpose: a job's start and end only mark the status dirty.
        """
        # Runs through the drain too: a draining agent that fell silent would look dead
        # and have the jobs it is finishing taken away.
        while not self._closed.is_set():
            changed = self._dirty.wait(self.settings.heartbeat_s)
            self._dirty.clear()
            if self._closed.is_set():
                return
            try:
                self.publish_status()
            except Exception:
                log.exception(kv("status_publish_failed"))
            self.alive()  # the heartbeat loop is what shows the agent alive
            if changed:
                self._closed.wait(0.1)

    def drain(self) -> None:
        """Stop taking work, hand back what has not started, finish the rest, go offline."""
        self._draining = True
        self.board.state = "draining"
        self.publish_status()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._hand_back(job, "agent is draining")
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self._running() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._lock:
            left = list(self._jobs.values())
        for job in left:  # still running after the drain timeout: stop and hand back
            job.handback = True
            job.cancel.set()
        for _ in self._workers:
            self._queue.put(None)
        for t in self._workers:
            t.join(timeout=5)
        self._closed.set()
        self._dirty.set()
        if self._status_thread:  # its last status must not land after the offline one
            self._status_thread.join(timeout=5)
        self.board.state = "offline"
        self.session.publish_wait(
            self.topics.agent_status(self.settings.agent_id), encode(self.board.snapshot("offline")), retain=True
        )
        self.session.stop()
        for backends in self.slots:
            for backend in backends.values():
                backend.close()

    def _running(self) -> bool:
        with self._lock:
            return bool(self._jobs)

    # ------------------------------------------------------------------ messages

    def _on_message(self, msg: Message) -> None:
        if msg.topic.endswith("/assign"):
            self._on_assign(msg)
        elif msg.topic.endswith("/control"):
            self._on_control(msg)
        elif self.ha:
            self.ha.saw(msg)

    def _on_assign(self, msg: Message) -> None:
        spec = msg.decoded(Assignment, log, "bad_assignment", logging.ERROR)
        if spec is None:
            return
        with self._lock:
            known = self._jobs.get(spec.key)
            if known and known.spec.attempt >= spec.attempt:
                return  # a redelivered assignment we already hold
            if self._draining:
                refuse = True
            else:
                refuse = False
                job = _Job(spec)
                self._jobs[spec.key] = job
                self.board.jobs[spec.key] = "queued"
                # A slot is free for it: its `started` follows at once and says `accepted` too, one
                # message less for every job the coordinator handles (which also takes the two apart).
                at_once = self._idle > self._queue.qsize()
        if refuse:
            self._event(spec, "refused", error=ErrorInfo(code="draining", message="agent is draining"))
            self.counters["refused"] += 1
            return
        self.counters["accepted"] += 1
        if not at_once:
            self._event(spec, "accepted")
        self._queue.put(job)
        self._dirty.set()
        log.info(kv("job_accepted", job=spec.key, attempt=spec.attempt))

    def _on_control(self, msg: Message) -> None:
        ctl = msg.decoded(Control, log, "bad_control", logging.ERROR)
        if ctl is None:
            return
        with self._lock:
            job = self._jobs.get(ctl.cancel)
        if job and job.spec.attempt == ctl.attempt:
            job.cancelled_at = time.monotonic()
            job.cancel.set()
            log.info(kv("job_cancel", job=ctl.cancel))

    # ------------------------------------------------------------------ work

    def _slot(self, index: int, ready: threading.Semaphore, failures: list[BaseException]) -> None:
        try:
            backends = self._make_slot()
            if index == 0:
                self.default_model = next(iter(backends))
                self.board.models = [b.info for b in backends.values()]
                self.calibrate(backends[self.default_model])
            self.slots.append(backends)
        except BaseException as exc:  # reported by start()
            failures.append(exc)
            return
        finally:
            ready.release()
        self._work(backends)

    def _work(self, backends: dict[str, Backend]) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._queue.get()
            with self._lock:
                self._idle -= 1
            if job is None:
                return
            if job.cancel.is_set():
                self._finish(job)
                continue
            try:
                self._run(job, backends)
            except Exception:  # a slot must outlive any one job
                log.exception(kv("slot_error", job=job.spec.key))
                self._event(job.spec, "failed", error=ErrorInfo(code="agent_error", message="internal error"))
                self._finish(job)

    def _run(self, job: _Job, backends: dict[str, Backend]) -> None:
        spec = job.spec
        backend = backends.get(spec.model or self.default_model)
        if backend is None:
            self._event(spec, "failed", error=ErrorInfo(code="model_missing",
                                                        message=f"agent does not hold model {spec.model!r}"))
            self._finish(job)
            return
        with self._lock:
            self.board.jobs[spec.key] = "running"
        queue_s = time.monotonic() - job.accepted_at
        self._event(spec, "started")
        self._dirty.set()
        interval_s = self.settings.chunk_interval_ms / 1000
        stream = Stream(self.session, spec, interval_s, self.topics) if spec.stream else None
        progress, key, beside = self.board.progress, spec.key, Beside(self.board)

        def emit(text: str) -> None:
            progress[key] = progress.get(key, 0) + 1  # one piece of text per token; read by the heartbeat
            beside.token()
            if stream:
                stream.add(text)

        try:
            gen = answer(backend, spec, emit, job.cancel.is_set)
        except (BackendError, output.OutputError) as exc:
            self.counters["failed"] += 1
            log.warning(kv("job_failed", job=spec.key, code=exc.code, detail=exc.message))
            self._event(spec, "failed", error=ErrorInfo(code=exc.code, message=exc.message))
            self._finish(job)
            return
        if stream and not job.cancel.is_set():  # a cancelled job's device already has its final message
            stream.flush()
        # what the agent advertises learns from what it does alone at this concurrency: a job that
        # shared its steps with another's prompt teaches neither its first token's time nor its rate
        self.board.record(None if gen.crowded_first else gen.ttft_s, gen.steady_tps, gen.completion_tokens,
                          prompt_tokens=gen.prompt_tokens, running=beside.level())
        self.meter.record(spec.model or self.default_model, gen)
        if job.handback:
            self._hand_back(job, "agent stopped before the job finished")
            self._finish(job)
            return
        timings = {
            "agent_queue_ms": round(queue_s * 1000, 2),
            "ttft_ms": round(gen.ttft_s * 1000, 2),
            "decode_tps": round(gen.decode_tps, 2),
            "generate_ms": round(gen.total_s * 1000, 2),
        }
        usage = Usage(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens)
        self._event(spec, "done", text=gen.text, usage=usage, timings=timings, finish_reason=gen.stopped)
        self.counters["cancelled" if gen.stopped == "cancelled" else "done"] += 1
        stop_ms = (time.monotonic() - job.cancelled_at) * 1000 if job.cancelled_at else None
        log.info(kv("job_done", job=spec.key, stopped=gen.stopped, tokens=gen.completion_tokens,
                    ttft_ms=timings["ttft_ms"], decode_tps=timings["decode_tps"], cancel_to_stop_ms=stop_ms))
        self._finish(job)

    def _finish(self, job: _Job) -> None:
        with self._lock:
            if self._jobs.get(job.spec.key) is job:
                del self._jobs[job.spec.key]
                self.board.jobs.pop(job.spec.key, None)
                self.board.progress.pop(job.spec.key, None)
        self._dirty.set()

    def _hand_back(self, job: _Job, why: str) -> None:
        self.counters["refused"] += 1
        self._event(job.spec, "refused", error=ErrorInfo(code="handed_back", message=why))
        with self._lock:
            self._jobs.pop(job.spec.key, None)
            self.board.jobs.pop(job.spec.key, None)
            self.board.progress.pop(job.spec.key, None)

    # ------------------------------------------------------------------ publishing

    def _event(self, spec: Assignment, kind: EventKind, **fields: object) -> None:
        event = AgentEvent(key=spec.key, attempt=spec.attempt, agent=self.settings.agent_id,
                           epoch=self.board.epoch, kind=kind, **fields)  # type: ignore[arg-type]
        self.session.publish(self.topics.events(self.settings.agent_id), encode(event), qos=1)

    def publish_status(self) -> None:
        status = self.board.snapshot()
        self.session.publish(self.topics.agent_status(self.settings.agent_id), encode(status), qos=1, retain=True)


def build(settings: AgentSettings) -> Agent:
    """An agent with llama.cpp backends: its slots share one batched context per model, or (batching
    off) each slot has its own, the cores shared out."""
    from agents.engines import slot_factory

    return Agent(settings, slot_factory(settings))
