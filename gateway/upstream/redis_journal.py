"""Answer streams in Redis, shared by every instance: any of them follows, resumes or
replays any answer.

Key layout (``P`` the ``[cache] prefix``; every key of one stream shares the hash tag
``{ID}``, so one stream lives in one Redis Cluster slot; the pointer is a key of its own):

- ``P v1:<sha256>`` the question's pointer: the id of its live or cached stream (string).
- ``P s:{ID}:events`` the stream (Redis stream, entry ids ``1-<seq>``: ``1-0`` the origin,
  ``1-n`` the n-th event, field ``e`` = JSON ``[type, body]``; ``c`` on a cached answer's end).
- ``P s:{ID}:live`` set while an instance answers (heartbeat, expires after ``lock_ttl_s``).
- ``P s:{ID}:followers`` readers on other instances (they keep the upstream call going).

A value of the wrong type or undecodable under any key is that key's problem: it is deleted
and counted (``on_bad_value``), never an outage (the breaker only opens for Redis itself).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from redis.exceptions import RedisError, ResponseError

from backends.base import BackendError, Event, TransientError
from gateway.upstream.flight import ABANDONED, Flight
from gateway.upstream.stores import Breaker, is_key_problem
from gateway.upstream.streams import (
    Origin,
    Reading,
    ResumeSettings,
    decode,
    encode,
    event_of,
    is_end,
    is_stream_id,
)

log = logging.getLogger("gateway.streams")
T = TypeVar("T")
Entry = tuple[str, dict[str, Any]]
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


class BadValue(Exception):
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
        lock_ttl_s: float = 10.0,
        block_ms: int = 500,
        on_bad_value: Callable[[], object] = lambda: None,
    ) -> None:
        self.redis = redis
        self.reader = reader  # blocking reads need a longer socket timeout
        self.breaker = breaker
        self.prefix = prefix
        self.settings = settings
        self.lock_ttl_ms = int(lock_ttl_s * 1000)
        self.keep_ms = int(settings.keep_s * 1000)
        self.block_ms = block_ms
        self.on_bad_value = on_bad_value

    def keys(self, stream_id: str) -> StreamKeys:
        return StreamKeys.of(self.prefix, stream_id)

    async def call(self, operation: Callable[[], Awaitable[T]], default: T, *keys: str) -> T:
        """``operation()`` behind the breaker; a bad value under ``keys`` deletes them."""
        try:
            return await self.breaker.call(operation, default)
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
            origin, entries_ = _origin(found)
            events = [event_of(kind, body) for kind, body in entries_]
        except (BackendError, ValueError, TypeError, KeyError) as error:
            await self.bad(error, events_key)
            return None
        return stream_id, origin, events

    async def claim(self, key: str, stream_id: str) -> str | None:
        keys = self.keys(stream_id)

        async def claim() -> str | None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.live, b"1", px=self.lock_ttl_ms)
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

    async def take(self, key: str, stream_id: str) -> None:
        keys = self.keys(stream_id)

        async def take() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.live, b"1", px=self.lock_ttl_ms)
                pipe.set(key, stream_id, px=self.keep_ms)
                await pipe.execute()

        await self.call(take, None, key)

    async def follow(self, stream_id: str, timeout_s: float, finished: bool) -> Reading | None:
        keys = self.keys(stream_id)
        counted = await self.call(lambda: self._count(keys, +1), None, keys.followers) is not None
        batches = None
        try:
            async with asyncio.timeout(timeout_s):
                opened = await self._open(keys, 0, wait=True)
                if opened is None:
                    raise _LostError("no such stream")
                origin, ready, last = opened
                end = ready[-1] if ready and is_end(ready[-1][0]) else None
                if end is not None and (not finished or end[1].get("code") == ABANDONED):
                    raise _LostError("finished")  # not to be replayed, or abandoned
                batches, counted = self._batches(keys, ready, last, counted), False
                first = await anext(batches)  # from here on, ``batches`` uncounts itself
        except (TimeoutError, StopAsyncIteration, _LostError, TransientError) as error:
            if isinstance(error, TransientError) and error.code != "unavailable":
                raise  # the error the answer failed with
            return None  # nobody is answering after all: answer it here
        finally:
            if counted:
                await self.call(lambda: self._count(keys, -1), None, keys.followers)
        return Reading(origin, _prepend(first, batches))

    async def read(self, stream_id: str, after: int) -> Reading | None:
        if not is_stream_id(stream_id):
            return None
        keys = self.keys(stream_id)
        opened = await self._open(keys, after)
        if opened is None:
            return None
        origin, ready, last = opened
        return Reading(origin, self._batches(keys, ready, last, counted=None))

    def recorder(self, flight: Flight, key: str | None, settings: ResumeSettings) -> Any:
        from gateway.upstream.publisher import Publisher

        return Publisher(self, flight, key, settings)

    async def aclose(self) -> None:
        await self.redis.aclose()
        await self.reader.aclose()

    async def _open(
        self, keys: StreamKeys, after: int, wait: bool = False
    ) -> tuple[Origin, list[Entry], bytes] | None:
        """The stream's origin, its entries after ``after`` (one round trip) and the id of
        the last; with ``wait``, a live stream's first entries are waited for."""

        async def first() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xrange(keys.events, "1-0", "1-0")
                pipe.xrange(keys.events, f"(1-{max(after, 0)}", "+", count=512)
                return list(await pipe.execute())

        replies: list[Any] = await self.call(first, [], keys.events)
        if not replies:
            return None
        meta, messages = replies
        try:
            if not meta and wait:
                entries, last = await self._next(keys, b"0-0")  # the origin comes first
                meta, ready = [(b"1-0", {b"e": _encoded(entries[0])})], entries[1:]
            elif not meta:
                return None
            else:
                ready = [decode(fields[b"e"]) for _, fields in messages]
                last = messages[-1][0] if messages else f"1-{max(after, 0)}".encode()
            origin, _ = _origin(meta)
        except (ValueError, TypeError, KeyError) as error:
            await self.bad(error, keys.events)
            return None
        return origin, ready, last

    async def _batches(
        self, keys: StreamKeys, ready: list[Entry], last: bytes, counted: bool | None
    ) -> AsyncGenerator[Sequence[Event], None]:
        """The events of ``ready`` and those after ``last``, up to the end. ``counted``:
        whether this reader is counted among the followers (None: count it while it reads a
        live stream)."""
        if counted is None:
            live = not (ready and is_end(ready[-1][0]))
            counted = live and (
                await self.call(lambda: self._count(keys, +1), None, keys.followers) is not None
            )
        try:
            while True:
                events: list[Event] = []
                for kind, body in ready:
                    if kind == "error" and events:
                        yield events
                    events.append(event_of(kind, body))  # an ``error`` raises
                    if kind == "done":
                        yield events
                        return
                if events:
                    yield events
                ready, last = await self._next(keys, last)
        except _LostError as lost:
            raise TransientError("unavailable", f"lost the answer stream: {lost}") from None
        finally:
            if counted:
                await self.call(lambda: self._count(keys, -1), None, keys.followers)

    async def _next(self, keys: StreamKeys, last: bytes) -> tuple[list[Entry], bytes]:
        """The entries after ``last`` once there are some; ``_LostError`` if the instance
        answering is gone or Redis fails (not gated by the breaker: a reader has no other
        source)."""
        while True:
            try:
                reply: Any = await self.reader.xread(
                    {keys.events: last}, count=256, block=self.block_ms
                )
                if not reply and not await self.reader.exists(keys.live):
                    raise _LostError("the instance answering it is gone")
                messages = reply[0][1] if reply else []
                entries = [decode(fields[b"e"]) for _, fields in messages]
            except (ResponseError, ValueError, TypeError, KeyError) as error:
                if isinstance(error, ResponseError) and not is_key_problem(error):
                    self.breaker.failed(error)
                    raise _LostError("Redis is unavailable") from None
                await self.bad(error, keys.events)
                raise _LostError("its stream was corrupt") from None
            except (RedisError, OSError, TimeoutError) as error:
                self.breaker.failed(error)
                raise _LostError("Redis is unavailable") from None
            if entries:
                return entries, messages[-1][0]

    async def _count(self, keys: StreamKeys, step: int) -> int:
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


class _LostError(Exception):
    """The stream can no longer be followed."""


def _encoded(entry: Entry) -> bytes:
    return encode(*entry)


def _origin(messages: list[Any]) -> tuple[Origin, list[Entry]]:
    """The origin in a stream's first entry, and the entries after it."""
    entries = [decode(fields[b"e"]) for _, fields in messages]
    kind, body = entries[0]
    if kind != "meta" or messages[0][0] != b"1-0":
        raise ValueError("the stream does not start with its origin")
    return Origin.of(body), entries[1:]


async def _prepend(
    first: Sequence[Event], rest: AsyncGenerator[Sequence[Event], None]
) -> AsyncGenerator[Sequence[Event], None]:
    try:
        yield first
        async for batch in rest:
            yield batch
    finally:
        await rest.aclose()
