"""Answer streams in Redis, shared by every instance: any of them follows, resumes or
replays any answer.

Key layout (``P`` the ``[cache] prefix``; every key of one stream shares the hash tag
``{ID}``, so one stream lives in one Redis Cluster slot; the pointer is a key of its own):

- ``P v1:<sha256>`` the question's pointer: the id of its live or cached stream (string);
  taken over (``TAKE_OVER``) from a stream an asker could not follow.
- ``P s:{ID}:events`` the stream (Redis stream, entry ids ``1-<seq>``: ``1-0`` the origin,
  ``1-n`` the n-th event, field ``e`` = JSON ``[type, body]``; ``c`` on a cached answer's end).
- ``P s:{ID}:live`` set while an instance answers (heartbeat: refreshed every
  ``heartbeat_s``, expires after twice that, so a dead producer is noticed within about 2 s).
- ``P s:{ID}:followers`` readers on other instances (they keep the upstream call going).

A value of the wrong type or undecodable under any key is that key's problem: it is deleted
and counted (``on_bad_value``), never an outage (the breaker only opens for Redis itself).
Every command touches one slot: the pointer on its own, or keys of one stream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from backends.base import BackendError, Event
from gateway.upstream.flight import Flight
from gateway.upstream.publisher import Publisher
from gateway.upstream.redis_reader import StreamReader, origin_of
from gateway.upstream.stores import Breaker, KeyProblem
from gateway.upstream.streams import (
    Origin,
    Reading,
    ResumeSettings,
    event_of,
    is_stream_id,
)

log = logging.getLogger("gateway.streams")
T = TypeVar("T")
TAKE_OVER = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return current end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return false
"""
"""Point the question (KEYS[1]) at ARGV[2] if it names ARGV[1] or nothing; else its stream."""
Redis = Any
"""A ``redis.asyncio.Redis`` or ``RedisCluster`` client (the commands used exist in both)."""


@dataclass(frozen=True, slots=True)
class StreamKeys:
    """The Redis keys of one answer stream."""

    events: str
    live: str
    followers: str

    @classmethod
    def of(cls, prefix: str, stream_id: str) -> StreamKeys:
        base = f"{prefix}s:{{{stream_id}}}"
        return cls(base + ":events", base + ":live", base + ":followers")


class BadValue(KeyProblem):
    """``key`` holds a value that does not decode."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class RedisJournal:
    """Answer streams in Redis, every call behind the breaker (but for per-key problems)."""

    def __init__(
        self,
        redis: Redis,
        reader: Redis,
        breaker: Breaker,
        prefix: str,
        settings: ResumeSettings,
        *,
        heartbeat_s: float = 1.0,
        recover_s: float = 3.0,
        block_ms: int = 500,
        on_bad_value: Callable[[], object] = lambda: None,
    ) -> None:
        self.redis = redis
        self.blocking = reader  # blocking reads need a longer socket timeout
        self.reader = StreamReader(self)
        self.breaker = breaker
        self.prefix = prefix
        self.settings = settings
        self.heartbeat_s = heartbeat_s
        self.live_s = 2 * heartbeat_s
        """How long a ``live`` key outlives its last heartbeat."""
        self.live_ms = int(self.live_s * 1000)
        self.recover_s = recover_s
        """How long a live stream's readers and producer retry through a Redis outage."""
        self.keep_ms = int(settings.keep_s * 1000)
        self.block_ms = block_ms
        self.on_bad_value = on_bad_value

    def keys(self, stream_id: str) -> StreamKeys:
        return StreamKeys.of(self.prefix, stream_id)

    async def call(
        self, operation: Callable[[], Awaitable[T]], default: T, *keys: str, gated: bool = True
    ) -> T:
        """``operation()`` behind the breaker (not ``gated``: tried even while it is open);
        a bad value under ``keys`` deletes them."""
        try:
            return await self.breaker.call(operation, default, gated)
        except BadValue as error:
            await self.bad(error, error.key)
        except ResponseError as error:  # of the wrong type (``is_key_problem``)
            await self.bad(error, *keys)
        return default

    async def bad(self, error: Exception, *keys: str) -> None:
        """Drop what is under ``keys`` (it can only be read as garbage) and count it."""
        self.on_bad_value()
        log.warning("bad value under %s (%s): deleted", " ".join(keys), type(error).__name__)
        for key in keys:  # one key per command: they may be in different slots
            await self.breaker.call(partial(self.redis.delete, key), 0)

    async def current(self, key: str) -> str | None:
        async def get() -> str | None:
            value = await self.redis.get(key)
            if value is None:
                return None
            if not is_stream_id(value.decode(errors="replace")):
                raise BadValue(key)
            return str(value.decode())

        return await self.call(get, None, key)

    async def lookup(self, key: str) -> tuple[str, Origin, list[Event]] | None:
        stream_id = await self.current(key)
        if stream_id is None:
            return None
        events_key = self.keys(stream_id).events

        async def entries() -> list[Any]:
            return list(await self.redis.xrange(events_key))

        found: list[Any] = await self.call(entries, [], events_key)
        if not found or b"c" not in found[-1][1]:
            return None  # gone, live, or not a cache entry
        try:
            origin, entries_ = origin_of(found)
            events = [event_of(kind, body) for kind, body in entries_]
        except (BackendError, ValueError, TypeError, KeyError) as error:
            await self.bad(error, events_key)
            return None
        return stream_id, origin, events

    async def claim(self, key: str, stream_id: str) -> str | None:
        keys = self.keys(stream_id)

        async def claim() -> str | None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.live, b"1", px=self.live_ms)
                pipe.set(key, stream_id, nx=True, get=True, px=self.keep_ms)
                _, previous = await pipe.execute()
            if previous is None:
                return None
            if not is_stream_id(previous.decode(errors="replace")):
                raise BadValue(key)
            return str(previous.decode())

        try:
            return await self.breaker.call(claim, None)  # Redis unavailable: answer here
        except BadValue as error:
            await self.bad(error, key)
        except ResponseError as error:
            await self.bad(error, key)
        await self.take(key, stream_id)
        return None

    async def take(self, key: str, stream_id: str, dead: str = "") -> str | None:
        keys = self.keys(stream_id)

        async def take() -> str | None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.live, b"1", px=self.live_ms)
                pipe.eval(TAKE_OVER, 1, key, dead, stream_id, self.keep_ms)
                _, current = await pipe.execute()
            if current is None:
                return None
            if not is_stream_id(current.decode(errors="replace")):
                raise BadValue(key)
            return str(current.decode())

        return await self.call(take, None, key)  # Redis unavailable: answer here

    async def follow(self, stream_id: str, timeout_s: float, finished: bool) -> Reading | None:
        return await self.reader.follow(stream_id, timeout_s, finished)

    async def read(self, stream_id: str, after: int) -> Reading | None:
        return await self.reader.read(stream_id, after)

    def recorder(self, flight: Flight, key: str | None, settings: ResumeSettings) -> Publisher:
        return Publisher(self, flight, key, settings)

    async def aclose(self) -> None:
        await self.redis.aclose()
        await self.blocking.aclose()

    async def count(self, keys: StreamKeys, step: int) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incrby(keys.followers, step)
            pipe.pexpire(keys.followers, self.keep_ms)
            count, _ = await pipe.execute()
        return int(count)

    def followers(self, keys: StreamKeys, value: bytes | None) -> int:
        """The follower count read as ``value``; ``BadValue`` if it is not one."""
        if value is None:
            return 0
        if not value.lstrip(b"-").isdigit():
            raise BadValue(keys.followers)
        return int(value)
