"""The answer cache: a repeated question replays the stored stream, event for event.

``Cached`` wraps a backend's upstream chain (``Cached(Fallback(Retrying(...)))``). A hit
replays the stored events; a miss joins the flight of the same question (``Flights``), so
identical questions in flight cost one upstream call; the flight's ``Miss`` shares it across
instances and stores the answer once it is complete.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from backends.base import Backend
from gateway.upstream.base import Answer, Ask, Upstream
from gateway.upstream.entries import (
    BackendCachePolicy,
    cache_key,
    identity_of,
    lookup,
    replay,
    without_session,
)
from gateway.upstream.flight import Flights
from gateway.upstream.miss import Miss, Misses
from gateway.upstream.shared import SharedFlights
from gateway.upstream.stores import Store


class CacheSettings(BaseModel):
    """``[cache]``: where and how answers are cached (Redis itself: ``redis_url``)."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = "qa:"
    """Every Redis key starts with this."""
    tenant: str = "default"
    """The tenant of requests that carry none of their own (no auth configured)."""
    memory_max_entries: int = Field(10_000, gt=0)
    """Without Redis: the in-process cache keeps at most this many answers..."""
    memory_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    """...and this many bytes of them, dropping the least recently used first."""
    connect_timeout_s: float = Field(0.5, gt=0)
    command_timeout_s: float = Field(0.1, gt=0)
    """A Redis call slower than this counts as a failure (and reads as a miss)."""
    breaker_s: float = Field(5.0, gt=0)
    """After a Redis failure, skip Redis for this long."""
    lock_ttl_s: float = Field(10.0, gt=0)
    """A flight's lock outlives a crashed instance by at most this."""


class Cached:
    """Replays stored answers and coalesces identical questions for one backend."""

    def __init__(
        self,
        inner: Upstream,
        answerers: Sequence[Backend],
        policy: BackendCachePolicy,
        settings: CacheSettings,
        store: Store,
        shared: SharedFlights | None,
        first_event_s: float,
    ) -> None:
        """``answerers``: the backend this cache is for, then those ``inner`` falls back on."""
        self.backend = answerers[0]
        self.policy = policy
        self.prefix = settings.prefix
        self.identity = identity_of(self.backend)
        self.store = store
        self.inner = inner
        self.flights = Flights()
        self.misses = Misses(inner, answerers, policy, store, shared, first_event_s)

    async def open(self, ask: Ask) -> Answer:
        if not self.policy.cache or ask.request.session_id is not None:
            return await self.inner.open(ask)  # follow-up turns depend on the conversation
        question = ask.request
        tenant = ask.principal.tenant
        key = cache_key(
            self.prefix,
            self.identity,
            question.query,
            tenant,
            question.history,
            question.parameters(),
        )
        if ask.cache_read:
            events = await lookup(self.store, key)
            if events is not None:
                return replay(self.backend, events)
        miss = Miss(key, ask, self.misses)
        flight, joined = await self.flights.board(key, lambda: miss)
        if joined:
            ask.trace.coalesced = True
        answer = await flight.join()
        if joined or not miss.store:  # another asker's call (or a replay): not its session
            answer = without_session(answer)
        answer.cache = "MISS" if ask.cache_read else "BYPASS"
        return answer
