"""Answer streams in process, for a gateway without Redis.

A live stream is its ``Flight`` (clients here read it there); a finished one is kept, as one
encoded value, in a ``MemoryStore`` bounded in entries and bytes, for ``keep_s`` or, when it
is the question's cached answer, its cache TTL; the question key points at it then.
"""

from __future__ import annotations

import logging

import orjson

from backends.base import BackendError, Done, Event
from gateway.events import Body
from gateway.upstream.flight import Flight
from gateway.upstream.stores import MemoryStore
from gateway.upstream.streams import (
    Origin,
    Reading,
    ResumeSettings,
    encode_end,
    encode_event,
    event_of,
    is_stream_id,
    one_batch,
)

log = logging.getLogger("gateway.streams")
EVENTS = ":events"
"""Suffix of a stream's key (after ``{prefix}s:{id}``), as in Redis."""


def stream_key(prefix: str, stream_id: str) -> str:
    return f"{prefix}s:{{{stream_id}}}{EVENTS}"


class MemoryJournal:
    """Finished streams and the questions' pointers to them, in a bounded map."""

    def __init__(self, store: MemoryStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix

    async def lookup(self, key: str) -> tuple[str, Origin, list[Event]] | None:
        stream_id = await self.current(key)
        found = await self._load(stream_id) if stream_id is not None else None
        if found is None or not found[1]:
            return None
        origin, _, entries = found
        try:
            events = [event_of(kind, body) for kind, body in entries]
        except BackendError:
            return None
        if not events or not isinstance(events[-1], Done):
            return None
        assert stream_id is not None
        return stream_id, origin, events

    async def current(self, key: str) -> str | None:
        value = await self.store.get(key)
        return value.decode() if value is not None else None

    async def claim(self, key: str, stream_id: str) -> str | None:
        return None  # in process, ``Flights`` already coalesce

    async def take(self, key: str, stream_id: str, dead: str = "") -> str | None:
        return None

    async def follow(self, stream_id: str, timeout_s: float, finished: bool) -> Reading | None:
        return None  # never claimed by another

    async def read(self, stream_id: str, after: int) -> Reading | None:
        found = await self._load(stream_id)
        if found is None:
            return None
        origin, _, entries = found
        events: list[Event] = []
        error: BackendError | None = None
        for kind, body in entries[max(after, 0) :]:
            try:
                events.append(event_of(kind, body))
            except BackendError as failure:
                error = failure
        return Reading(origin, one_batch(events, error))

    def recorder(self, flight: Flight, key: str | None, settings: ResumeSettings) -> MemoryRecorder:
        return MemoryRecorder(self, flight, key, settings)

    async def aclose(self) -> None:
        await self.store.aclose()

    async def _load(self, stream_id: str) -> tuple[Origin, bool, list[tuple[str, Body]]] | None:
        if not is_stream_id(stream_id):
            return None
        value = await self.store.get(stream_key(self.prefix, stream_id))
        if value is None:
            return None
        origin, cacheable, entries = orjson.loads(value)
        return Origin.of(origin), cacheable, [(str(kind), body) for kind, body in entries]


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
        self._entries: list[bytes] = []
        self.size = 0

    def push(self, event: Event) -> None:
        if not self.capped:
            self._add(encode_event(event))

    def followed_elsewhere(self) -> bool:
        return False

    async def finish(self, end: Event | BackendError, cache_ttl_s: float | None) -> None:
        if not self.capped:
            self._add(encode_end(end))
        flight, origin = self.flight, self.flight.origin
        if self.capped or origin is None:
            if self.capped:
                log.warning("answer stream %s too long: not resumable or cached", flight.stream_id)
            return
        value = orjson.dumps(
            [origin.body(), cache_ttl_s is not None, [orjson.Fragment(e) for e in self._entries]]
        )
        ttl_s = cache_ttl_s or self.settings.keep_s
        store = self.journal.store
        await store.set(stream_key(self.journal.prefix, flight.stream_id), value, ttl_s)
        if self.key is not None and cache_ttl_s is not None:
            await store.set(self.key, flight.stream_id.encode(), cache_ttl_s)

    def _add(self, entry: bytes) -> None:
        self._entries.append(entry)
        self.size += len(entry)
        settings = self.settings
        if len(self._entries) > settings.max_events or self.size > settings.max_bytes:
            self.capped = True
            self._entries.clear()
