"""The answer cache: a repeated question replays the stored stream, event for event.

``Cached`` wraps a backend's upstream chain (``Cached(Fallback(Retrying(...)))``). A hit
replays the events with their original boundaries; a miss joins the ``Flight`` for the
same key, so identical questions in flight cost one upstream call (across instances too,
through ``SharedFlights``). Only complete answers are stored, once, with a TTL.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

import orjson
from pydantic import BaseModel, ConfigDict, Field

from backends.base import Backend, Done, Event, TransientError, Turn
from gateway.flight import Flight
from gateway.shared import Publisher, SharedFlights
from gateway.stores import Store
from gateway.upstream import Answer, Ask, Upstream
from gateway.wire import event_body, event_from_body

SCHEMA = 1
"""Bumped when stored entries change shape: old entries then read as misses."""
NORMAL_FINISH = frozenset({"stop", "max_tokens"})


class CacheSettings(BaseModel):
    """``[cache]``: where and how answers are cached (Redis itself: ``redis_url``)."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = "qa:"
    """Every Redis key starts with this."""
    tenant: str = "default"
    """Namespace of this gateway's entries; answers never cross tenants."""
    memory_max_entries: int = Field(10_000, gt=0)
    memory_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    connect_timeout_s: float = Field(0.5, gt=0)
    command_timeout_s: float = Field(0.1, gt=0)
    breaker_s: float = Field(5.0, gt=0)
    """After a Redis failure, skip Redis for this long."""
    lock_ttl_s: float = Field(10.0, gt=0)
    """A flight's lock outlives a crashed instance by at most this."""


class BackendCachePolicy(BaseModel):
    """Per backend: ``cache = false`` turns caching off; the rest tunes it."""

    model_config = ConfigDict(extra="forbid")

    cache: bool = True
    cache_ttl_s: float = Field(3600.0, gt=0)
    cache_max_entry_bytes: int = Field(256 * 1024, gt=0)
    cache_skipped: bool = False
    """Also store answers the upstream skipped (``finish_reason: "skipped"``)."""


def identity_of(backend: Backend) -> bytes:
    """The backend's part of its cache keys: its name and every setting that shapes answers."""
    return orjson.dumps([backend.name, backend.cache_identity()], option=orjson.OPT_SORT_KEYS)


def cache_key(
    prefix: str, identity: bytes, query: str, tenant: str, history: Sequence[Turn] = ()
) -> str:
    """A versioned key over everything that changes the answer."""
    digest = hashlib.sha256(identity)
    asked: list[object] = [" ".join(query.split()), tenant]
    if history:  # only then: keys of questions without one stay what they were
        asked.append([[turn.role, turn.text] for turn in history])
    digest.update(orjson.dumps(asked))
    return f"{prefix}v{SCHEMA}:{digest.hexdigest()}"


def encode_entry(events: Sequence[Event]) -> bytes:
    """Stored form of a complete answer. The session id is left out: it is the asker's own."""
    bodies = []
    for event in events:
        body = event_body(event)
        if isinstance(event, Done):
            body.pop("session_id", None)
        bodies.append([event.type, body])
    return orjson.dumps({"v": SCHEMA, "events": bodies})


def decode_entry(value: bytes) -> list[Event] | None:
    """The events of a stored answer; None for anything corrupt or of another schema."""
    try:
        entry = orjson.loads(value)
        if entry["v"] != SCHEMA:
            return None
        events = [event_from_body(kind, body) for kind, body in entry["events"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return events if events and isinstance(events[-1], Done) else None


@dataclass
class _Plan:
    """What one flight of this cache is doing."""

    key: str
    ask: Ask
    publisher: Publisher | None = None
    store: bool = True


class Cached:
    """Replays stored answers and coalesces identical questions for one backend."""

    def __init__(
        self,
        inner: Upstream,
        backend: Backend,
        policy: BackendCachePolicy,
        settings: CacheSettings,
        store: Store,
        shared: SharedFlights | None,
        backends: Callable[[str], Backend],
        first_event_s: float,
    ) -> None:
        self.inner = inner
        self.backend = backend
        self.policy = policy
        self.settings = settings
        self.store = store
        self.shared = shared
        self.backends = backends
        self.first_event_s = first_event_s
        self.flights: dict[str, Flight] = {}
        self.identity = identity_of(backend)

    async def open(self, ask: Ask) -> Answer:
        if not self.policy.cache or ask.request.session_id is not None:
            return await self.inner.open(ask)  # follow-up turns depend on the conversation
        question = ask.request
        key = cache_key(
            self.settings.prefix, self.identity, question.query, ask.tenant, question.history
        )
        if ask.cache_read:
            events = await self._lookup(key)
            if events is not None:
                return self._replay(events, "HIT")
        flight = self.flights.get(key)
        while flight is not None and flight.abandoned:
            await flight.finished()  # and its lock in Redis with it: never follow a dying flight
            flight = self.flights.get(key)
        if flight is None:
            plan = _Plan(key, ask)
            flight = Flight(lambda f: self._start(plan, f), lambda f: self._end(plan, f))
            self.flights[key] = flight
        else:
            ask.trace.coalesced = True
        answer = await flight.join()
        answer.cache = "MISS" if ask.cache_read else "BYPASS"
        return answer

    async def _start(self, plan: _Plan, flight: Flight) -> Answer:
        if self.shared is not None:
            if await self.shared.claim(plan.key):
                # Another instance may have stored it between our lookup and the claim.
                events = await self._lookup(plan.key) if plan.ask.cache_read else None
                if events is not None:
                    plan.store = False
                    return self._replay(events, "HIT")
                plan.publisher = self.shared.publish(plan.key, flight)
            else:
                following = await self.shared.follow(plan.key, self.backends, self.first_event_s)
                if following is not None:
                    plan.store = False  # the instance that called the upstream stores it
                    plan.ask.trace.coalesced = True
                    return following
        return await self.inner.open(plan.ask)

    async def _end(self, plan: _Plan, flight: Flight) -> None:
        if plan.store and plan.ask.cache_write and self._storable(flight):
            value = encode_entry(flight.events)
            if len(value) <= self.policy.cache_max_entry_bytes:
                await self.store.set(plan.key, value, self.policy.cache_ttl_s)
        if plan.publisher is not None:  # releases the lock: a new asker may then claim it
            end = flight.events[-1] if flight.complete else flight.error
            await plan.publisher.finish(end or TransientError("aborted", "no answer"))
        if self.flights.get(plan.key) is flight:
            del self.flights[plan.key]

    def _storable(self, flight: Flight) -> bool:
        if not flight.complete or flight.backend is not self.backend:
            return False  # cut short, failed, or answered by a fallback
        done = flight.events[-1]
        assert isinstance(done, Done)
        return done.finish_reason in NORMAL_FINISH or (
            done.finish_reason == "skipped" and self.policy.cache_skipped
        )

    async def _lookup(self, key: str) -> list[Event] | None:
        value = await self.store.get(key)
        return decode_entry(value) if value is not None else None

    def _replay(self, events: list[Event], cache: str) -> Answer:
        async def rest() -> AsyncGenerator[Sequence[Event], None]:
            if len(events) > 1:
                yield events[1:]

        return Answer(self.backend, events[0], rest(), cache)
