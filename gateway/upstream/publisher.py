"""Publishing a flight's answer stream to Redis as it goes (``RedisJournal.recorder``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from backends.base import BackendError, Event
from gateway.upstream.flight import Flight
from gateway.upstream.outage import Outage
from gateway.upstream.redis_reader import seq_of
from gateway.upstream.streams import ResumeSettings, encode, encode_end, encode_event

if TYPE_CHECKING:
    from gateway.upstream.redis_journal import RedisJournal

log = logging.getLogger("gateway.streams")


LET_GO = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
"""Forget the question (KEYS[1]) if it still names stream ARGV[1] (not one that took over)."""


class Publisher:
    """Appends a flight's events to its stream in batches: whatever is ready goes in one
    round trip, as entry ``1-<seq>``.

    Between events it refreshes the ``live`` heartbeat readers check (every
    ``heartbeat_s``); after each round trip it knows how many readers elsewhere follow, and
    lets ``flight`` give up when none do. Once a round trip has worked (someone may follow),
    a failed write is retried for ``recover_s``, after asking Redis what it still holds:
    all that is missing goes again (everything, after a restart that lost it), so readers get
    every entry in order. Past ``max_events``/``max_bytes`` it deletes the stream (and the
    question's pointer): the answer goes on for this instance's clients only.
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
        self.size = 0
        self._entries: list[bytes] = []
        """The stream by sequence number (0: the origin), kept to write again what Redis lost."""
        self._published = 0
        """How many of ``_entries`` Redis holds, as far as this publisher knows."""
        self._resync = False
        """A write failed: ask Redis how many it holds before the next."""
        self._cached_end: int | None = None
        """The sequence number of a cached answer's end."""
        self._sends = 0
        self._recount_after: int | None = None
        self._ready = asyncio.Event()
        self._closing = False
        self._failed = False
        self._outage = Outage(journal.recover_s)
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
        self._add(encode_event(event))

    async def finish(self, end: Event | BackendError, cache_ttl_s: float | None) -> None:
        """Publish the end (followers elsewhere get the same error, even one before the first
        event), wait for the last batch (through an outage, up to ``recover_s``), then leave
        the stream for ``keep_s`` (or, with ``cache_ttl_s``, as the question's cached answer)."""
        self._add(encode_end(end))
        if cache_ttl_s is not None and self._entries:
            self._cached_end = len(self._entries) - 1
        self._closing = True
        self._ready.set()
        await self._task
        if self._failed:
            cache_ttl_s = None  # what Redis holds is not the whole answer: not one to keep
        close = partial(self._close, cache_ttl_s)
        await self.journal.call(close, None, self.keys.events, gated=not self._sends)

    def _add(self, entry: bytes) -> None:
        if self.capped:
            return
        if not self._entries:  # entry 0: whose stream it is, and who answered
            self._entries.append(encode("meta", self._flight.owner().body()))
        self.size += len(entry)
        if len(self._entries) > self.settings.max_events or self.size > self.settings.max_bytes:
            self.capped = True
            self._entries.clear()
            log.warning(
                "answer stream %s too long: not resumable or cached", self._flight.stream_id
            )
        else:
            self._entries.append(entry)
        self._ready.set()

    async def _run(self) -> None:
        while True:
            # Wake for events, or to refresh the heartbeat readers check.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.journal.heartbeat_s):
                    await self._ready.wait()
            self._ready.clear()
            if self.capped:
                return
            if not await self._publish():
                self._failed = True  # readers elsewhere notice, and answer on their own
                if not self._closing:
                    self._flight.abandon_if_unfollowed()
                return
            self._sends += 1
            if self._closing:
                if self._published == len(self._entries):
                    return
            else:
                if self.remote_followers:
                    self._flight.followed()
                self._flight.abandon_if_unfollowed()

    async def _publish(self) -> bool:
        """One round trip; after one has worked (someone may follow), retried through an
        outage of up to ``recover_s``. False: Redis is failing (and nobody can be following
        yet), or still is after that."""
        while True:
            gated = not self._sends
            sent = await self.journal.call(self._send, False, self.keys.events, gated=gated)
            if sent:
                self._outage.succeeded()
                return True
            self._resync = True
            wait = self._outage.failed()
            if gated or wait is None:
                return False
            await asyncio.sleep(wait)

    async def _send(self) -> bool:
        keys, journal = self.keys, self.journal
        if self._resync:  # what Redis holds after a failure: maybe all, maybe nothing
            tail = await journal.redis.xrevrange(keys.events, "+", "-", count=1)
            self._published = seq_of(tail[0][0]) + 1 if tail else 0
            self._resync = False
        start = self._published
        batch = self._entries[start:]
        async with journal.redis.pipeline(transaction=False) as pipe:
            for seq, entry in enumerate(batch, start):
                fields = {"e": entry} | ({"c": b"1"} if seq == self._cached_end else {})
                pipe.xadd(keys.events, fields, id=f"1-{seq}")
            pipe.pexpire(keys.events, journal.keep_ms)
            pipe.set(keys.live, b"1", px=journal.live_ms)
            pipe.get(keys.followers)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply  # garbage in the stream or its count (``call`` deletes it), or Redis
        self._published = start + len(batch)
        self.remote_followers = journal.followers(keys, replies[-1])
        return True

    async def _close(self, cache_ttl_s: float | None) -> None:
        keys, journal = self.keys, self.journal
        async with journal.redis.pipeline(transaction=False) as pipe:
            if self.key is not None:
                if cache_ttl_s is not None and not self.capped:
                    pipe.set(self.key, self._flight.stream_id, px=int(cache_ttl_s * 1000))
                else:  # a failed attempt is never found again
                    pipe.eval(LET_GO, 1, self.key, self._flight.stream_id)
            if self.capped:
                pipe.delete(keys.events)
            else:
                ttl_s = cache_ttl_s or self.settings.keep_s
                pipe.pexpire(keys.events, int(ttl_s * 1000))
            pipe.delete(keys.live)
            await pipe.execute()
