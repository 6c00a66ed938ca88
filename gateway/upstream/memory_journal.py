"""Answer streams in process, for a gateway without Redis.

A live stream is its ``Flight`` (clients here read it there); a finished one is kept, as its
events, in a ``MemoryStore`` bounded in entries and in the bytes the events take encoded, for
``keep_s`` or, when it is the question's cached answer, its cache TTL; the question key
points at it then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from backends.base import BackendError, Done, Event
from gateway.upstream.flight import Flight
from gateway.upstream.stores import MemoryStore
from gateway.upstream.streams import (
    Origin,
    Reading,
    ResumeSettings,
    encode_end,
    encode_event,
    is_stream_id,
    one_batch,
)

log = logging.getLogger("gateway.streams")
EVENTS = ":events"
"""Suffix of a stream's key (after ``{prefix}s:{id}``), as in Redis."""


def stream_key(prefix: str, stream_id: str) -> str:
    return f"{prefix}s:{{{stream_id}}}{EVENTS}"


@dataclass(frozen=True, slots=True)
class Kept:
    """A finished stream: whose it is, whether it is a cached answer, its events and the
    error it ended in (if it did)."""

    origin: Origin
    cacheable: bool
    events: tuple[Event, ...]
    error: BackendError | None


class MemoryJournal:
    """Finished streams and the questions' pointers to them, in a bounded map."""

    def __init__(self, store: MemoryStore[Kept | str], prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    async def lookup(self, key: str) -> tuple[str, Origin, list[Event]] | None:
        stream_id = await self.current(key)
        kept = await self._load(stream_id) if stream_id is not None else None
        if kept is None or not kept.cacheable or kept.error is not None:
            return None
        if not kept.events or not isinstance(kept.events[-1], Done):
            return None
        assert stream_id is not None
        return stream_id, kept.origin, list(kept.events)

    async def current(self, key: str) -> str | None:
        value = await self.store.get(key)
        return value if isinstance(value, str) else None

    async def claim(self, key: str, stream_id: str) -> str | None:
        return None  # in process, ``Flights`` already coalesce

    async def take(self, key: str, stream_id: str, dead: str = "") -> str | None:
        return None

    async def follow(self, stream_id: str, timeout_s: float, finished: bool) -> Reading | None:
        return None  # never claimed by another

    async def read(self, stream_id: str, after: int) -> Reading | None:
        kept = await self._load(stream_id)
        if kept is None:
            return None
        error = kept.error.anew() if kept.error is not None else None
        return Reading(kept.origin, one_batch(list(kept.events[max(after, 0) :]), error))

    def recorder(self, flight: Flight, key: str | None, settings: ResumeSettings) -> MemoryRecorder:
        return MemoryRecorder(self, flight, key, settings)

    async def aclose(self) -> None:
        await self.store.aclose()

    async def _load(self, stream_id: str) -> Kept | None:
        if not is_stream_id(stream_id):
            return None
        value = await self.store.get(stream_key(self.prefix, stream_id))
        return value if isinstance(value, Kept) else None


class MemoryRecorder:
    """Counts a flight's stream as it goes; keeps it once finished (unless capped)."""

    def __init__(
        self, journal: MemoryJournal, flight: Flight, key: str | None, settings: ResumeSettings
    ) -> None:
        self.journal = journal
        self.flight = flight
        self.key = key
        self.settings = settings
        self.capped = False
        self._pushed = 0
        self.size = 0

    def push(self, event: Event) -> None:
        self._pushed += 1
        if not self.capped:
            self._add(len(encode_event(event)), self._pushed)

    def followed_elsewhere(self) -> bool:
        return False

    async def finish(self, end: Event | BackendError, cache_ttl_s: float | None) -> None:
        if not self.capped:
            self._add(len(encode_end(end)), self._pushed + 1)
        flight, origin = self.flight, self.flight.origin
        if self.capped or origin is None:
            if self.capped:
                log.warning("answer stream %s too long: not resumable or cached", flight.stream_id)
            return
        pushed = tuple(flight.events[: self._pushed])
        if isinstance(end, BackendError):
            kept = Kept(origin, cache_ttl_s is not None, pushed, end.anew())
        else:
            kept = Kept(origin, cache_ttl_s is not None, (*pushed, end), None)
        ttl_s = cache_ttl_s or self.settings.keep_s
        store = self.journal.store
        await store.set(stream_key(self.journal.prefix, flight.stream_id), kept, self.size, ttl_s)
        if self.key is not None and cache_ttl_s is not None:
            await store.set(self.key, flight.stream_id, len(flight.stream_id), cache_ttl_s)

    def _add(self, size: int, entries: int) -> None:
        self.size += size
        settings = self.settings
        if entries > settings.max_events or self.size > settings.max_bytes:
            self.capped = True
