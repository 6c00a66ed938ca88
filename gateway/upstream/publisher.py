"""Publishing a flight's answer stream to Redis as it goes (``RedisJournal.recorder``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from backends.base import BackendError, Event
from gateway.upstream.flight import Flight
from gateway.upstream.stores import is_key_problem
from gateway.upstream.streams import ResumeSettings, encode, encode_end, encode_event

if TYPE_CHECKING:
    from gateway.upstream.redis_journal import RedisJournal

log = logging.getLogger("gateway.streams")


class Publisher:
    """Appends a flight's events to its stream in batches: whatever is ready goes in one
    round trip, as entry ``1-<seq>``.

    Between events it refreshes the ``live`` heartbeat readers check; after each round trip
    it knows how many readers elsewhere follow, and lets ``flight`` give up when none do.
    Past ``max_events``/``max_bytes`` it deletes the stream (and the question's pointer):
    the answer goes on for this instance's clients only.
    """

    def __init__(
        self, journal: RedisJournal, flight: Flight, key: str | None, settings: ResumeSettings
    ) -> None:
        self.journal = journal
        self.keys = journal.keys(flight.stream_id)
        self.key = key
        self.settings = settings
        self.capped = False
        self.remote_followers = 0
        """As of the last round trip."""
        self._seq = 0
        self.size = 0
        self._sends = 0
        self._recount_after: int | None = None
        self._pending: list[tuple[int, bytes]] = []
        self._end: tuple[bytes, float | None] | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._failed = False
        self._flight = flight
        self._task = asyncio.create_task(self._run())

    def followed_elsewhere(self) -> bool:
        """Asked once the detach window is over. The follower count may predate a new
        follower (before the first event it is never refreshed), so the call goes on for one
        more round trip, which recounts and asks again."""
        if self._failed or self.capped:
            return False  # nobody elsewhere can follow
        if self._recount_after is None:
            self._recount_after = self._sends
            self._ready.set()
            return True
        if self._sends == self._recount_after:
            return True  # the recount is on its way
        self._recount_after = None
        return self.remote_followers > 0

    def push(self, event: Event) -> None:
        """Publish ``event`` with the next round trip."""
        self._origin_first()
        self._seq += 1
        self._add(self._seq, encode_event(event))

    async def finish(self, end: Event | BackendError, cache_ttl_s: float | None) -> None:
        """Publish the end (followers elsewhere get the same error, even one before the first
        event), wait for the last batch, then leave the stream for ``keep_s`` (or, with
        ``cache_ttl_s``, as the question's cached answer)."""
        self._origin_first()
        self._seq += 1
        self._end = (encode_end(end), cache_ttl_s)
        self._add(self._seq, self._end[0])
        self._closing = True
        self._ready.set()
        await self._task
        await self.journal.call(partial(self._close, cache_ttl_s), None, self.keys.events)

    def _origin_first(self) -> None:
        if not self._seq:  # entry 0: whose stream it is, and who answered
            self._pending.append((0, encode("meta", self._flight.owner().body())))

    def _add(self, seq: int, entry: bytes) -> None:
        if self.capped:
            return
        self.size += len(entry)
        if self._seq > self.settings.max_events or self.size > self.settings.max_bytes:
            self.capped = True
            self._pending.clear()
            log.warning(
                "answer stream %s too long: not resumable or cached", self._flight.stream_id
            )
        else:
            self._pending.append((seq, entry))
        self._ready.set()

    async def _run(self) -> None:
        journal = self.journal
        while True:
            # Wake for events, or to refresh the heartbeat readers check.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(journal.lock_ttl_ms / 3000):
                    await self._ready.wait()
            self._ready.clear()
            if self.capped:
                return
            batch, self._pending = self._pending, []
            if not await journal.call(partial(self._send, batch), False, self.keys.events):
                self._failed = True  # readers elsewhere time out and answer on their own
                if not self._closing:
                    self._flight.abandon_if_unfollowed()
                return
            self._sends += 1
            if self._closing:
                if not self._pending:
                    return
            else:
                if self.remote_followers:
                    self._flight.followed()
                self._flight.abandon_if_unfollowed()

    async def _send(self, batch: list[tuple[int, bytes]]) -> bool:
        keys, journal = self.keys, self.journal
        async with journal.redis.pipeline(transaction=False) as pipe:
            for seq, entry in batch:
                fields = {"e": entry}
                if self._end is not None and entry is self._end[0] and self._end[1] is not None:
                    fields["c"] = b"1"  # the end of a cached answer
                pipe.xadd(keys.events, fields, id=f"1-{seq}")
            pipe.pexpire(keys.events, journal.keep_ms)
            pipe.set(keys.live, b"1", px=journal.lock_ttl_ms)
            pipe.get(keys.followers)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, ResponseError) and is_key_problem(reply):
                raise reply  # the stream (or its count) holds garbage: ``call`` deletes it
            if isinstance(reply, Exception):
                raise reply
        self.remote_followers = journal.followers(keys, replies[-1])
        return True

    async def _close(self, cache_ttl_s: float | None) -> None:
        keys, journal = self.keys, self.journal
        async with journal.redis.pipeline(transaction=False) as pipe:
            if self.key is not None:
                if cache_ttl_s is not None and not self.capped:
                    pipe.set(self.key, self._flight.stream_id, px=int(cache_ttl_s * 1000))
                else:
                    pipe.delete(self.key)  # a failed attempt is never found again
            if self.capped:
                pipe.delete(keys.events)
            else:
                ttl_s = cache_ttl_s or self.settings.keep_s
                pipe.pexpire(keys.events, int(ttl_s * 1000))
            pipe.delete(keys.live)
            await pipe.execute()
