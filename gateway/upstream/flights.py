"""The flights in progress on this instance, by question key and by stream id."""

from __future__ import annotations

from collections.abc import Callable

from gateway.upstream.flight import Flight


class Flights:
    """The flights in progress, by question key and by stream id."""

    def __init__(self) -> None:
        self._flying: dict[str, Flight] = {}
        self.by_id: dict[str, Flight] = {}

    def flying(self, key: str) -> Flight | None:
        """The flight answering question ``key`` that a new asker may join."""
        flight = self._flying.get(key)
        return flight if flight is not None and not flight.abandoned else None

    async def board(self, key: str, start: Callable[[], Flight]) -> tuple[Flight, bool]:
        """The flight answering ``key``, started by ``start()`` if there is none; True with
        it when it was already flying (the asker shares another's call)."""
        flight = self._flying.get(key)
        while flight is not None and flight.abandoned:
            await flight.finished()  # and its stream with it: never follow a dying flight
            flight = self._flying.get(key)
        if flight is not None:
            return flight, True
        return start(), False

    def add(self, key: str | None, flight: Flight) -> None:
        self.by_id[flight.stream_id] = flight
        if key is not None:
            self._flying[key] = flight

    def rename(self, flight: Flight, stream_id: str) -> None:
        self.by_id.pop(flight.stream_id, None)
        self.by_id[stream_id] = flight

    def land(self, key: str | None, flight: Flight) -> None:
        self.by_id.pop(flight.stream_id, None)
        if key is not None and self._flying.get(key) is flight:
            del self._flying[key]
