"""Reading answer streams from Redis: a follower from the start (``follow``), a resumer
after its last event (``read``), live until the end, through blocking ``XREAD``s.

A reader rides out a Redis outage of up to ``recover_s`` (retrying, then reading on after the
last entry it got, which the producer writes again if Redis lost it); it gives up on a stream
whose producer is gone (no ``live`` heartbeat), whose entries skip a number, or that stays
unreadable past that window, raising ``LostStream``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from backends.base import Event
from gateway.upstream.flight import ABANDONED
from gateway.upstream.outage import Outage
from gateway.upstream.stores import REDIS_ERRORS, is_key_problem
from gateway.upstream.streams import (
    LostStream,
    Origin,
    Reading,
    decode,
    encode,
    event_of,
    is_end,
    is_stream_id,
)

if TYPE_CHECKING:
    from gateway.upstream.redis_journal import RedisJournal, StreamKeys

Entry = tuple[str, dict[str, Any]]


class StreamReader:
    """Reads a ``RedisJournal``'s streams; a reader of a live one counts among its followers."""

    def __init__(self, journal: RedisJournal) -> None:
        self.journal = journal

    async def follow(self, stream_id: str, timeout_s: float, finished: bool) -> Reading | None:
        cursor = _Cursor(self.journal, self.journal.keys(stream_id))
        await cursor.count()
        handed = False
        try:
            async with asyncio.timeout(timeout_s):
                opened = await self._open(cursor, 0, wait=True)
                if opened is None:
                    raise _LostError("no such stream, or its producer died")
                origin, ready, last = opened
                end = ready[-1] if ready and is_end(ready[-1][0]) else None
                if end is not None and (not finished or end[1].get("code") == ABANDONED):
                    raise _LostError("finished")  # not to be replayed, or abandoned
                batches = self._batches(cursor, ready, last, count_live=False)
                first = await anext(batches)  # from here on, ``batches`` uncounts itself
                handed = True
        except (TimeoutError, StopAsyncIteration, _LostError, LostStream):
            return None  # nobody is answering after all: answer it here
        finally:
            if not handed:
                await cursor.uncount()
        return Reading(origin, _prepend(first, batches))

    async def read(self, stream_id: str, after: int) -> Reading | None:
        if not is_stream_id(stream_id):
            return None
        cursor = _Cursor(self.journal, self.journal.keys(stream_id))
        opened = await self._open(cursor, after)
        if opened is None:
            return None
        origin, ready, last = opened
        return Reading(origin, self._batches(cursor, ready, last, count_live=True))

    async def _open(
        self, cursor: _Cursor, after: int, wait: bool = False
    ) -> tuple[Origin, list[Entry], bytes] | None:
        """The stream's origin, its entries after ``after`` (one round trip) and the id of
        the last; with ``wait``, a live stream's first entries are waited for. None if it is
        gone, or unfinished with no producer (its ``live`` key expired)."""
        keys = cursor.keys

        async def first() -> list[Any]:
            async with self.journal.redis.pipeline(transaction=False) as pipe:
                pipe.xrange(keys.events, "1-0", "1-0")
                pipe.xrange(keys.events, f"(1-{max(after, 0)}", "+", count=512)
                pipe.xrevrange(keys.events, "+", "-", count=1)
                pipe.exists(keys.live)
                return list(await pipe.execute())

        replies: list[Any] = await self.journal.call(first, [], keys.events)
        if not replies:
            return None
        meta, messages, tail, live = replies
        try:
            if not live and not (tail and is_end(decode(tail[0][1][b"e"])[0])):
                return None  # never was, or its producer died before the end
            if not meta and wait:
                entries, last = await self._next(cursor, b"0-0")  # the origin comes first
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
        self, cursor: _Cursor, ready: list[Entry], last: bytes, count_live: bool
    ) -> AsyncGenerator[Sequence[Event], None]:
        """The events of ``ready`` and those after ``last``, up to the end; with
        ``count_live``, the reader counts among the followers while it reads a live stream."""
        if count_live and not (ready and is_end(ready[-1][0])):
            await cursor.count()
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
                ready, last = await self._next(cursor, last)
        except _LostError as lost:
            raise LostStream("unavailable", f"lost the answer stream: {lost}") from None
        finally:
            await cursor.uncount()

    async def _next(self, cursor: _Cursor, last: bytes) -> tuple[list[Entry], bytes]:
        """The entries after ``last`` once there are some; ``_LostError`` if the instance
        answering is gone, the stream is corrupt or skips an entry, or Redis stays down past
        ``recover_s`` (not gated by the breaker: a reader has no other source)."""
        journal, keys = self.journal, cursor.keys
        while True:
            failure: Exception
            try:
                reply: Any = await journal.blocking.xread(
                    {keys.events: last}, count=256, block=journal.block_ms
                )
                if (
                    not reply
                    and not await journal.blocking.exists(keys.live)
                    and cursor.outage.quiet_for(journal.live_s)  # else: not heartbeating yet
                ):
                    raise _LostError("the instance answering it is gone")
                messages = reply[0][1] if reply else []
                entries = [decode(fields[b"e"]) for _, fields in messages]
            except (ResponseError, ValueError, TypeError, KeyError) as error:
                if isinstance(error, ResponseError) and not is_key_problem(error):
                    failure = error
                else:
                    await journal.bad(error, keys.events)
                    raise _LostError("its stream was corrupt") from None
            except REDIS_ERRORS as error:
                failure = error
            else:
                await cursor.answered()
                if not entries:
                    continue
                expected = range(seq_of(last) + 1, seq_of(last) + 1 + len(messages))
                if [seq_of(entry_id) for entry_id, _ in messages] != list(expected):
                    raise _LostError("entries are missing")
                return entries, messages[-1][0]
            journal.breaker.failed(failure)
            wait = cursor.outage.failed()
            if wait is None:
                raise _LostError("Redis is unavailable")
            await asyncio.sleep(wait)


class _Cursor:
    """One reader of one stream: how it fares with Redis, and how many times it counted
    itself among the stream's followers (again after an outage: Redis may have lost it)."""

    def __init__(self, journal: RedisJournal, keys: StreamKeys) -> None:
        self.journal = journal
        self.keys = keys
        self.outage = Outage(journal.recover_s)
        self.counted = 0

    async def count(self, gated: bool = True) -> None:
        journal, keys = self.journal, self.keys
        counted = await journal.call(
            lambda: journal.count(keys, +1), None, keys.followers, gated=gated
        )
        self.counted += counted is not None

    async def uncount(self) -> None:
        journal, keys, step = self.journal, self.keys, -self.counted
        if step:
            self.counted = 0
            await journal.call(lambda: journal.count(keys, step), None, keys.followers)

    async def answered(self) -> None:
        """Redis answered a read; after an outage, a counted reader counts itself again."""
        if self.outage.succeeded() and self.counted:
            await self.count(gated=False)


class _LostError(Exception):
    """The stream can no longer be followed."""


def seq_of(entry_id: bytes) -> int:
    """The sequence number of a stream entry id ``1-<seq>`` (-1 for ``0-0``, before all)."""
    major, _, minor = entry_id.partition(b"-")
    return int(minor) if major == b"1" else -1


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
