"""Single flight: one upstream answer shared by every client asking the same question at once.

A ``Flight`` owns its upstream call in a task of its own, records the events, and lets any
number of clients follow them; a late joiner first gets the events so far. The call is
cancelled only when the last client has gone (and, when shared through Redis, no other
instance follows it). A failure reaches every client as the same error. The end (``done``
or the error) reaches clients only after ``on_end`` has run: whoever saw ``done`` finds
the answer stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence

from backends.base import Backend, BackendError, Event, TransientError
from gateway.upstream import Answer

ABANDONED = "abandoned"
"""The error code of a flight every client left (it reaches only followers elsewhere)."""


class Flight:
    """One answer in the making and the clients following it."""

    def __init__(
        self,
        start: Callable[[Flight], Awaitable[Answer]],
        on_end: Callable[[Flight], Awaitable[None]],
    ) -> None:
        self.events: list[Event] = []
        self._visible = 0  # events clients may see: all but a final ``done`` until the end
        self.error: BackendError | None = None
        self.ended = False
        self.backend: Backend | None = None
        self.clients = 0
        self.abandoned = False
        """Every client left and the call is being cancelled: a new asker needs a new flight."""
        self.keep_alive: Callable[[], bool] = lambda: False
        """Asked when the last local client leaves: True keeps the call going (someone
        elsewhere still follows it)."""
        self.on_event: Callable[[Event], None] | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(start, on_end))

    @property
    def complete(self) -> bool:
        """Every event is in, the last one ``done``, and nothing failed."""
        return self.error is None and bool(self.events) and self.events[-1].type == "done"

    async def join(self) -> Answer:
        """Follow this flight; raises its error if it fails before the first event."""
        self.clients += 1
        left = False

        async def leave() -> None:  # once, whether the answer is read to the end or not
            nonlocal left
            if not left:
                left = True
                self._leave()

        try:
            while not self._visible:
                if self.ended:
                    raise self.error or TransientError("aborted", "the answer was abandoned")
                await self._changed.wait()
        except BaseException:
            await leave()
            raise
        assert self.backend is not None
        return Answer(self.backend, self.events[0], self._follow(leave), release=leave)

    async def finished(self) -> None:
        """Wait until the flight has ended (its ``on_end`` has run)."""
        while not self.ended:
            await self._changed.wait()

    async def _follow(
        self, leave: Callable[[], Awaitable[None]]
    ) -> AsyncGenerator[Sequence[Event], None]:
        index = 1
        try:
            while True:
                if index < self._visible:
                    visible = self._visible
                    yield self.events[index:visible]  # all that is ready, in one batch
                    index = visible
                    continue
                if self.ended:
                    if self.error is not None:
                        raise self.error
                    return
                await self._changed.wait()
        finally:
            await leave()

    def _leave(self) -> None:
        self.clients -= 1
        self.abandon_if_unfollowed()

    def abandon_if_unfollowed(self) -> None:
        """Cancel the upstream call if nobody, here or elsewhere, follows it any more."""
        if self.clients == 0 and not self.ended and not self.keep_alive():
            self.abandoned = True
            self._task.cancel()

    async def _run(
        self,
        start: Callable[[Flight], Awaitable[Answer]],
        on_end: Callable[[Flight], Awaitable[None]],
    ) -> None:
        answer = None
        try:
            answer = await start(self)
            self.backend = answer.backend
            self._add((answer.first,))
            async for batch in answer.rest:
                self._add(batch)
        except BackendError as error:
            self.error = error
        except asyncio.CancelledError:
            self.error = TransientError(ABANDONED, "every client left")
        finally:
            if answer is not None:
                await answer.aclose()
            try:
                await on_end(self)
            finally:
                self._visible = len(self.events)
                self.ended = True
                self._wake()

    def _add(self, batch: Sequence[Event]) -> None:
        for event in batch:
            self.events.append(event)
            if event.type == "done":
                break  # held back until on_end has run
            self._visible = len(self.events)
            if self.on_event is not None:
                self.on_event(event)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed.clear()
