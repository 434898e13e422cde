"""What the cloud tier really takes, learned from the cloud jobs that finished.

The bridge's status gives a prior (its configured latency and decode rate) and, optionally, how
many jobs the cloud runs at once (``workers``). Each finished cloud job then teaches:

* a worker's time to first token, decode rate and time per job (the worker's own timings);
* the overhead around it (MQTT, the bridge's outbox, SQS both ways): the time from offload to
  the answer less the worker's time, from jobs sent while a worker was free, so that it holds
  no queueing.

The prediction (``predict.cloud_parts``) adds the wait for a worker from the jobs in flight:
those the coordinator offloaded and has no answer for, or the bridge's outbox and in-flight
counts when they are more (another coordinator's jobs, jobs recovered after a restart).
"""

from __future__ import annotations

import dataclasses

from broker.coordinator.scheduler import CloudTier

ALPHA = 0.3


class _Avg:
    def __init__(self) -> None:
        self.value = 0.0
        self.samples = 0

    def add(self, x: float) -> None:
        self.value = x if not self.samples else ALPHA * x + (1 - ALPHA) * self.value
        self.samples += 1


class CloudTime:
    def __init__(self) -> None:
        self.ttft_s, self.tps, self.service_s, self.overhead_s = _Avg(), _Avg(), _Avg(), _Avg()
        self._sent: dict[str, tuple[float, bool]] = {}  # job key -> (offloaded at, a worker was free)
        self.bridge_in_flight = 0  # the bridge's outbox and sent-unanswered counts, from its status

    def sent(self, key: str, at: float, tier: CloudTier) -> None:
        free = not tier.workers or tier.in_flight < tier.workers
        self._sent[key] = (at, free)

    def waiting_for(self) -> list[str]:
        return list(self._sent)

    def forget(self, key: str) -> None:
        self._sent.pop(key, None)

    def finished(self, key: str, now: float, timings: dict[str, float] | None) -> None:
        """A cloud job answered, with the worker's timings (ttft_ms, decode_tps, generate_ms); None: it
        failed or expired, and teaches nothing."""
        sent = self._sent.pop(key, None)
        if timings is None:
            return
        ttft_ms, tps, gen_ms = timings.get("ttft_ms"), timings.get("decode_tps"), timings.get("generate_ms")
        if ttft_ms is not None:
            self.ttft_s.add(ttft_ms / 1000)
        if tps:
            self.tps.add(tps)
        if gen_ms is not None:
            self.service_s.add(gen_ms / 1000)
            if sent is not None and sent[1]:
                self.overhead_s.add(max(0.0, now - sent[0] - gen_ms / 1000))

    @property
    def in_flight(self) -> int:
        return max(len(self._sent), self.bridge_in_flight)

    def tier(self, base: CloudTier) -> CloudTier:
        """``base`` (the bridge's prior) with what the finished jobs taught, and the jobs in flight."""
        learned = self.service_s.samples > 0
        return dataclasses.replace(
            base,
            latency_s=self.overhead_s.value if self.overhead_s.samples else base.latency_s,
            ttft_s=self.ttft_s.value if learned else base.ttft_s,
            decode_tps=self.tps.value if self.tps.samples else base.decode_tps,
            service_s=self.service_s.value if learned else base.service_s,
            in_flight=self.in_flight,
        )

    def parts(self) -> dict[str, float]:
        """What was learned, for the coordinator's log."""
        return {"ttft_ms": round(self.ttft_s.value * 1000, 1), "decode_tps": round(self.tps.value, 1),
                "service_ms": round(self.service_s.value * 1000, 1),
                "overhead_ms": round(self.overhead_s.value * 1000, 1), "jobs": self.service_s.samples}
