"""Single flight: one upstream answer shared by every client asking the same question at once.

A ``Flight`` runs its ``Source``'s answer in a task of its own, records the events, and lets
any number of clients follow them; a late joiner first gets the events so far. The call is
cancelled only when the last client has gone and the source says nobody elsewhere follows
it. A failure reaches every client as the same error. The end (``done`` or the error)
reaches clients only after the source's ``on_end`` has run: whoever saw ``done`` finds the
answer stored. ``Flights`` keeps the flights in progress by question.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Protocol

from backends.base import Backend, BackendError, Event, TransientError
from gateway.upstream.base import Answer

ABANDONED = "abandoned"
"""The error code of a flight every client left (it reaches only followers elsewhere)."""


class Source(Protocol):
    """What a flight flies, told as it goes how the flight is doing."""

    async def open(self, flight: Flight) -> Answer:
        """Start the answer (raises ``BackendError`` if it cannot start)."""
        ...

    def on_event(self, event: Event) -> None:
        """An event clients may now see (not the final ``done``: that comes with the end)."""
        ...

    def followed_elsewhere(self) -> bool:
        """Asked when the last local client leaves: True keeps the call going."""
        ...

    async def on_end(self, flight: Flight) -> None:
        """The flight is over (complete, failed or abandoned); clients wait for this."""
        ...


class Flight:
    """One answer in the making and the clients following it."""

    def __init__(self, source: Source, land: Callable[[Flight], None]) -> None:
        """``land`` runs once the flight is over, before its end reaches any client."""
        self.events: list[Event] = []
        self._visible = 0  # events clients may see: all but a final ``done`` until the end
        self.error: BackendError | None = None
        self.ended = False
        self.backend: Backend | None = None
        self.clients = 0
        self.abandoned = False
        """Every client left and the call is being cancelled: a new asker needs a new flight."""
        self._source = source
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(land))

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
                self.clients -= 1
                self.abandon_if_unfollowed()

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
        """Wait until the flight has ended (its source's ``on_end`` has run)."""
        while not self.ended:
            await self._changed.wait()

    def abandon_if_unfollowed(self) -> None:
        """Cancel the upstream call if nobody, here or elsewhere, follows it any more."""
        if self.clients == 0 and not self.ended and not self._source.followed_elsewhere():
            self.abandoned = True
            self._task.cancel()

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

    async def _run(self, land: Callable[[Flight], None]) -> None:
        answer = None
        try:
            answer = await self._source.open(self)
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
                await self._source.on_end(self)
            finally:
                land(self)
                self._visible = len(self.events)
                self.ended = True
                self._wake()

    def _add(self, batch: Sequence[Event]) -> None:
        for event in batch:
            self.events.append(event)
            if event.type == "done":
                break  # held back until on_end has run
            self._visible = len(self.events)
            self._source.on_event(event)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed.clear()


class Flights:
    """The flights in progress, by question key."""

    def __init__(self) -> None:
        self._flying: dict[str, Flight] = {}

    async def board(self, key: str, source: Callable[[], Source]) -> tuple[Flight, bool]:
        """The flight answering ``key``, started from ``source()`` if there is none; True
        with it when it was already flying (the asker shares another's call)."""
        flight = self._flying.get(key)
        while flight is not None and flight.abandoned:
            await flight.finished()  # and its lock in Redis with it: never follow a dying flight
            flight = self._flying.get(key)
        if flight is not None:
            return flight, True
        flight = self._flying[key] = Flight(source(), lambda landed: self._land(key, landed))
        return flight, False

    def _land(self, key: str, flight: Flight) -> None:
        if self._flying.get(key) is flight:
            del self._flying[key]
