"""How long answers turn out, learned from finished jobs, for the predictions to plan on.

Most answers stop at an end token well before ``max_tokens``, so predicting every job at
``max_tokens`` refuses and offloads jobs the edge would finish in time. The coordinator keeps the
last ``KEPT`` answer lengths per model and per (model, device): a device asks much the same
thing every time (a sensor's reading, a log summary). A job is planned at the ``QUANTILE`` of
the device's history when it has ``MIN_SAMPLES``, else of its model's, never above its own
``max_tokens``; with no history, at ``max_tokens``. A high quantile rather than the mean, because
it decides whether a deadline can be met: planning on the mean misses about half the time.
An answer cut off at its ``max_tokens`` says only that the model had more to say: it counts as
longer than any limit, so a history of cut-off answers plans every job at its own ``max_tokens``.
"""

from __future__ import annotations

from collections import deque

KEPT = 200
MIN_SAMPLES = 8
QUANTILE = 0.9
CUT_OFF = 1 << 30  # an answer that hit max_tokens: longer than any job may ask for


class AnswerLengths:
    def __init__(self, kept: int = KEPT, min_samples: int = MIN_SAMPLES, quantile: float = QUANTILE) -> None:
        self.kept, self.min_samples, self.quantile = kept, min_samples, quantile
        self._seen: dict[tuple[str, str], deque[int]] = {}  # (model, device or "") -> lengths
        self._cached: dict[tuple[str, str], int] = {}

    def record(self, model: str, device: str, tokens: int, cut_off: bool = False) -> None:
        """One finished answer; ``cut_off``: it ended at its ``max_tokens``, not at an end token."""
        tokens = CUT_OFF if cut_off else tokens
        for key in ((model, ""), (model, device)):
            seen = self._seen.get(key)
            if seen is None:
                if len(self._seen) > 100_000:  # a site with very many devices: keep the models' own
                    continue
                seen = self._seen[key] = deque(maxlen=self.kept)
            seen.append(tokens)
            self._cached.pop(key, None)

    def expected(self, model: str, device: str, max_tokens: int) -> int:
        """The answer length to plan ``device``'s next job on ``model`` for."""
        for key in ((model, device), (model, "")):
            q = self._quantile(key)
            if q is not None:
                return max(1, min(q, max_tokens))
        return max_tokens

    def _quantile(self, key: tuple[str, str]) -> int | None:
        q = self._cached.get(key)
        if q is None:
            seen = self._seen.get(key)
            if seen is None or len(seen) < self.min_samples:
                return None
            ordered = sorted(seen)
            q = self._cached[key] = ordered[min(len(ordered) - 1, int(self.quantile * len(ordered)))]
        return q
