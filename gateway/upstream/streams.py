"""Answer streams: one answer is one stream of its events, under an id of its own.

A stream is ``meta`` (entry 0: its ``Origin``) then the answer's events, numbered from 1 as
clients see them (SSE ``id:``), ending in ``done`` or ``error``. Three readers use it from a
position: a follower (the same question, asked meanwhile) from the start, a resumer after its
last event id, a cache hit a finished complete one. The question key only points at the
current stream id; an attempt that failed is never found again under it. A ``Journal`` keeps
streams (``RedisJournal`` across instances, ``MemoryJournal`` in process); a live stream's
events are also in its ``Flight``, where clients of the same instance read them.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import orjson
from pydantic import BaseModel, ConfigDict, Field

from backends.base import BackendError, Event, PermanentError, TransientError
from gateway.events import Body, error_body, event_body, event_from_body
from gateway.upstream.base import Principal

if TYPE_CHECKING:
    from gateway.upstream.flight import Flight

_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{22,128}")


class ResumeSettings(BaseModel):
    """``[resume]``: how long answers outlive their clients, and how large one may be."""

    model_config = ConfigDict(extra="forbid")

    detach_s: float = Field(10.0, ge=0)
    """An answer whose last client left keeps streaming this long for a resume or a joiner;
    0 cancels the upstream call at once."""
    keep_s: float = Field(300.0, gt=0)
    """A finished stream stays readable this long (a cached one as long as its entry)."""
    max_events: int = Field(10_000, gt=0)
    """A longer answer still reaches its live clients, but is neither resumable nor cached..."""
    max_bytes: int = Field(1024 * 1024, gt=0)
    """...and so is one whose stored events exceed this many bytes."""


def new_stream_id() -> str:
    """An unguessable, URL-safe id (128 bits)."""
    return secrets.token_urlsafe(16)


def is_stream_id(value: str) -> bool:
    return _STREAM_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Origin:
    """Whose a stream is and which backend answered it (its ``meta`` entry)."""

    backend: str
    owner: Principal
    shared: bool
    """Found under a question (coalesced or cached): anyone of the tenant may read it."""

    def allows(self, principal: Principal) -> bool:
        """Whether ``principal`` may resume the stream: its owner, or for a shared one
        anyone of the owner's tenant (who could ask the same question and get it)."""
        return principal == self.owner or (self.shared and principal.tenant == self.owner.tenant)

    def body(self) -> Body:
        owner = self.owner
        return {"backend": self.backend, "owner": owner.name, "tenant": owner.tenant} | (
            {"shared": True} if self.shared else {}
        )

    @classmethod
    def of(cls, body: Body) -> Origin:
        """Raises ``KeyError``/``TypeError`` for a malformed body."""
        owner = Principal(str(body["owner"]), str(body["tenant"]))
        return cls(str(body["backend"]), owner, bool(body.get("shared", False)))


def encode(kind: str, body: Body) -> bytes:
    """One stored entry: ``[type, body]``."""
    return orjson.dumps([kind, body])


def encode_event(event: Event) -> bytes:
    return encode(event.type, event_body(event))


def encode_end(end: Event | BackendError) -> bytes:
    """The terminal entry: ``done``, or the ``error`` the answer ended with."""
    if isinstance(end, BackendError):
        return encode("error", error_body(end.code, end.message, end.retryable))
    return encode_event(end)


def decode(entry: bytes) -> tuple[str, Body]:
    """Raises ``ValueError`` (orjson's included) or ``TypeError`` for a malformed entry."""
    kind, body = orjson.loads(entry)
    if not isinstance(kind, str) or not isinstance(body, dict):
        raise TypeError("not an entry")
    return kind, body


def event_of(kind: str, body: Body) -> Event:
    """The event of an entry; an ``error`` entry raises the error (as retryable as it was)."""
    if kind == "error":
        error = TransientError if body["retryable"] else PermanentError
        raise error(str(body["code"]), str(body["message"]))
    return event_from_body(kind, body)


def is_end(kind: str) -> bool:
    return kind in ("done", "error")


class LostStream(TransientError):
    """A live stream that broke off before its end: its producer died, Redis stayed down,
    or what it held was corrupt. A follower answers afresh; a resumer gets this error."""


@dataclass(slots=True)
class Reading:
    """A stream found by id: its origin, and its events after the position asked for, in
    batches, live until the end (an ``error`` is raised, as a ``BackendError``)."""

    origin: Origin
    batches: AsyncGenerator[Sequence[Event], None]


class Recorder(Protocol):
    """Keeps one flight's stream as it goes (``Journal.recorder``)."""

    capped: bool
    """Past ``max_events``/``max_bytes``: neither resumable nor cached."""
    size: int
    """Bytes of the stream so far."""

    def push(self, event: Event) -> None:
        """An event clients may now see (the first one brings the origin)."""
        ...

    def followed_elsewhere(self) -> bool:
        """Asked when the flight has no client here: True keeps the call going."""
        ...

    async def finish(self, end: Event | BackendError, cache_ttl_s: float | None) -> None:
        """The end; ``cache_ttl_s`` set: a complete answer to keep as the question's entry."""
        ...


class Journal(Protocol):
    """Where answer streams are kept, and which stream each question points at."""

    async def lookup(self, key: str) -> tuple[str, Origin, list[Event]] | None:
        """The cached answer under question ``key``: its stream id, origin and events."""
        ...

    async def current(self, key: str) -> str | None:
        """The id of the stream question ``key`` points at (live or cached)."""
        ...

    async def claim(self, key: str, stream_id: str) -> str | None:
        """Point ``key`` at ``stream_id`` unless it points at another: None when taken (this
        instance answers), else the current stream's id (follow it)."""
        ...

    async def take(self, key: str, stream_id: str, dead: str = "") -> str | None:
        """Point ``key`` at ``stream_id`` if it still points at ``dead`` (a stream that could
        not be followed) or at nothing, atomically: None when done (this instance answers),
        else the id it points at now (another instance took it over: follow that)."""
        ...

    async def follow(self, stream_id: str, timeout_s: float, finished: bool) -> Reading | None:
        """The stream from its start, once its first event is in (within ``timeout_s``);
        None if it is gone, abandoned, its producer died, or (``finished`` false) it is
        already finished. Its batches raise ``LostStream`` if it breaks off."""
        ...

    async def read(self, stream_id: str, after: int) -> Reading | None:
        """The stream's events after ``after``; None if it is unknown, expired or capped."""
        ...

    def recorder(self, flight: Flight, key: str | None, settings: ResumeSettings) -> Recorder:
        """Keeps ``flight``'s stream (and, with ``key``, the question's pointer to it)."""
        ...

    async def aclose(self) -> None: ...


async def one_batch(
    events: list[Event], error: BackendError | None = None
) -> AsyncGenerator[Sequence[Event], None]:
    """``events`` as batches (one, or none when empty), then ``error`` raised if set."""
    if events:
        yield events
    if error is not None:
        raise error
