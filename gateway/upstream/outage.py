"""Riding out a Redis outage: what a reader or a producer of a live answer stream does when a
call fails, instead of giving up on the stream (the breaker spares everyone else the wait)."""

from __future__ import annotations

import asyncio
import math

FIRST_WAIT_S = 0.05
MAX_WAIT_S = 0.5


class Outage:
    """Retries through failures with waits growing from ``FIRST_WAIT_S`` to ``MAX_WAIT_S``,
    for at most ``window_s`` from the first failure of an outage."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._began: float | None = None
        self._failed_at = -math.inf
        self._wait = FIRST_WAIT_S

    def failed(self) -> float | None:
        """A call failed: how long to wait before the next try; None once past the window."""
        now = _now()
        self._failed_at = now
        if self._began is None:
            self._began, self._wait = now, FIRST_WAIT_S
        left = self._began + self.window_s - now
        if left <= 0:
            return None
        wait = min(self._wait, left)
        self._wait = min(self._wait * 2, MAX_WAIT_S)
        return wait

    def succeeded(self) -> bool:
        """A call succeeded: True if it ends an outage."""
        ended, self._began = self._began is not None, None
        return ended

    def quiet_for(self, seconds: float) -> bool:
        """Whether no call has failed for ``seconds``."""
        return _now() - self._failed_at >= seconds


def _now() -> float:
    return asyncio.get_running_loop().time()
