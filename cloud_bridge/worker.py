"""The cloud worker: answers the request queue with a larger model.

Backends: a local GGUF through llama-cpp-python, or any OpenAI-compatible
completions endpoint (vLLM, llama.cpp's server, Ollama, a hosted API). While a
generation runs, a heartbeat extends the message's visibility timeout so SQS
does not hand the job to a second worker (the classic duplicate-work failure of
long jobs on SQS). A job that keeps failing is redelivered by SQS and, after
``max_receives``, lands in the dead-letter queue; the last attempt also sends
the reason back so the device gets an error rather than silence.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from agents.backends.base import Backend, answer
from agents.errors import BackendError
from broker.runtime.daemon import Daemon
from broker.runtime.logs import kv
from cloud_bridge.errors import CloudError, CloudUnreachable
from cloud_bridge.queue import CloudQueue, Outgoing, Received, SqsQueue
from cloud_bridge.settings import WorkerSettings
from schemas import DecodeError, decode, encode, output
from schemas.messages import CloudRequest, CloudResult, ErrorInfo, Usage

log = logging.getLogger("fogmesh.cloud-worker")
# Failures the request itself causes: answered at once, not retried by SQS.
REQUEST_FAULTS = frozenset({"output_truncated", "output_invalid", "bad_messages", "chat_unsupported",
                            "schema_unsupported", "prompt_too_long", "cloud_refused"})


def make_backend(s: WorkerSettings) -> Backend:
    if s.backend == "openai":
        from agents.backends.openai import OpenAIBackend

        return OpenAIBackend(s.openai_url, s.model, os.environ.get(s.api_key_env, ""), chat_only=s.openai_chat_only,
                             schema_style=s.openai_schema_style)
    if s.backend == "synthetic":
        from agents.backends.synthetic import SyntheticBackend

        return SyntheticBackend(tokens_per_s=s.synthetic_tps, ttft_s=s.synthetic_ttft_s, name="cloud-synthetic")
    from agents.backends.llama import LlamaBackend
    from agents.model import resolve

    return LlamaBackend(resolve(s.model), "", s.n_ctx, s.threads or os.cpu_count() or 1, chat_format=s.chat_format)


class Worker(Daemon):
    name, stopped_event = "cloud-worker", "worker_stopped"

    def __init__(self, settings: WorkerSettings, backend: Backend, queue: CloudQueue | None = None) -> None:
        super().__init__(settings, {"done": 0, "failed": 0, "expired": 0, "bad_messages": 0})
        self.settings = settings
        self.backend = backend
        self.queue = queue or SqsQueue(settings.endpoint_url or None, settings.region or None, settings.bucket,
                                       settings.max_message_bytes)
        self._url = ""
        # The worker serves every site: its job metrics carry the site each job came from.
        self.m_tokens = self.metrics.counter("tokens_total", "Tokens generated, by the job's site and model",
                                             ("site", "model"))
        self.m_latency = self.metrics.histogram("job_seconds", "From receiving a request to sending its result, "
                                                "by the job's site and model", labels=("site", "model"))

    def start(self) -> None:
        s = self.settings
        log.info(kv("worker_online", worker=s.worker_id, endpoint=s.endpoint_url or "aws", backend=s.backend))

    def ready(self) -> str:
        return f"cloud worker {self.settings.worker_id}, backend {self.settings.backend}"

    def identity(self) -> dict[str, str]:
        return {"worker": self.settings.worker_id}

    def serve(self) -> None:
        s = self.settings
        while not self.stopping:
            self.alive()
            try:
                if not self._url:
                    self._url = self.queue.ensure(s.request_queue(), s.request_queue() + "-dlq", s.max_receives,
                                                  s.visibility_s, s.fifo)
                for m in self.queue.receive(self._url, 1, min(s.wait_s, 5)):
                    try:
                        self.handle(m)
                    except (CloudError, CloudUnreachable):
                        raise
                    except Exception:  # one request must not take the worker down: SQS retries it, then dead-letters
                        self.counters["failed"] += 1
                        log.exception(kv("job_crashed", message_id=m.message_id, receives=m.receive_count))
                        self._retry_soon(m)
            except CloudUnreachable as exc:
                log.warning(kv("cloud_unreachable", reason=str(exc)[:200]))
                self._url = ""
                self._stop.wait(1.0)
            except CloudError as exc:
                log.error(kv("worker_error", reason=str(exc)[:200]))
                self._stop.wait(1.0)

    def handle(self, m: Received) -> None:
        try:
            req = decode(self.queue.unwrap(m.body), CloudRequest)
        except (DecodeError, CloudError) as exc:
            self.counters["bad_messages"] += 1
            log.error(kv("request_invalid", message_id=m.message_id, receives=m.receive_count, reason=str(exc)[:200]))
            return  # left for the dead-letter queue
        if req.deadline_at is not None and time.time() >= req.deadline_at:
            self.counters["expired"] += 1
            log.info(kv("job_expired", job=req.key))
            self.queue.delete(self._url, m.receipt)
            return
        log.info(kv("job_started", job=req.key, attempt=req.attempt, receives=m.receive_count))
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(m.receipt, done), daemon=True)
        beat.start()
        start = time.time()
        try:
            gen = answer(self.backend, req, lambda _t: None)
        except (BackendError, output.OutputError) as exc:
            done.set()
            self.counters["failed"] += 1
            log.warning(kv("job_failed", job=req.key, code=exc.code, receives=m.receive_count, detail=exc.message))
            final = exc.code in REQUEST_FAULTS or m.receive_count >= self.settings.max_receives
            if final:
                self._reply(req, CloudResult(key=req.key, attempt=req.attempt, kind="failed",
                                             node=self.settings.worker_id,
                                             error=ErrorInfo(code=exc.code, message=exc.message)))
            if exc.code in REQUEST_FAULTS:  # another try would fail the same way
                self.queue.delete(self._url, m.receipt)
            elif not final:  # SQS retries it (then dead-letters it): soon, not after a whole visibility timeout
                self._retry_soon(m)
            return
        finally:
            done.set()
        result = CloudResult(
            key=req.key, attempt=req.attempt, kind="done", node=self.settings.worker_id, text=gen.text,
            finish_reason=gen.stopped,
            usage=Usage(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens),
            timings={"ttft_ms": round(gen.ttft_s * 1000, 2), "decode_tps": round(gen.decode_tps, 2),
                     "generate_ms": round(gen.total_s * 1000, 2),
                     "cloud_queue_ms": round(max(0.0, start - req.created_at) * 1000, 2) if req.created_at else 0.0})
        self._reply(req, result)
        self.queue.delete(self._url, m.receipt)
        self.counters["done"] += 1
        self.m_tokens.labels(req.site, self.backend.info.name).inc(gen.completion_tokens)
        self.m_latency.labels(req.site, self.backend.info.name).observe(time.time() - start)
        log.info(kv("job_done", job=req.key, tokens=gen.completion_tokens, decode_tps=gen.decode_tps))

    def _retry_soon(self, m: Received) -> None:
        try:
            self.queue.extend(self._url, m.receipt, min(self.settings.visibility_s, 2 * m.receive_count))
        except CloudError as exc:
            log.warning(kv("retry_backoff_failed", reason=str(exc)[:200]))

    def _reply(self, req: CloudRequest, result: CloudResult) -> None:
        key = f"{self.settings.queue_prefix}/{req.site}/{req.key}/{req.attempt}.result.json"
        body = self.queue.wrap(encode(result), key)
        self.queue.send(req.reply_queue, [Outgoing(id="r", body=body, attributes={"site": req.site, "job": req.key})])

    def _heartbeat(self, receipt: str, done: threading.Event) -> None:
        every = max(1.0, self.settings.visibility_s / 3)
        while not done.wait(every):
            try:
                self.queue.extend(self._url, receipt, self.settings.visibility_s)
            except CloudError as exc:
                log.warning(kv("visibility_extend_failed", reason=str(exc)[:200]))
