"""Reading answer streams from Redis: a follower from the start (``follow``), a resumer
after its last event (``read``), live until the end, through blocking ``XREAD``s."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from backends.base import Event, TransientError
from gateway.upstream.flight import ABANDONED
from gateway.upstream.stores import REDIS_ERRORS, is_key_problem
from gateway.upstream.streams import Origin, Reading, decode, encode, event_of, is_end, is_stream_id

if TYPE_CHECKING:
    from gateway.upstream.redis_journal import RedisJournal, StreamKeys

Entry = tuple[str, dict[str, Any]]


class StreamReader:
    """Reads a ``RedisJournal``'s streams; a reader of a live one counts among its followers."""

    def __init__(self, journal: RedisJournal) -> None:
        self.journal = journal

    async def follow(self, stream_id: str, timeout_s: float, finished: bool) -> Reading | None:
        keys = self.journal.keys(stream_id)
        counted = (
            await self.journal.call(lambda: self.journal.count(keys, +1), None, keys.followers)
            is not None
        )
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
        except (TimeoutError, StopAsyncIteration, _LostError, LostStream):
            return None  # nobody is answering after all: answer it here
        finally:
            if counted:
                await self.journal.call(lambda: self.journal.count(keys, -1), None, keys.followers)
        return Reading(origin, _prepend(first, batches))

    async def read(self, stream_id: str, after: int) -> Reading | None:
        if not is_stream_id(stream_id):
            return None
        keys = self.journal.keys(stream_id)
        opened = await self._open(keys, after)
        if opened is None:
            return None
        origin, ready, last = opened
        return Reading(origin, self._batches(keys, ready, last, counted=None))

    async def _open(
        self, keys: StreamKeys, after: int, wait: bool = False
    ) -> tuple[Origin, list[Entry], bytes] | None:
        """The stream's origin, its entries after ``after`` (one round trip) and the id of
        the last; with ``wait``, a live stream's first entries are waited for."""

        async def first() -> list[Any]:
            async with self.journal.redis.pipeline(transaction=False) as pipe:
                pipe.xrange(keys.events, "1-0", "1-0")
                pipe.xrange(keys.events, f"(1-{max(after, 0)}", "+", count=512)
                return list(await pipe.execute())

        replies: list[Any] = await self.journal.call(first, [], keys.events)
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
            origin, _ = origin_of(meta)
        except (ValueError, TypeError, KeyError) as error:
            await self.journal.bad(error, keys.events)
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
                await self.journal.call(lambda: self.journal.count(keys, +1), None, keys.followers)
                is not None
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
            raise LostStream("unavailable", f"lost the answer stream: {lost}") from None
        finally:
            if counted:
                await self.journal.call(lambda: self.journal.count(keys, -1), None, keys.followers)

    async def _next(self, keys: StreamKeys, last: bytes) -> tuple[list[Entry], bytes]:
        """The entries after ``last`` once there are some; ``_LostError`` if the instance
        answering is gone or Redis fails (not gated by the breaker: a reader has no other
        source)."""
        while True:
            try:
                reply: Any = await self.journal.blocking.xread(
                    {keys.events: last}, count=256, block=self.journal.block_ms
                )
                if not reply and not await self.journal.blocking.exists(keys.live):
                    raise _LostError("the instance answering it is gone")
                messages = reply[0][1] if reply else []
                entries = [decode(fields[b"e"]) for _, fields in messages]
            except (ResponseError, ValueError, TypeError, KeyError) as error:
                if isinstance(error, ResponseError) and not is_key_problem(error):
                    self.journal.breaker.failed(error)
                    raise _LostError("Redis is unavailable") from None
                await self.journal.bad(error, keys.events)
                raise _LostError("its stream was corrupt") from None
            except REDIS_ERRORS as error:
                self.journal.breaker.failed(error)
                raise _LostError("Redis is unavailable") from None
            if entries:
                return entries, messages[-1][0]


class LostStream(TransientError):
    """The stream can no longer be followed (its error to a reader that had started)."""


class _LostError(Exception):
    """The stream can no longer be followed."""


def _encoded(entry: Entry) -> bytes:
    return encode(*entry)


def origin_of(messages: list[Any]) -> tuple[Origin, list[Entry]]:
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
