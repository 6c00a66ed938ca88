"""Resuming answer streams by id, on any instance: what ``GET /qa/streams/{id}`` asks."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from backends.base import Backend, Event
from gateway.upstream.base import Principal
from gateway.upstream.flights import Flights
from gateway.upstream.streams import Journal, is_stream_id


@dataclass(slots=True)
class Resumed:
    """A stream found for a resume: who answered it, and its events after the position."""

    backend: Backend
    batches: AsyncGenerator[Sequence[Event], None]
    """Live until the stream's end; a terminal ``error`` is raised as a ``BackendError``."""


class AnswerStreams:
    """Finds a stream by id: in a flight of this instance while it is live, else in the
    journal (Redis, or this process's finished streams)."""

    def __init__(self, flights: Flights, journal: Journal, backends: dict[str, Backend]) -> None:
        self.flights = flights
        self.journal = journal
        self.backends = backends

    async def resume(self, stream_id: str, principal: Principal, after: int) -> Resumed | None:
        """The events of stream ``stream_id`` after the ``after``-th (0: after ``meta``; -1:
        all); None if it is unknown, expired, capped or not ``principal``'s to read."""
        if not is_stream_id(stream_id):
            return None
        flight = self.flights.by_id.get(stream_id)
        if flight is not None and flight.origin is not None and flight.backend is not None:
            if not flight.origin.allows(principal) or not flight.resumable():
                return None
            return Resumed(flight.backend, flight.resume(max(after, 0)))
        reading = await self.journal.read(stream_id, after)
        if reading is None:
            return None
        backend = self.backends.get(reading.origin.backend)
        if backend is None or not reading.origin.allows(principal):
            await reading.batches.aclose()
            return None
        return Resumed(backend, reading.batches)
