"""One attempt at answering, as a flight's ``Source``: it opens the question's answer stream.

With a question key (a question that may be shared), it claims the question in the journal
or follows the stream another instance is producing for it (a stream it cannot follow, its
producer dead, it takes the question over from); what it calls the upstream for it records as
it goes (``Recorder``); at the end the stream is kept, as the question's cached answer when it
is complete and cacheable. A followed stream that breaks off (its producer died, Redis stayed
down, or it was abandoned) is answered afresh here, going on from what the clients have.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from backends.base import Backend, BackendError, Done, Event, TransientError
from gateway.upstream.base import Answer, Ask, Upstream
from gateway.upstream.entries import BackendCachePolicy
from gateway.upstream.flight import ABANDONED, Flight
from gateway.upstream.splice import Seen, beyond
from gateway.upstream.streams import Journal, LostStream, Reading, Recorder, ResumeSettings

log = logging.getLogger("gateway.streams")
NORMAL_FINISH = frozenset({"stop", "max_tokens"})
"""Answers that end so are stored (skipped ones only with ``cache_skipped``)."""
FOLLOWS = 3
"""Streams an asker tries to follow (each taken over from the one before) before it answers
without the question's pointer."""


@dataclass(frozen=True, slots=True)
class Attempts:
    """What every attempt of one backend works with."""

    inner: Upstream
    answerers: Sequence[Backend]
    """The backend the cache is for, then its fallbacks: who may have answered elsewhere."""
    policy: BackendCachePolicy
    journal: Journal
    settings: ResumeSettings
    first_event_s: float
    """How long to wait for another instance's first event before answering here."""


class Attempt:
    """One flight's answer: from the upstream, or followed from another instance."""

    def __init__(self, key: str | None, ask: Ask, attempts: Attempts) -> None:
        """``key``: the question's, when it may be shared and cached; else None."""
        self.key = key
        self.ask = ask
        self.attempts = attempts
        self.recorder: Recorder | None = None
        """Set when this instance answers (it keeps the stream)."""

    async def open(self, flight: Flight) -> Answer:
        attempts, key = self.attempts, self.key
        if key is not None:
            current = await attempts.journal.claim(key, flight.stream_id)
            for _ in range(FOLLOWS):
                if current is None:
                    break
                following = await self._follow(flight, current)
                if following is not None:
                    return following
                current = await attempts.journal.take(key, flight.stream_id, current)
        self.recorder = attempts.journal.recorder(flight, key, attempts.settings)
        return await attempts.inner.open(self.ask)

    async def _follow(self, flight: Flight, stream_id: str) -> Answer | None:
        """The answer of stream ``stream_id``, produced elsewhere by one of the answerers."""
        attempts = self.attempts
        reading = await attempts.journal.follow(
            stream_id, attempts.first_event_s, finished=self.ask.cache_read
        )
        by_name = {backend.name: backend for backend in attempts.answerers}
        backend = by_name.get(reading.origin.backend) if reading is not None else None
        if reading is None or backend is None:
            if reading is not None:
                await reading.batches.aclose()
            return None
        first = await anext(reading.batches)
        flight.rename(stream_id)  # the clients here read the stream they joined
        self.ask.trace.coalesced = True
        return Answer(backend, first[0], self._rest(first, reading), release=reading.batches.aclose)

    async def _rest(
        self, first: Sequence[Event], reading: Reading
    ) -> AsyncGenerator[Sequence[Event], None]:
        """The followed stream after ``first``; if it breaks off, a fresh answer beyond
        what it gave."""
        seen = Seen()
        seen.note(first)
        try:
            if len(first) > 1:
                yield first[1:]
            async for batch in reading.batches:
                seen.note(batch)
                yield batch
            return
        except BackendError as error:
            if not (isinstance(error, LostStream) or error.code == ABANDONED):
                raise  # the answer's own end, the same for every client
            log.warning("followed answer stream broke off (%s): answering afresh", error.message)
        finally:
            await reading.batches.aclose()
        async with aclosing(beyond(await self.attempts.inner.open(self.ask), seen)) as batches:
            async for batch in batches:
                yield batch

    def on_event(self, event: Event) -> None:
        if self.recorder is not None:
            self.recorder.push(event)

    def resumable(self) -> bool:
        return self.recorder is None or not self.recorder.capped

    def followed_elsewhere(self) -> bool:
        return self.recorder is not None and self.recorder.followed_elsewhere()

    async def on_end(self, flight: Flight) -> None:
        if self.recorder is None:
            return  # followed: the instance that answered keeps the stream
        end = flight.events[-1] if flight.complete else flight.error
        cache_ttl_s = self.attempts.policy.cache_ttl_s if self._cacheable(flight) else None
        await self.recorder.finish(end or TransientError("aborted", "no answer"), cache_ttl_s)

    def _cacheable(self, flight: Flight) -> bool:
        assert self.recorder is not None
        policy = self.attempts.policy
        if self.key is None or not self.ask.cache_write:
            return False
        if self.recorder.size > policy.cache_max_entry_bytes:
            return False
        if not flight.complete or flight.backend is not self.attempts.answerers[0]:
            return False  # cut short, failed, or answered by a fallback
        done = flight.events[-1]
        assert isinstance(done, Done)
        return done.finish_reason in NORMAL_FINISH or (
            done.finish_reason == "skipped" and policy.cache_skipped
        )
