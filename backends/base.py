"""The contract every backend keeps: a request in, an async iterator of typed events out.

Events are small frozen dataclasses forming one discriminated union (``Event``), each
tagged by its ``type``. A backend yields zero or more ``Delta`` and ``Citation`` events
and ends with exactly one ``Done``, or raises a ``BackendError``.

Error tree::

    BackendError            code (gRPC status name, lower case), message, retryable
    ├── TransientError      worth retrying: unavailable, resource_exhausted, internal, ...
    └── PermanentError      retrying cannot help: invalid_argument, permission_denied, ...

Backends know nothing about HTTP, Redis, SSE or retries; those wrap them in ``gateway``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True, slots=True)
class Turn:
    """An earlier message of a conversation: the user's, or the model's answer."""

    role: Literal["user", "model"]
    text: str


class Generation(BaseModel):
    """Generation settings one request sets over the backend's configured ones (unset
    fields keep those)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, gt=0)
    max_output_tokens: int | None = Field(None, gt=0)
    stop_sequences: list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, lt=2)
    frequency_penalty: float | None = Field(None, ge=-2, lt=2)
    response_mime_type: str | None = None
    """``application/json`` for a JSON answer."""
    response_schema: dict[str, Any] | None = None
    """A JSON Schema the answer follows (with ``response_mime_type = "application/json"``)."""

    def given(self) -> dict[str, Any]:
        """The fields this request sets."""
        return self.model_dump(exclude_none=True)


@dataclass(frozen=True, slots=True)
class QARequest:
    """One question. A conversation goes on either through ``history``, the turns before the
    question, for backends that are sent the conversation (Gemini), or through
    ``session_id`` where the backend keeps it (Agent Builder, Agent Engine, which ignore
    ``history``). ``generation`` and ``system`` shape this answer over the backend's
    configuration."""

    query: str
    session_id: str | None = None
    history: tuple[Turn, ...] = ()
    generation: Generation | None = None
    system: str | None = None
    """Instructions for this answer (joined to or replacing the configured ones)."""

    def parameters(self) -> dict[str, Any]:
        """What this request sets beyond the conversation, by parameter name (``system``
        and the ``Generation`` fields): part of what makes its answer."""
        given = self.generation.given() if self.generation is not None else {}
        return given | ({"system": self.system} if self.system is not None else {})

    user: str | None = None
    """Who asks, when the gateway knows: for backends that keep per-user state (sessions)."""


@dataclass(frozen=True, slots=True)
class Delta:
    """The next piece of answer text."""

    text: str
    type: ClassVar[Literal["delta"]] = "delta"


@dataclass(frozen=True, slots=True)
class Source:
    """A document that supports part of the answer."""

    title: str
    uri: str
    snippet: str | None = None


@dataclass(frozen=True, slots=True)
class Citation:
    """``sources`` support the answer text from character ``start`` to ``end`` (exclusive)."""

    start: int
    end: int
    sources: tuple[Source, ...]
    type: ClassVar[Literal["citation"]] = "citation"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the upstream reported them."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int | None = None
    """Of the prompt's, those read from a context cache."""
    reasoning_tokens: int | None = None
    """Tokens the model spent thinking (not in ``completion_tokens``)."""


@dataclass(frozen=True, slots=True)
class Done:
    """The answer is complete.

    ``finish_reason`` is ``stop`` for a normal end, ``skipped`` when the upstream declined
    to answer (``skip_reasons`` say why), or the upstream's own reason in lower case
    (``max_tokens``, ``safety``, ...).
    """

    finish_reason: str
    usage: Usage | None = None
    session_id: str | None = None
    skip_reasons: tuple[str, ...] = ()
    related_questions: tuple[str, ...] = ()
    type: ClassVar[Literal["done"]] = "done"


Event = Delta | Citation | Done


class BackendError(Exception):
    """An upstream failure. ``code`` is the gRPC status name in lower case."""

    retryable: ClassVar[bool] = False

    def __init__(self, code: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds, when the upstream said how long to wait

    def anew(self) -> Self:
        """The same error as a new exception, with no traceback, cause or context: to keep,
        or to raise where it is kept (a kept one holds every frame it passed through, and
        those frames the objects that keep it: a cycle only the garbage collector frees)."""
        error = type(self).__new__(type(self))
        error.args = self.args
        error.__dict__.update(self.__dict__)
        return error


class TransientError(BackendError):
    """A failure that may pass: retrying the same request can succeed."""

    retryable = True


class PermanentError(BackendError):
    """A failure that retrying the same request cannot fix."""


TRANSIENT_CODES = frozenset(
    {"unavailable", "resource_exhausted", "internal", "aborted", "deadline_exceeded", "unknown"}
)


def error_for(code: str, message: str, *, retry_after: float | None = None) -> BackendError:
    """The ``TransientError`` or ``PermanentError`` a status code stands for."""
    cls = TransientError if code in TRANSIENT_CODES else PermanentError
    return cls(code, message, retry_after=retry_after)


class Backend(Protocol):
    """What the gateway needs from a backend."""

    name: str
    model: str  # what answers, for ``meta`` (a model id or a serving config)
    emulated: bool
    parameters: frozenset[str]
    """The request parameters it can honour (``QARequest.parameters`` names)."""

    def stream(self, request: QARequest) -> AsyncGenerator[Event, None]:
        """Answer ``request`` as events; cancel the upstream call when closed early."""
        ...

    def cache_identity(self) -> dict[str, object]:
        """Everything in this backend's config that changes the answer (for cache keys)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
