"""Single flight across gateway instances sharing one Redis.

The instance that takes a question's lock calls the upstream and publishes the events to
its events stream (``Publisher``); any other instance asking meanwhile follows that stream
(from its start, so late joiners miss nothing) instead of calling the upstream again.
Followers count themselves so the caller keeps going while anyone still listens. Every key
expires; Redis trouble means each instance answers on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from backends.base import Backend, Event, PermanentError, TransientError
from gateway.events import event_from_body
from gateway.upstream.base import Answer
from gateway.upstream.flight import ABANDONED
from gateway.upstream.stores import Breaker

Entry = tuple[str, dict[str, object]]
"""One published event: its type and JSON body (``meta`` carries only ``backend``)."""

LOCK = ":lock"
"""Suffix of the key held, with an expiry the caller keeps refreshing, while it answers."""
EVENTS = ":events"
"""Suffix of the stream of the flight's entries, one JSON ``[type, body]`` in field ``e``."""
FOLLOWERS = ":followers"
"""Suffix of the count of clients on other instances following the flight."""


@dataclass(frozen=True, slots=True)
class FlightKeys:
    """The Redis keys of the flight of one cache key."""

    lock: str
    events: str
    followers: str

    @classmethod
    def of(cls, key: str) -> FlightKeys:
        return cls(key + LOCK, key + EVENTS, key + FOLLOWERS)


class SharedFlights:
    """Claims and follows flights in Redis (``Publisher`` publishes them)."""

    def __init__(
        self,
        redis: Redis,
        reader: Redis,
        breaker: Breaker,
        *,
        lock_ttl_s: float = 10.0,
        stream_ttl_s: float = 60.0,
        block_ms: int = 500,
    ) -> None:
        self.redis = redis
        self.reader = reader  # blocking reads need a longer socket timeout
        self.breaker = breaker
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        self.stream_ttl_ms = int(stream_ttl_s * 1000)
        self.block_ms = block_ms

    async def claim(self, key: str) -> bool:
        """True when this instance should call the upstream: it took the lock, or Redis is
        unavailable (then every instance answers on its own)."""
        lock = FlightKeys.of(key).lock
        taken = await self.breaker.call(
            lambda: self.redis.set(lock, b"1", nx=True, px=self.lock_ttl_ms), True
        )
        return bool(taken)

    async def follow(
        self, key: str, answerers: Sequence[Backend], first_event_s: float
    ) -> Answer | None:
        """The answer another instance is producing (by one of ``answerers``), or None if
        none shows up in time or the one found was abandoned (then answer it here)."""
        keys = FlightKeys.of(key)
        counted = await self.breaker.call(lambda: self._count_follower(keys, +1), None)
        if counted is None:
            return None
        by_name = {backend.name: backend for backend in answerers}
        batches = self._batches(keys)
        backend: Backend | None = None
        first: Event | None = None
        try:
            async with asyncio.timeout(first_event_s):
                async for batch in batches:
                    if any(kind == "error" and body["code"] == ABANDONED for kind, body in batch):
                        raise _Lost("every client of that answer left")
                    while batch and first is None:
                        kind, body = batch.pop(0)
                        if kind == "meta":
                            backend = by_name.get(str(body["backend"]))
                            if backend is None:
                                raise _Lost("it was answered by a backend unknown here")
                        else:
                            first = _event(kind, body)  # raises the error the other one got
                    if first is not None:
                        break
        except BaseException as error:
            await batches.aclose()
            await self.breaker.call(lambda: self._count_follower(keys, -1), None)
            if isinstance(error, TimeoutError | _Lost):
                return None  # nobody is answering after all: answer it here
            raise
        assert backend is not None and first is not None
        rest = None if first.type == "done" else batch  # an answer can be its ``done`` alone
        return Answer(backend, first, self._rest(keys, rest, batches))

    async def _rest(
        self,
        keys: FlightKeys,
        ready: list[Entry] | None,
        batches: AsyncGenerator[list[Entry], None],
    ) -> AsyncGenerator[Sequence[Event], None]:
        """The events after the first: ``ready`` (those read with it), then the stream's,
        up to ``done``; nothing at all if ``ready`` is None."""
        try:
            while ready is not None:
                events = [_event(kind, body) for kind, body in ready]
                if events:
                    yield events
                if events and events[-1].type == "done":
                    return
                ready = await anext(batches)
        except _Lost as lost:
            raise TransientError("unavailable", f"lost the shared answer: {lost}") from None
        finally:
            await batches.aclose()
            await self.breaker.call(lambda: self._count_follower(keys, -1), None)

    async def _batches(self, keys: FlightKeys) -> AsyncGenerator[list[Entry], None]:
        """The flight's entries from the first, as many as each read brings; ``_Lost`` if
        Redis or the caller goes away."""
        last: bytes = b"0-0"
        while True:  # not gated by the breaker: a follower has no other source
            try:
                reply: Any = await self.reader.xread(
                    {keys.events: last}, count=256, block=self.block_ms
                )
                if not reply and not await self.reader.exists(keys.lock):
                    raise _Lost("the instance answering it is gone")
            except (RedisError, OSError, TimeoutError) as error:
                self.breaker.failed(error)
                raise _Lost("Redis is unavailable") from None
            for _, messages in reply:
                last = messages[-1][0]
                yield [orjson.loads(fields[b"e"]) for _, fields in messages]

    async def _count_follower(self, keys: FlightKeys, step: int) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incrby(keys.followers, step)
            pipe.pexpire(keys.followers, self.stream_ttl_ms)
            count, _ = await pipe.execute()
        return int(count)


class _Lost(Exception):
    """The shared answer can no longer be followed."""


def _event(kind: str, body: dict[str, object]) -> Event:
    if kind == "error":  # as retryable as it was where it happened
        error = TransientError if body["retryable"] else PermanentError
        raise error(str(body["code"]), str(body["message"]))
    return event_from_body(kind, body)
