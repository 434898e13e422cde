"""What an agent advertises: measured speed (moving averages), token budget, and the status message."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from agents.settings import AgentSettings
from broker.runtime import __version__
from broker.runtime.budget import TokenWindow
from broker.runtime.client import retained
from broker.runtime.mqtt import BrokerAddress
from schemas.messages import AgentState
from schemas.status import AgentStatus, Budget, ModelInfo
from schemas.topics import Topics

log = logging.getLogger("fogmesh.agent")
PREFILL_SAMPLE_TOKENS = 64  # a prompt this much longer than the calibration prompt measures prefill
PREFILL_LENGTHS = 8  # prompt length classes (powers of two) the prefill rate is kept for, at most


class Ewma:
    """Exponentially weighted moving average.

    A calibration sample (``prior=True``) only seeds it: the first real sample
    replaces it, since a calibration run at boot often competes with other
    processes starting on the same device.
    """

    def __init__(self, alpha: float = 0.2) -> None:
        self.alpha = alpha
        self.value = 0.0
        self.samples = 0

    def add(self, sample: float, prior: bool = False) -> None:
        self.value = sample if not self.samples else self.alpha * sample + (1 - self.alpha) * self.value
        self.samples = 0 if prior else self.samples + 1


class PrefillCurve:
    """The prefill rate by prompt length: one moving average of the rate, and of the lengths it was
    measured at, per length class (the next power of two). A 1,000-token log reads ~15% slower per
    token than the calibration's ~100 tokens here, and the coordinator planned logs on the short
    prompt's rate until they expired. At most ``PREFILL_LENGTHS`` classes, the first measured."""

    def __init__(self) -> None:
        self.classes: dict[int, tuple[Ewma, Ewma]] = {}

    def add(self, tokens: int, tps: float, prior: bool = False) -> None:
        key = 1 << max(tokens - 1, 1).bit_length()
        if key not in self.classes and len(self.classes) >= PREFILL_LENGTHS:
            return
        rate, length = self.classes.setdefault(key, (Ewma(), Ewma()))
        rate.add(tps, prior)
        length.add(tokens, prior)

    def points(self) -> list[tuple[int, float]]:
        """[(prompt tokens, tokens/s)], the shortest first."""
        return [(round(length.value), round(rate.value, 1)) for _, (rate, length) in sorted(self.classes.items())
                if round(rate.value, 1) > 0 and round(length.value) >= 1]


def proc_kib(path: str, key: str) -> int:
    """A ``Key:   N kB`` line of a /proc file, in bytes (0 where there is none)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def mem_free_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 where there is none)."""
    return proc_kib("/proc/meminfo", "MemAvailable")


class Beside:
    """How many jobs generate at once, seen from one job: the count at each of its tokens, averaged.
    Its decode rate was measured at that level. The count as it ends is often lower (the others
    finished first), and recording that labelled a busy job's rate as a quieter level's."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board
        self.tokens = 0
        self.total = 0

    def token(self) -> None:
        self.tokens += 1
        self.total += self.board.running()

    def level(self) -> int:
        return max(1, round(self.total / self.tokens)) if self.tokens else max(1, self.board.running())


class StatusBoard:
    """The agent's live figures; thread-safe, and each snapshot gets the next sequence number."""

    def __init__(self, settings: AgentSettings, models: list[ModelInfo]) -> None:
        self.settings = settings
        self.models = models
        self.epoch = time.time_ns() // 1_000_000  # ms since 1970: a later boot always has a larger epoch
        self.state: AgentState = "online"
        self.decode_tps = Ewma()
        self.ttft_ms = Ewma()  # of the calibration prompt's length: longer prompts add their prefill
        self.prefill_tps = Ewma()  # prompt tokens/s past the calibration prompt's
        self.prefill_at = PrefillCurve()  # ... by prompt length
        self.decode_at = [Ewma() for _ in range(max(settings.slots, 1))]  # one job's rate, by slots decoding
        self.base_prompt_tokens = 0  # the calibration prompt's tokens
        self.window = TokenWindow(settings.budget_window_s)
        self.jobs: dict[str, str] = {}  # key -> "queued" | "running"
        self.progress: dict[str, int] = {}  # key -> tokens so far, of the running jobs
        self._seq = 0
        self._lock = threading.Lock()
        self.host = socket.gethostname()

    def record(self, ttft_s: float | None, decode_tps: float, tokens: int, prior: bool = False, *,
               prompt_tokens: int = 0, running: int = 1) -> None:
        """One generation's figures (``ttft_s`` None, ``decode_tps`` 0: nothing to learn from them);
        ``running``: the jobs generating on this agent, on average over its tokens."""
        with self._lock:
            extra = prompt_tokens - self.base_prompt_tokens
            if ttft_s is not None and ttft_s > 0:  # 0: ended (cancelled) before its first token
                if extra < PREFILL_SAMPLE_TOKENS:
                    # as the calibration prompt's: a prompt a few dozen tokens longer is that much
                    # prefill more, which would inflate the TTFT and, against it, the next prefill rate
                    if extra > 0 and self.prefill_tps.value:
                        ttft_s = max(ttft_s - extra / self.prefill_tps.value, 0.0)
                    self.ttft_ms.add(ttft_s * 1000, prior)
                elif ttft_s > self.ttft_ms.value / 1000:
                    # A long prompt's TTFT is the short one's plus its prefill: it teaches the prefill
                    # rate. (Taken off a long prompt's TTFT at the calibrated rate, the rest taught the
                    # TTFT: a 1,000-token log read slower than the calibration's ~100 tokens raised a
                    # reading's predicted first token from 0.1 to 0.6 s.)
                    rate = extra / (ttft_s - self.ttft_ms.value / 1000)
                    self.prefill_tps.add(rate, prior)
                    self.prefill_at.add(extra, rate, prior)
            if decode_tps > 0:
                self.decode_tps.add(decode_tps, prior)
                self._decode_level(running).add(decode_tps, prior)
            self.window.add(tokens)

    def record_concurrent(self, running: int, decode_tps: float) -> None:
        """One job's decode rate measured with ``running`` jobs generating (at start: a prior)."""
        with self._lock:
            self._decode_level(running).add(decode_tps, prior=True)

    def _decode_level(self, running: int) -> Ewma:
        """The rate kept for ``running`` jobs generating at once (beyond the slots: the last)."""
        return self.decode_at[max(1, min(running, len(self.decode_at))) - 1]

    def record_prefill(self, extra_tokens: int, extra_s: float, prior: bool = False, *,
                       curve_only: bool = False) -> None:
        """A prompt ``extra_tokens`` longer than the calibration prompt took ``extra_s`` longer to first
        token (``curve_only``: a rate for its length alone, not the one rate every length had before)."""
        if extra_tokens >= PREFILL_SAMPLE_TOKENS and extra_s > 0:
            with self._lock:
                if not curve_only:
                    self.prefill_tps.add(extra_tokens / extra_s, prior)
                self.prefill_at.add(extra_tokens, extra_tokens / extra_s, prior)

    def energy_j_per_token(self) -> float:
        s = self.settings
        if s.energy_j_per_token:
            return s.energy_j_per_token
        if s.power_w and self.decode_tps.value:
            return s.power_w / self.decode_tps.value
        return 0.0

    def running(self) -> int:
        """Jobs generating now (the rest of ``jobs`` wait for a slot)."""
        return sum(1 for v in list(self.jobs.values()) if v == "running")

    def snapshot(self, state: AgentState | None = None) -> AgentStatus:
        with self._lock:
            self._seq += 1
            running = self.running()
            queued = len(self.jobs) - running
            s = self.settings
            budget = None
            if s.budget_tokens:
                budget = Budget(window_s=s.budget_window_s, tokens=s.budget_tokens, used=self.window.used())
            return AgentStatus(
                agent=s.agent_id,
                epoch=self.epoch,
                seq=self._seq,
                state=state or self.state,
                host=self.host,
                pid=os.getpid(),
                models=self.models,
                slots_total=s.slots,
                slots_free=max(0, s.slots - running),
                queue_depth=queued,
                jobs=sorted(self.jobs),
                progress=dict(self.progress),
                decode_tps=round(self.decode_tps.value, 2),
                ttft_ms=round(self.ttft_ms.value, 2),
                prefill_tps=round(self.prefill_tps.value, 1),
                prefill_tps_at=self.prefill_at.points(),
                decode_tps_at=[round(e.value, 2) for e in self.decode_at],
                batched=s.batching and s.slots > 1,
                mem_free_bytes=mem_free_bytes(),
                budget=budget,
                energy_j_per_token=self.energy_j_per_token(),
                price_per_kwh=s.price_per_kwh,
                heartbeat_s=s.heartbeat_s,
                version=__version__,
                ts=time.time(),
            )

    def will(self) -> AgentStatus:
        """The Last Will: this boot's epoch, state offline, fixed when the session connects."""
        return AgentStatus(
            agent=self.settings.agent_id, epoch=self.epoch, seq=0, state="offline",
            host=self.host, pid=os.getpid(), version=__version__,
        )


def id_holder(address: BrokerAddress, topics: Topics, agent_id: str, wait_s: float = 0.5) -> str | None:
    """Who holds ``agent_id`` now, if a live agent does: its retained status says online or draining
    from another process and is fresh (three heartbeats). Asked before connecting with the id's own
    client id, which would take the live agent's session (on a broker that does not bind client ids
    to users, two agents with one id kicked each other off every second, for ever)."""
    seen = [m.decoded(AgentStatus, log, "status_invalid", topic=m.topic)
            for m in retained(address, topics.agent_status(agent_id), wait_s)]
    st = seen[-1] if seen else None
    if st is None or st.state == "offline" or (st.host, st.pid) == (socket.gethostname(), os.getpid()):
        return None
    age = time.time() - st.ts
    if age > 3 * max(st.heartbeat_s, 1.0):
        return None  # a hung or vanished process: its heartbeat lapsed, the id is free again
    return f"host {st.host} pid {st.pid} (its status is {age:.1f} s old)"
