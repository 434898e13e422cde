"""A sliding-window token budget, as the agent enforces it and the coordinator tracks it."""

from __future__ import annotations

import time
from collections import deque


class TokenWindow:
    """Tokens generated in the last ``window_s`` seconds (the research's sliding-window rate limit)."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, tokens: int, now: float | None = None) -> None:
        self._events.append((time.monotonic() if now is None else now, tokens))
        self._total += tokens

    def used(self, now: float | None = None) -> int:
        horizon = (time.monotonic() if now is None else now) - self.window_s
        while self._events and self._events[0][0] < horizon:
            self._total -= self._events.popleft()[1]
        return self._total
