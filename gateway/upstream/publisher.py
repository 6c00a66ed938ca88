"""Publishing a flight to Redis, for the instances that follow it (``SharedFlights.follow``)."""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial

import orjson

from backends.base import BackendError, Event
from gateway.events import error_body, event_body
from gateway.upstream.flight import Flight
from gateway.upstream.shared import FlightKeys, SharedFlights


class Publisher:
    """Sends a flight's events to Redis in batches: whatever is ready goes in one round trip.

    Between events it refreshes the lock (the heartbeat followers check); after each round
    trip it knows how many clients elsewhere follow, and lets ``flight`` give up when none do.
    """

    def __init__(self, shared: SharedFlights, key: str, flight: Flight) -> None:
        self.shared = shared
        self.keys = FlightKeys.of(key)
        self.remote_followers = 0
        """As of the last round trip."""
        self._sends = 0
        self._recount_after: int | None = None
        self._pending: list[bytes] = []
        self._ready = asyncio.Event()
        self._closing = False
        self._failed = False
        self._meta_sent = False
        self._flight = flight
        self._task = asyncio.create_task(self._run())

    def followed_elsewhere(self) -> bool:
        """Asked once the last local client has left. The follower count may predate a new
        follower (before the first event it is never refreshed), so the call goes on for one
        more round trip, which recounts and asks again."""
        if self._failed:
            return False  # Redis failed: nobody elsewhere can follow
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
        self._push(event.type, event_body(event))

    async def finish(self, end: Event | BackendError) -> None:
        """Publish the end (``done`` or an error), wait for the last batch, release the lock."""
        if isinstance(end, BackendError):
            self._push("error", error_body(end.code, end.message, end.retryable))
        else:
            self._push(end.type, event_body(end))
        self._closing = True
        self._ready.set()
        await self._task
        lock = self.keys.lock
        await self.shared.breaker.call(lambda: self.shared.redis.delete(lock), 0)

    def _push(self, kind: str, body: dict[str, object]) -> None:
        if not self._meta_sent and self._flight.backend is not None:
            self._meta_sent = True
            self._pending.append(orjson.dumps(["meta", {"backend": self._flight.backend.name}]))
        self._pending.append(orjson.dumps([kind, body]))
        self._ready.set()

    async def _run(self) -> None:
        shared = self.shared
        while True:
            # Wake for events, or to refresh the lock (the heartbeat followers check).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(shared.lock_ttl_ms / 3000):
                    await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, []
            if not await shared.breaker.call(partial(self._send, batch), False):
                self._failed = True  # followers time out and answer on their own
                if not self._closing:
                    self._flight.abandon_if_unfollowed()
                return
            self._sends += 1
            if self._closing:
                if not self._pending:
                    return
            else:
                self._flight.abandon_if_unfollowed()

    async def _send(self, batch: list[bytes]) -> bool:
        shared, keys = self.shared, self.keys
        async with shared.redis.pipeline(transaction=False) as pipe:
            for item in batch:
                pipe.xadd(keys.events, {"e": item})
            pipe.pexpire(keys.events, shared.stream_ttl_ms)
            pipe.pexpire(keys.lock, shared.lock_ttl_ms)
            pipe.get(keys.followers)
            replies = await pipe.execute()
        self.remote_followers = int(replies[-1] or 0)
        return True
