"""The answer cache and single flight, over answer streams.

``Cached`` wraps a backend's upstream chain (``Cached(Fallback(Retrying(...)))``). Every
answer it opens is an answer stream with its own id. A question that may be shared (caching
on, no session) has a key: a hit replays the finished stream it points at; a miss joins the
flight of the same question here, or claims the question in the journal (following the
stream another instance produces for it), so identical questions cost one upstream call.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from pydantic import BaseModel, ConfigDict, Field

from backends.base import Backend, Event
from gateway.upstream.attempt import Attempt, Attempts
from gateway.upstream.base import Answer, Ask, Upstream
from gateway.upstream.entries import (
    BackendCachePolicy,
    cache_key,
    identity_of,
    unowned,
    without_session,
)
from gateway.upstream.flight import Flight
from gateway.upstream.flights import Flights
from gateway.upstream.streams import Journal, Origin, ResumeSettings, new_stream_id


class CacheSettings(BaseModel):
    """``[cache]``: where and how answers are cached (Redis itself: ``redis_url``)."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = "qa:"
    """Every Redis key starts with this."""
    tenant: str = "default"
    """The tenant of requests that carry none of their own (no auth configured)."""
    memory_max_entries: int = Field(10_000, gt=0)
    """Without Redis: the in-process store keeps at most this many answers (and streams)..."""
    memory_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    """...and this many bytes of them, dropping the least recently used first."""
    connect_timeout_s: float = Field(0.5, gt=0)
    command_timeout_s: float = Field(0.1, gt=0)
    """A Redis call slower than this counts as a failure (and reads as a miss)."""
    breaker_s: float = Field(5.0, gt=0)
    """After a Redis failure, skip Redis for this long."""
    heartbeat_s: float = Field(1.0, gt=0)
    """An instance producing a stream says so this often; twice this after its last word
    (a crash), followers elsewhere answer afresh and new askers take the question over."""
    recover_s: float = Field(3.0, gt=0)
    """Readers and producers of a live stream retry through a Redis outage this long; past
    it a follower answers afresh (going on from what its clients have)."""


class Cached:
    """Opens every answer of one backend as an answer stream: replayed, joined or asked."""

    def __init__(
        self,
        inner: Upstream,
        answerers: Sequence[Backend],
        policy: BackendCachePolicy,
        settings: CacheSettings,
        journal: Journal,
        flights: Flights,
        resume: ResumeSettings,
        first_event_s: float,
    ) -> None:
        """``answerers``: the backend this cache is for, then those ``inner`` falls back on."""
        self.backend = answerers[0]
        self.policy = policy
        self.prefix = settings.prefix
        self.identity = identity_of(self.backend)
        self.journal = journal
        self.flights = flights
        self.resume = resume
        self.attempts = Attempts(inner, answerers, policy, journal, resume, first_event_s)

    def key_of(self, ask: Ask) -> str | None:
        """The question's key if it may be shared and cached (caching on, no session)."""
        if not self.policy.cache or ask.request.session_id is not None:
            return None  # follow-up turns depend on the conversation
        question = ask.request
        return cache_key(
            self.prefix,
            self.identity,
            question.query,
            ask.principal.tenant,
            question.history,
            question.parameters(),
        )

    async def current(self, ask: Ask) -> str | None:
        """The id of the stream answering (or that answered) ``ask``'s question, if any."""
        key = self.key_of(ask)
        if key is None:
            return None
        flight = self.flights.flying(key)
        return flight.stream_id if flight is not None else await self.journal.current(key)

    async def open(self, ask: Ask) -> Answer:
        key = self.key_of(ask)
        if key is None:
            answer = await self._start(None, ask).join()
            answer.cache = "BYPASS"
            return answer
        if ask.cache_read:
            hit = await self.journal.lookup(key)
            if hit is not None:
                return replay(self.backend, *hit)
        attempt = Attempt(key, ask, self.attempts)
        flight, joined = await self.flights.board(key, lambda: self._start(key, ask, attempt))
        if joined:
            ask.trace.coalesced = True
        answer = await flight.join()
        if joined or attempt.recorder is None:  # another asker's call: not this one's session
            answer = without_session(answer)
        answer.cache = "MISS" if ask.cache_read else "BYPASS"
        return answer

    def _start(self, key: str | None, ask: Ask, attempt: Attempt | None = None) -> Flight:
        def origin(backend: Backend | None) -> Origin:
            name = (backend or self.backend).name
            return Origin(name, ask.principal, shared=key is not None)

        source = attempt or Attempt(key, ask, self.attempts)
        return Flight(source, self.flights, key, new_stream_id(), self.resume.detach_s, origin)


def replay(backend: Backend, stream_id: str, origin: Origin, events: list[Event]) -> Answer:
    """A cached answer stream as a started answer (``HIT``): the rest comes in one batch. The
    session id is left out: it is the first asker's own."""
    events = [*events[:-1], unowned(events[-1])]

    async def rest() -> AsyncGenerator[Sequence[Event], None]:
        if len(events) > 1:
            yield events[1:]

    return Answer(backend, events[0], rest(), "HIT", stream_id=stream_id)
