"""What every format reads: the answer's ``Head``, then its outcomes; bytes come out.

An answer's outcomes are its events in batches of those ready together, with a ``Failure``
last when it did not end in ``done``. Wire-only things (``meta``, error frames, sequence
numbers) are made here, never by the layers below.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from backends.base import Event
from gateway.events import Body, error_body, event_body


@dataclass(frozen=True, slots=True)
class Head:
    """What a client learns as the answer starts (``meta``)."""

    request_id: str
    backend: str
    """The backend that answered (after a fallback, not the one asked)."""
    model: str
    emulated: bool
    cached: bool
    stream_id: str = ""
    """The answer stream's id, to resume it by (``GET /qa/streams/{stream_id}``)."""
    after: int = -1
    """A resume: the client has the events up to this sequence number (``meta`` is 0), so
    no ``meta`` and numbering goes on after it; -1: from the start."""

    def body(self) -> Body:
        return {
            "request_id": self.request_id,
            "backend": self.backend,
            "model": self.model,
            "emulated": self.emulated,
            "cached": self.cached,
            "stream_id": self.stream_id,
        }


@dataclass(frozen=True, slots=True)
class Failure:
    """How a started answer ended when it did not end in ``done``."""

    code: str
    message: str
    retryable: bool

    def body(self) -> Body:
        return error_body(self.code, self.message, self.retryable)


Outcome = Event | Failure
Outcomes = AsyncIterator[Sequence[Outcome]]


def ends(batch: Sequence[Outcome]) -> bool:
    """Whether ``batch`` holds the answer's last outcome (``done`` or a ``Failure``)."""
    return bool(batch) and (isinstance(batch[-1], Failure) or batch[-1].type == "done")


class Format(Protocol):
    """Turns one answer into the bytes of a response body."""

    media_type: str
    streamed: bool
    """False: the whole answer is one body, and a failure raises the ``BackendError`` it was
    (the status then says it); True: bytes go out as they come, a failure included."""

    def encode(self, head: Head, outcomes: Outcomes) -> AsyncGenerator[bytes, None]:
        """The body, one chunk per batch of outcomes."""
        ...


class Framed:
    """A format of one frame per event: ``meta`` first, then each event, then ``done`` or
    ``error``; the frames of one batch go out as one chunk (``meta`` with the first)."""

    media_type: str
    streamed = True

    def frame(self, seq: int, kind: str, body: Body) -> bytes:
        """The frame of the ``seq``-th event (``meta`` is 0)."""
        raise NotImplementedError

    async def encode(self, head: Head, outcomes: Outcomes) -> AsyncGenerator[bytes, None]:
        frames = [self.frame(0, "meta", head.body())] if head.after < 0 else []
        seq = max(head.after, 0)
        async for batch in outcomes:
            for item in batch:
                seq += 1
                if isinstance(item, Failure):
                    frames.append(self.frame(seq, "error", item.body()))
                else:
                    frames.append(self.frame(seq, item.type, event_body(item)))
            yield b"".join(frames)
            frames.clear()
