"""A cache miss, answered as a flight's ``Source``.

Across instances it claims the question in Redis or follows the instance that did; what it
calls the upstream for it publishes as it comes; a complete answer it stores at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backends.base import Backend, Done, Event, TransientError
from gateway.upstream.base import Answer, Ask, Upstream
from gateway.upstream.entries import BackendCachePolicy, encode_entry, lookup, replay
from gateway.upstream.flight import Flight
from gateway.upstream.publisher import Publisher
from gateway.upstream.shared import SharedFlights
from gateway.upstream.stores import Store

NORMAL_FINISH = frozenset({"stop", "max_tokens"})
"""Answers that end so are stored (skipped ones only with ``cache_skipped``)."""


@dataclass(frozen=True, slots=True)
class Misses:
    """What every miss of one backend's cache works with."""

    inner: Upstream
    answerers: Sequence[Backend]
    """The backend the cache is for, then its fallbacks: who may have answered elsewhere."""
    policy: BackendCachePolicy
    store: Store
    shared: SharedFlights | None
    first_event_s: float
    """How long to wait for another instance's first event before answering here."""


class Miss:
    """One flight's answer to a question that was not in the cache."""

    def __init__(self, key: str, ask: Ask, misses: Misses) -> None:
        self.key = key
        self.ask = ask
        self.misses = misses
        self.publisher: Publisher | None = None
        self.store = True
        """False when the answer came from elsewhere (stored there)."""

    async def open(self, flight: Flight) -> Answer:
        misses, shared = self.misses, self.misses.shared
        if shared is not None:
            if await shared.claim(self.key):
                # Another instance may have stored it between our lookup and the claim.
                events = await lookup(misses.store, self.key) if self.ask.cache_read else None
                if events is not None:
                    self.store = False
                    return replay(misses.answerers[0], events)
                self.publisher = Publisher(shared, self.key, flight)
            else:
                following = await shared.follow(self.key, misses.answerers, misses.first_event_s)
                if following is not None:
                    self.store = False  # the instance that called the upstream stores it
                    self.ask.trace.coalesced = True
                    return following
        return await misses.inner.open(self.ask)

    def on_event(self, event: Event) -> None:
        if self.publisher is not None:
            self.publisher.push(event)

    def followed_elsewhere(self) -> bool:
        return self.publisher is not None and self.publisher.followed_elsewhere()

    async def on_end(self, flight: Flight) -> None:
        if self.store and self.ask.cache_write and self._storable(flight):
            value = encode_entry(flight.events)
            if len(value) <= self.misses.policy.cache_max_entry_bytes:
                await self.misses.store.set(self.key, value, self.misses.policy.cache_ttl_s)
        if self.publisher is not None:  # releases the lock: a new asker may then claim it
            end = flight.events[-1] if flight.complete else flight.error
            await self.publisher.finish(end or TransientError("aborted", "no answer"))

    def _storable(self, flight: Flight) -> bool:
        if not flight.complete or flight.backend is not self.misses.answerers[0]:
            return False  # cut short, failed, or answered by a fallback
        done = flight.events[-1]
        assert isinstance(done, Done)
        return done.finish_reason in NORMAL_FINISH or (
            done.finish_reason == "skipped" and self.misses.policy.cache_skipped
        )
