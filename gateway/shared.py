"""Single flight across gateway instances sharing one Redis.

The instance that takes ``{key}:lock`` calls the upstream and publishes the events to the
stream ``{key}:events``; any other instance asking meanwhile follows that stream (from its
start, so late joiners miss nothing) instead of calling the upstream again. Followers count
themselves in ``{key}:followers`` so the caller keeps going while anyone still listens.
Every key expires; Redis trouble means each instance answers on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Sequence
from functools import partial
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from backends.base import Backend, BackendError, Event, PermanentError, TransientError
from gateway.flight import ABANDONED, Flight
from gateway.stores import Breaker
from gateway.upstream import Answer
from gateway.wire import error_body, event_body, event_from_body

Entry = tuple[str, dict[str, object]]


class SharedFlights:
    """Claims, publishes and follows flights in Redis."""

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
        taken = await self.breaker.call(
            lambda: self.redis.set(f"{key}:lock", b"1", nx=True, px=self.lock_ttl_ms), True
        )
        return bool(taken)

    def publish(self, key: str, flight: Flight) -> Publisher:
        """Publish ``flight``'s events under ``key`` as they arrive."""
        return Publisher(self, key, flight)

    async def follow(
        self, key: str, backends: Callable[[str], Backend], first_event_s: float
    ) -> Answer | None:
        """The answer another instance is producing, or None if none shows up in time or
        the one found was abandoned (then this instance answers it itself)."""
        counted = await self.breaker.call(lambda: self._count_follower(key, +1), None)
        if counted is None:
            return None
        batches = self._batches(key)
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
                            backend = backends(str(body["backend"]))
                        else:
                            first = _event(kind, body)  # raises the error the other one got
                    if first is not None:
                        break
        except BaseException as error:
            await batches.aclose()
            await self.breaker.call(lambda: self._count_follower(key, -1), None)
            if isinstance(error, TimeoutError | _Lost):
                return None  # nobody is answering after all: answer it here
            raise
        assert backend is not None and first is not None
        rest = None if first.type == "done" else batch  # an answer can be its ``done`` alone
        return Answer(backend, first, self._rest(key, rest, batches))

    async def _rest(
        self, key: str, ready: list[Entry] | None, batches: AsyncGenerator[list[Entry], None]
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
            await self.breaker.call(lambda: self._count_follower(key, -1), None)

    async def _batches(self, key: str) -> AsyncGenerator[list[Entry], None]:
        """The flight's entries from the first, as many as each read brings; ``_Lost`` if
        Redis or the caller goes away."""
        last: bytes = b"0-0"
        while True:  # not gated by the breaker: a follower has no other source
            try:
                reply: Any = await self.reader.xread(
                    {f"{key}:events": last}, count=256, block=self.block_ms
                )
                if not reply and not await self.reader.exists(f"{key}:lock"):
                    raise _Lost("the instance answering it is gone")
            except (RedisError, OSError, TimeoutError) as error:
                self.breaker.failed(error)
                raise _Lost("Redis is unavailable") from None
            for _, messages in reply:
                last = messages[-1][0]
                yield [orjson.loads(fields[b"e"]) for _, fields in messages]

    async def _count_follower(self, key: str, step: int) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incrby(f"{key}:followers", step)
            pipe.pexpire(f"{key}:followers", self.stream_ttl_ms)
            count, _ = await pipe.execute()
        return int(count)


class _Lost(Exception):
    """The shared answer can no longer be followed."""


class Publisher:
    """Sends a flight's events to Redis in batches: whatever is ready goes in one round trip."""

    def __init__(self, shared: SharedFlights, key: str, flight: Flight) -> None:
        self.shared = shared
        self.key = key
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
        flight.on_event = self._on_event
        flight.keep_alive = self._followed_elsewhere
        self._task = asyncio.create_task(self._run())

    def _followed_elsewhere(self) -> bool:
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

    def _on_event(self, event: Event) -> None:
        self._push(event.type, event_body(event))

    def _push_meta_once(self) -> None:
        if not self._meta_sent and self._flight.backend is not None:
            self._meta_sent = True
            self._pending.append(orjson.dumps(["meta", {"backend": self._flight.backend.name}]))

    def _push(self, kind: str, body: dict[str, object]) -> None:
        self._push_meta_once()
        self._pending.append(orjson.dumps([kind, body]))
        self._ready.set()

    async def finish(self, end: Event | BackendError) -> None:
        """Publish the end (``done`` or an error), wait for the last batch, release the lock."""
        if isinstance(end, BackendError):
            self._push("error", error_body(end.code, end.message, end.retryable))
        else:
            self._push(end.type, event_body(end))
        self._closing = True
        self._ready.set()
        await self._task
        await self.shared.breaker.call(lambda: self.shared.redis.delete(f"{self.key}:lock"), 0)

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
        shared, key = self.shared, self.key
        async with shared.redis.pipeline(transaction=False) as pipe:
            for item in batch:
                pipe.xadd(f"{key}:events", {"e": item})
            pipe.pexpire(f"{key}:events", shared.stream_ttl_ms)
            pipe.pexpire(f"{key}:lock", shared.lock_ttl_ms)
            pipe.get(f"{key}:followers")
            replies = await pipe.execute()
        self.remote_followers = int(replies[-1] or 0)
        return True


def _event(kind: str, body: dict[str, object]) -> Event:
    if kind == "error":  # as retryable as it was where it happened
        error = TransientError if body["retryable"] else PermanentError
        raise error(str(body["code"]), str(body["message"]))
    return event_from_body(kind, body)
