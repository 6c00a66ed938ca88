"""Guarding a stream in progress: when the upstream fails, goes quiet, or the server stops.

``guarded`` turns a started answer into its outcomes, which always end in one terminal
``done`` or ``Failure``. One timer per stream, not one per event: ``StreamGuard`` re-arms
itself lazily, so the per-event cost is setting a float. An interrupted stream ends with a
terminal ``error`` event naming the ``reason`` instead of a cut connection.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, Sequence

from backends.base import BackendError
from gateway.formats import Failure, Outcome
from gateway.upstream.base import Answer
from gateway.upstream.trace import Trace

_INTERRUPTIONS = {
    "idle_timeout": "the upstream sent nothing for too long",
    "shutting_down": "the gateway is shutting down; ask again",
}


async def guarded(
    answer: Answer, trace: Trace, idle_s: float, guards: Guards
) -> AsyncGenerator[Sequence[Outcome], None]:
    """The answer's events, in batches of those ready together; a ``Failure`` last if it
    fails, stalls for ``idle_s`` or is cut by shutdown.

    Closing this iterator (a client leaving) cancels the upstream call.
    """
    guard = StreamGuard(idle_s, guards)
    trace.outcome = "disconnected"
    try:
        yield (answer.first,)
        guard.waiting()
        async for batch in answer.rest:
            guard.writing()
            yield batch
            guard.waiting()
        trace.outcome = "done"
    except BackendError as exc:
        trace.outcome = exc.code
        trace.upstream_errors.append(exc.code)
        yield (Failure(exc.code, exc.message, exc.retryable),)
    except asyncio.CancelledError:
        if guard.reason is None:
            raise  # the client went away
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        trace.outcome = guard.reason
        yield (Failure(guard.reason, _INTERRUPTIONS[guard.reason], True),)
    finally:
        guard.close()
        await answer.aclose()


class StreamGuard:
    """Cancels the task streaming one answer when it waits on the upstream too long."""

    __slots__ = ("_guards", "_handle", "_loop", "_task", "idle_s", "reason", "waiting_since")

    def __init__(self, idle_s: float, guards: Guards) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._guards = guards
        self.idle_s = idle_s
        self.reason: str | None = None
        self.waiting_since = self._loop.time()
        """When the stream began waiting for the upstream (``inf`` while it writes)."""
        self._handle = self._loop.call_at(self.waiting_since + idle_s, self._check)
        guards.active.add(self)

    def waiting(self) -> None:
        """The stream now waits for the next upstream event."""
        self.waiting_since = self._loop.time()

    def writing(self) -> None:
        """The stream now writes to the client: a slow client is not an idle upstream."""
        self.waiting_since = math.inf

    def interrupt(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._task.cancel()

    def close(self) -> None:
        self._handle.cancel()
        self._guards.active.discard(self)

    def _check(self) -> None:
        due = self.waiting_since + self.idle_s
        if self._loop.time() >= due:
            self.interrupt("idle_timeout")
        else:
            next_check = due if due != math.inf else self._loop.time() + self.idle_s
            self._handle = self._loop.call_at(next_check, self._check)


class Guards:
    """The guards of every open stream, so shutdown can reach them."""

    def __init__(self) -> None:
        self.active: set[StreamGuard] = set()
        self.draining = False

    def drain(self, grace_s: float) -> None:
        """Stop taking new answers; end the streams still open after ``grace_s``."""
        if self.draining:
            return
        self.draining = True
        asyncio.get_running_loop().call_later(grace_s, self._interrupt_all)

    def _interrupt_all(self) -> None:
        for guard in list(self.active):
            guard.interrupt("shutting_down")
