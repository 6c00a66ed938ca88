"""The instance-wide retry budget: an outage must not multiply the load on Google."""

from __future__ import annotations

import asyncio
from collections import deque


class RetryBudget:
    """Instance-wide cap: retries may add at most ``ratio`` of the recent requests, plus
    ``min_per_s`` a second, over a sliding ``window_s``. Keeps an outage from multiplying load.
    """

    def __init__(self, ratio: float = 0.2, min_per_s: float = 3.0, window_s: float = 10.0) -> None:
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self._requests: deque[float] = deque()
        self._retries: deque[float] = deque()

    def record_request(self) -> None:
        self._requests.append(self._now())

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        now = self._now()
        for stamps in (self._requests, self._retries):
            while stamps and stamps[0] <= now - self.window_s:
                stamps.popleft()
        allowed = self.min_per_s * self.window_s + self.ratio * len(self._requests)
        if len(self._retries) >= allowed:
            return False
        self._retries.append(now)
        return True

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()
