"""The answering pipeline both answering routes share.

A route reads its body into a ``QARequest`` and hands it, with the ``Format`` to answer in,
to ``deliver``: it opens the answer through the backend's upstream (cache, fallback,
retries), which decides the status, then streams the guarded outcomes in that format.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

from backends.base import BackendError, QARequest, Turn
from gateway.formats import Format, Head
from gateway.http.errors import HTTPProblem
from gateway.http.guard import Guards, guarded
from gateway.http.streaming import Departure, EventStream
from gateway.runtime import Runtime
from gateway.upstream.base import Answer, Ask, Principal
from gateway.upstream.trace import Trace

M = TypeVar("M", bound=BaseModel)
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def read_body(request: Request, model: type[M]) -> M:
    """The JSON body as ``model``: 413 past ``max_body_bytes``, 400 if it is not JSON, 422
    naming the first problem (never echoing the input)."""
    runtime: Runtime = request.app.state.runtime
    limit = runtime.settings.max_body_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPProblem(413, "payload_too_large", f"the body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPProblem(413, "payload_too_large", f"the body exceeds {limit} bytes")
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HTTPProblem(400, "invalid_json", "the body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise HTTPProblem(422, "invalid_request", f"{where}: {first['msg']}") from None


def check_query(request: Request, query: str, field: str = "query") -> None:
    """422 for a blank query, 413 past ``max_query_bytes``; ``field`` names it."""
    if not query.strip():
        raise HTTPProblem(422, "invalid_request", f"{field}: must not be empty or blank")
    limit = request.app.state.runtime.settings.max_query_bytes
    if len(query.encode()) > limit:
        raise HTTPProblem(413, "query_too_long", f"{field} exceeds {limit} bytes")


def check_history(request: Request, history: Sequence[Turn], field: str = "history") -> None:
    """413 past ``max_history_turns`` turns or ``max_history_bytes`` of their text."""
    settings = request.app.state.runtime.settings
    if len(history) > settings.max_history_turns:
        limit = f"{settings.max_history_turns} turns"
    elif sum(len(turn.text.encode()) for turn in history) > settings.max_history_bytes:
        limit = f"{settings.max_history_bytes} bytes"
    else:
        return
    raise HTTPProblem(413, "history_too_long", f"{field}: the conversation exceeds {limit}")


async def deliver(
    request: Request, send: Send, question: QARequest, backend: str | None, format: Format
) -> None:
    """Answer ``question`` with ``backend`` (the default if None) in ``format``; the client
    leaving cancels the answer at any point (``Departure``). Call once the body is read."""
    runtime: Runtime = request.app.state.runtime
    name = _backend_named(runtime, backend)
    async with Departure(request.receive):
        started = await _start(request, runtime, question, name)
        response = await _respond(started, request.app.state.guards, format)
        await response(request.scope, request.receive, send)


@dataclass(slots=True)
class _Started:
    """An answer whose first event is in: the HTTP status is now 200."""

    answer: Answer
    trace: Trace
    idle_s: float

    def head(self) -> Head:
        backend = self.answer.backend
        cached = self.answer.cache == "HIT"
        return Head(self.trace.request_id, backend.name, backend.model, backend.emulated, cached)

    def headers(self) -> dict[str, str]:
        return STREAM_HEADERS | {"X-Cache": self.answer.cache}


def principal_of(request: Request) -> Principal:
    """Who sends ``request``: what the front door put in ``scope["state"]["principal"]``,
    else the anonymous principal of the configured tenant."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None:
        return Principal("anonymous", request.app.state.runtime.settings.cache.tenant)
    return principal


def _backend_named(runtime: Runtime, name: str | None) -> str:
    """The backend to ask: ``name`` or the default; 404 listing the configured ones."""
    name = name or runtime.settings.default_backend
    if name not in runtime.upstreams:
        known = ", ".join(sorted(runtime.upstreams))
        raise HTTPProblem(404, "unknown_backend", f"no backend {name!r}; configured: {known}")
    return name


async def _start(request: Request, runtime: Runtime, question: QARequest, name: str) -> _Started:
    """Open the answer through cache, retries and fallback; an error status if it can't start."""
    if request.app.state.guards.draining:
        raise HTTPProblem(
            503, "shutting_down", "the gateway is shutting down", headers={"Retry-After": "1"}
        )
    trace: Trace | None = request.scope.get("state", {}).get("trace")  # from ``Observed``
    if trace is None:
        trace = Trace(uuid.uuid4().hex)
    trace.backend = name
    trace.query = question.query
    directives = request.headers.get("cache-control", "").lower()
    ask = Ask(
        question,
        principal=principal_of(request),
        cache_read="no-cache" not in directives,
        cache_write="no-store" not in directives,
        trace=trace,
    )
    try:
        answer = await runtime.upstreams[name].open(ask)
    except BackendError as exc:
        raise HTTPProblem.from_backend(exc) from None
    trace.first_event_s = time.perf_counter() - trace.started
    trace.cache = answer.cache
    trace.answered_by = answer.backend.name
    return _Started(answer, trace, runtime.settings.backends[answer.backend.name].idle_s)


async def _respond(started: _Started, guards: Guards, format: Format) -> Response:
    """A streamed response of the answer, or (``format.streamed`` false) the whole body, with
    the status of its failure if it fails midway."""
    outcomes = guarded(started.answer, started.trace, started.idle_s, guards)
    body = format.encode(started.head(), outcomes)
    if format.streamed:
        return EventStream(body, format.media_type, started.headers(), started.answer.aclose)
    try:
        async with aclosing(body):
            content = b"".join([chunk async for chunk in body])
    except BackendError as exc:
        raise HTTPProblem.from_backend(exc) from None
    return Response(content, media_type=format.media_type, headers=started.headers())
