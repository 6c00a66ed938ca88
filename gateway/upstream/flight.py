"""Flights: an answer stream in the making, and the clients of this instance following it.

A ``Flight`` runs its ``Source``'s answer in a task of its own, records the events, and lets
any number of clients follow them from any position (a new asker from the start, a resumer
after its last event). When the last client leaves, the answer goes on for ``detach_s``
(the detach window) for a resume or a new asker to join; after it, the call is cancelled
unless the source says someone elsewhere follows it. A failure reaches every client as the
same error. The end (``done`` or the error) reaches clients only after the source's
``on_end`` has run: whoever saw ``done`` finds the answer stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from backends.base import Backend, BackendError, Event, TransientError
from gateway.upstream.base import Answer
from gateway.upstream.streams import Origin

if TYPE_CHECKING:
    from gateway.upstream.flights import Flights

ABANDONED = "abandoned"
"""The error code of a flight every client left (it reaches only followers elsewhere)."""


class Source(Protocol):
    """What a flight flies, told as it goes how the flight is doing."""

    async def open(self, flight: Flight) -> Answer:
        """Start the answer (raises ``BackendError`` if it cannot start)."""

    def on_event(self, event: Event) -> None:
        """An event clients may now see (not the final ``done``: that comes with the end)."""

    def followed_elsewhere(self) -> bool:
        """Asked once the detach window is over: True keeps the call going."""

    async def on_end(self, flight: Flight) -> None:
        """The flight is over (complete, failed or abandoned); clients wait for this."""

    def resumable(self) -> bool:
        """False once the stream is past its caps."""


class Flight:
    """One answer in the making and the clients following it."""

    def __init__(
        self,
        source: Source,
        flights: Flights,
        key: str | None,
        stream_id: str,
        detach_s: float,
        origin: Callable[[Backend | None], Origin],
    ) -> None:
        """Kept in ``flights`` (under question ``key`` if any) until it is over, before its
        end reaches any client; ``origin`` names the stream's owner and the backend that
        answered (None: the one asked)."""
        self.stream_id = stream_id
        self._flights = flights
        self._key = key
        self.events: list[Event] = []
        self._visible = 0  # events clients may see: all but a final ``done`` until the end
        self.error: BackendError | None = None
        self.ended = False
        self.backend: Backend | None = None
        self.origin: Origin | None = None
        self.cache = "MISS"
        """How the source answered: ``MISS``, or ``HIT`` when it found the answer stored."""
        self.clients = 0
        self.abandoned = False
        """Every client left and the call is being cancelled: a new asker needs a new flight."""
        self.detach_s = detach_s
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._origin_of = origin
        self._source: Source | None = source
        """Let go once the flight is over (its recorder refers to the flight)."""
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        flights.add(key, self)
        self._task = asyncio.create_task(self._run())

    @property
    def complete(self) -> bool:
        """Every event is in, the last one ``done``, and nothing failed."""
        return self.error is None and bool(self.events) and self.events[-1].type == "done"

    async def join(self) -> Answer:
        """Follow this flight from the start; raises its error if it fails before the first
        event."""
        leave = self._arrive()
        try:
            while not self._visible:
                if self.ended:
                    if self.error is None:
                        raise TransientError("aborted", "the answer was abandoned")
                    raise self.error.anew()
                await self._changed.wait()
        except BaseException:
            await leave()
            raise
        assert self.backend is not None
        return Answer(
            self.backend,
            self.events[0],
            self._follow(leave, 1),
            cache=self.cache,
            release=leave,
            stream_id=self.stream_id,
        )

    def resumable(self) -> bool:
        """Whether clients may resume the live flight (once over: read the journal)."""
        return self._source is not None and self._source.resumable()

    def owner(self) -> Origin:
        """The stream's origin; before any backend answered, as asked of the first."""
        return self.origin or self._origin_of(None)

    async def resume(self, after: int) -> AsyncGenerator[Sequence[Event], None]:
        """The events after the ``after``-th (1 is the first), live until the end; the
        reader counts as a client while it reads."""
        async for batch in self._follow(self._arrive(), after):
            yield batch

    async def finished(self) -> None:
        """Wait until the flight has ended (its source's ``on_end`` has run)."""
        while not self.ended:
            await self._changed.wait()

    def rename(self, stream_id: str) -> None:
        """The flight follows stream ``stream_id``, produced elsewhere: it is read under it."""
        self._flights.rename(self, stream_id)
        self.stream_id = stream_id

    def followed(self) -> None:
        """Someone elsewhere follows the flight: its detach window starts again later."""
        if not self.clients:
            self._deadline = None

    def abandon_if_unfollowed(self) -> None:
        """Once nobody here follows the flight for ``detach_s``, cancel the upstream call
        unless someone elsewhere follows it."""
        if self.clients or self.ended:
            self._deadline = None
            return
        now = self._loop.time()
        if self._deadline is None:
            self._deadline = now + self.detach_s
        if now < self._deadline:
            if self._timer is None:
                self._timer = self._loop.call_at(self._deadline, self._expire)
            return
        if self._source is not None and not self._source.followed_elsewhere():
            self.abandoned = True
            self._task.cancel()

    def _expire(self) -> None:
        self._timer = None
        self.abandon_if_unfollowed()

    def _arrive(self) -> Callable[[], Awaitable[None]]:
        """Count a client in; the function it calls once, however it leaves."""
        self.clients += 1
        self._deadline = None
        left = False

        async def leave() -> None:
            nonlocal left
            if not left:
                left = True
                self.clients -= 1
                self.abandon_if_unfollowed()

        return leave

    async def _follow(
        self, leave: Callable[[], Awaitable[None]], index: int
    ) -> AsyncGenerator[Sequence[Event], None]:
        try:
            while True:
                if index < self._visible:
                    visible = self._visible
                    yield self.events[index:visible]  # all that is ready, in one batch
                    index = visible
                    continue
                if self.ended:
                    if self.error is not None:
                        raise self.error.anew()
                    return
                await self._changed.wait()
        finally:
            await leave()

    async def _run(self) -> None:
        source = self._source
        assert source is not None
        answer = None
        try:
            answer = await source.open(self)
            self.backend = answer.backend
            self.origin = self._origin_of(answer.backend)
            self.cache = answer.cache
            self._add((answer.first,), source)
            async for batch in answer.rest:
                self._add(batch, source)
        except BackendError as error:
            self.error = error.anew()
        except asyncio.CancelledError:
            self.error = TransientError(ABANDONED, "every client left")
        finally:
            if self._timer is not None:
                self._timer.cancel()
            if answer is not None:
                await answer.aclose()
            try:
                await source.on_end(self)
            finally:
                self._flights.land(self._key, self)
                self._visible = len(self.events)
                self.ended = True
                self._source = None
                self._wake()

    def _add(self, batch: Sequence[Event], source: Source) -> None:
        for event in batch:
            self.events.append(event)
            if event.type == "done":
                break  # held back until on_end has run
            self._visible = len(self.events)
            source.on_event(event)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed.clear()
