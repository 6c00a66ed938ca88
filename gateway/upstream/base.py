"""The gateway's view of a backend: ``open`` a request and get an ``Answer`` once its first
event has arrived (peek, then commit). Retry, fallback and cache wrap an ``Upstream``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from backends.base import Backend, Event, QARequest, TransientError
from gateway.upstream.trace import Trace


@dataclass(frozen=True, slots=True)
class Principal:
    """Who asks: an API key's name or a token's subject, and the tenant it belongs to.

    Answers (cache entries, flights, answer streams) are shared within a tenant and never
    across; a stream is resumed only by the principal that started it.
    """

    name: str
    tenant: str


@dataclass(frozen=True, slots=True)
class Ask:
    """A question as the gateway handles it: the backend's request plus gateway options."""

    request: QARequest
    principal: Principal = Principal("anonymous", "default")
    """Who asks; its tenant owns the cache entries this question may read and write."""
    cache_read: bool = True
    """False for ``Cache-Control: no-cache``: answer afresh (and refresh the entry)."""
    cache_write: bool = True
    """False for ``Cache-Control: no-store``: keep no copy of the answer."""
    trace: Trace = field(default_factory=Trace, compare=False)
    """Where the layers note what they did (attempts, errors, coalescing)."""


@dataclass(slots=True)
class Answer:
    """A started answer: its first event, the rest to come, and who gave it."""

    backend: Backend
    first: Event
    rest: AsyncGenerator[Sequence[Event], None]
    """The events after ``first``, in batches of those that were ready together (so they
    can go out in one write)."""
    cache: str = "BYPASS"
    """``HIT`` (replayed), ``MISS`` (looked up, then generated) or ``BYPASS`` (not cached)."""
    release: Callable[[], Awaitable[None]] | None = None
    """Frees what the answer holds even if ``rest`` was never read (closing an async
    generator that never started runs none of its ``finally`` blocks)."""
    stream_id: str = ""
    """The id of the answer stream it is read from (for a resume); empty: none."""

    async def aclose(self) -> None:
        """Stop the answer early, read or not: the upstream call is cancelled."""
        await self.rest.aclose()
        if self.release is not None:
            await self.release()


class Upstream(Protocol):
    """Anything that opens answers: a backend, or a wrapper around one."""

    async def open(self, ask: Ask) -> Answer:
        """Start answering; raises ``BackendError`` if the answer cannot start."""
        ...


class Direct:
    """A backend as an ``Upstream``, with no policy around it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def open(self, ask: Ask) -> Answer:
        events = self.backend.stream(ask.request)
        try:
            first = await anext(events)
        except StopAsyncIteration:
            raise TransientError("internal", "the upstream ended without answering") from None
        except BaseException:
            await events.aclose()
            raise
        return Answer(self.backend, first, _one_by_one(events), release=events.aclose)


async def _one_by_one(events: AsyncGenerator[Event, None]) -> AsyncGenerator[Sequence[Event], None]:
    try:
        async for event in events:
            yield (event,)
    finally:
        await events.aclose()  # closing the answer cancels the upstream call
