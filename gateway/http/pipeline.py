"""The answering pipeline both answering routes share.

A route reads its body into a ``QARequest`` and hands it, with the ``Format`` to answer in,
to ``deliver``: it admits the request under its principal's limits (``limits``), opens the
answer through the backend's upstream (cache, fallback, retries), which decides the status,
then streams the guarded outcomes in that format.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

from backends.base import BackendError, QARequest, Turn
from gateway.formats import Format, Head
from gateway.formats.base import Outcomes
from gateway.http.auth import check_backend
from gateway.http.errors import HTTPProblem
from gateway.http.guard import Guards, guarded
from gateway.http.limits import Ticket, admitted
from gateway.http.streaming import Departure, EventStream
from gateway.runtime import Runtime
from gateway.upstream.base import Answer, Ask, Principal
from gateway.upstream.trace import Trace

M = TypeVar("M", bound=BaseModel)
ANONYMOUS = "anonymous"
"""The principal's name when no front door said who asks."""
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
    request: Request,
    send: Send,
    question: QARequest,
    backend: str | None,
    format: Format,
    cache_control: str | None = None,
) -> None:
    """Answer ``question`` with ``backend`` (the default if None) in ``format``; the client
    leaving cancels the answer at any point (``Departure``). Call once the body is read.
    ``cache_control``: the directives to follow (default: the request's header)."""
    runtime: Runtime = request.app.state.runtime
    name = backend_named(runtime, backend)
    check_backend(request, name)
    if cache_control is None:
        cache_control = request.headers.get("cache-control", "")
    async with Departure(request.receive), admitted(request, principal_of(request)) as ticket:
        started = await _start(request, runtime, question, name, cache_control.lower())
        response = await respond(started, request.app.state.guards, format, ticket)
        await response(request.scope, request.receive, send)


@dataclass(slots=True)
class Started:
    """An answer whose first event is in: the HTTP status is now 200."""

    answer: Answer
    trace: Trace
    idle_s: float
    after: int = -1
    """A resume: the client has the events up to this one (``Head.after``)."""

    def head(self) -> Head:
        backend, answer = self.answer.backend, self.answer
        cached = answer.cache == "HIT"
        return Head(
            self.trace.request_id,
            backend.name,
            backend.model,
            backend.emulated,
            cached,
            answer.stream_id,
            self.after,
        )

    def headers(self) -> dict[str, str]:
        return STREAM_HEADERS | {"X-Cache": self.answer.cache, "X-Stream-ID": self.answer.stream_id}


def principal_of(request: Request) -> Principal:
    """Who sends ``request``: what the front door put in ``scope["state"]["principal"]``,
    else the anonymous principal of the configured tenant."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None:
        return Principal(ANONYMOUS, request.app.state.runtime.settings.cache.tenant)
    return principal


def backend_named(runtime: Runtime, name: str | None) -> str:
    """The backend to ask: ``name`` or the default; 404 listing the configured ones."""
    name = name or runtime.settings.default_backend
    if name not in runtime.upstreams:
        known = ", ".join(sorted(runtime.upstreams))
        raise HTTPProblem(404, "unknown_backend", f"no backend {name!r}; configured: {known}")
    return name


def trace_of(request: Request) -> Trace:
    """The request's trace (started by ``Observed``), or a new one."""
    trace: Trace | None = request.scope.get("state", {}).get("trace")
    return trace if trace is not None else Trace(uuid.uuid4().hex)


def check_draining(request: Request) -> None:
    """503 once the gateway is shutting down."""
    if request.app.state.guards.draining:
        raise HTTPProblem(
            503, "shutting_down", "the gateway is shutting down", headers={"Retry-After": "1"}
        )


async def _start(
    request: Request, runtime: Runtime, question: QARequest, name: str, directives: str
) -> Started:
    """Open the answer through cache, retries and fallback; an error status if it can't start."""
    check_draining(request)
    trace = trace_of(request)
    trace.backend = name
    trace.query = question.query
    principal = principal_of(request)
    if principal.name != ANONYMOUS:  # the front door's principal owns per-user backend state
        question = replace(question, user=principal.name)
    ask = Ask(
        question,
        principal=principal,
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
    return Started(answer, trace, runtime.settings.backends[answer.backend.name].idle_s)


async def respond(
    started: Started, guards: Guards, format: Format, ticket: Ticket | None = None
) -> Response:
    """A streamed response of the answer, or (``format.streamed`` false) the whole body, with
    the status of its failure if it fails midway."""
    guarded_outcomes = guarded(started.answer, started.trace, started.idle_s, guards)
    outcomes: Outcomes = guarded_outcomes
    headers = started.headers()
    if ticket is not None:  # a new answer (not a resume) of a principal under limits
        outcomes = ticket.metered(guarded_outcomes, started.answer.cache)
        headers |= ticket.headers
    if format.streamed:
        return EventStream(format, started.head(), outcomes, headers, started.answer.aclose)
    body = format.encode(started.head(), outcomes)
    try:
        async with aclosing(body):
            content = b"".join([chunk async for chunk in body])
    except BackendError as exc:
        raise HTTPProblem.from_backend(exc) from None
    return Response(content, media_type=format.media_type, headers=headers)
