"""An agent's Prometheus metrics: tokens, time to first token and decode time by model, its slots and queue."""

from __future__ import annotations

from collections.abc import Callable

from agents.backends.base import Generation
from agents.settings import AgentSettings
from agents.status import StatusBoard
from broker.runtime.metrics import Metrics


class AgentMetrics:
    def __init__(self, m: Metrics, settings: AgentSettings, board: StatusBoard, queued: Callable[[], int]) -> None:
        self.ttft = m.histogram("ttft_seconds", "Time to first token on this agent, by model", labels=("model",))
        self.tokens = m.counter("tokens_total", "Tokens generated, by model", ("model",))
        self.prompt_tokens = m.counter("prompt_tokens_total", "Prompt tokens read, by model", ("model",))
        # Their ratio over any window is the decode rate, weighted by tokens as a moving average is not.
        self.decode_tokens = m.counter("decode_tokens_total", "Tokens decoded after the first, by model", ("model",))
        self.decode_s = m.counter("decode_seconds_total", "Time spent decoding after the first token, by model",
                                  ("model",))
        m.gauge("slots", "Slots (concurrent generations)", lambda: settings.slots)
        m.gauge("slots_busy", "Slots generating now", board.running)
        m.gauge("queue_depth", "Assignments waiting for a slot", queued)
        m.gauge("decode_tokens_per_second", "Decode rate the agent advertises (moving average, all models)",
                lambda: board.decode_tps.value)

    def record(self, model: str, gen: Generation) -> None:
        """One finished generation."""
        self.tokens.labels(model).inc(gen.completion_tokens)
        self.prompt_tokens.labels(model).inc(gen.prompt_tokens)
        if gen.completion_tokens:
            self.ttft.labels(model).observe(gen.ttft_s)
        if gen.decode_tps:
            self.decode_tokens.labels(model).inc(gen.completion_tokens - 1)
            self.decode_s.labels(model).inc(gen.total_s - gen.ttft_s)
