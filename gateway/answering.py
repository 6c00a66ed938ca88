"""What every answering route shares: reading the body, starting an answer, and the
guarded event sequence that always ends in one terminal outcome."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

from backends.base import BackendError, Event, QARequest
from gateway.errors import HTTPProblem
from gateway.guard import StreamGuard
from gateway.runtime import Runtime
from gateway.streaming import Departure
from gateway.trace import Trace
from gateway.upstream import Answer, Ask

M = TypeVar("M", bound=BaseModel)
_REF = "#/components/schemas/{model}"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_INTERRUPTIONS = {
    "idle_timeout": "the upstream sent nothing for too long",
    "shutting_down": "the gateway is shutting down; ask again",
}


@dataclass(frozen=True, slots=True)
class Failure:
    """How a started answer ended when it did not end in ``done``."""

    code: str
    message: str
    retryable: bool


@dataclass(slots=True)
class Started:
    """An answer whose first event is in: the HTTP status is now 200."""

    answer: Answer
    trace: Trace
    idle_s: float

    def meta(self) -> dict[str, Any]:
        backend = self.answer.backend
        return {
            "request_id": self.trace.request_id,
            "backend": backend.name,
            "model": backend.model,
            "emulated": backend.emulated,
            "cached": self.answer.cache == "HIT",
        }

    def headers(self) -> dict[str, str]:
        return STREAM_HEADERS | {"X-Cache": self.answer.cache}


def openapi(body: type[BaseModel], answer: str, media_types: Sequence[str]) -> dict[str, Any]:
    """The OpenAPI of a route that reads ``body`` itself (the schema FastAPI cannot infer);
    the schemas it refers to are ``openapi_schemas(body)``."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=body.__name__)}}},
        },
        "responses": {
            "200": {
                "description": answer,
                "content": {media_type: {} for media_type in media_types},
            }
        },
    }


def openapi_schemas(body: type[BaseModel]) -> dict[str, Any]:
    """``body``'s schema and every one it refers to, for the document's ``components``."""
    schema = body.model_json_schema(ref_template=_REF)
    return {**schema.pop("$defs", {}), body.__name__: schema}


async def read_json(request: Request, limit: int) -> Any:
    """The parsed body; 413 past ``limit`` bytes, 400 if it is not JSON."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPProblem(413, "payload_too_large", f"the body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPProblem(413, "payload_too_large", f"the body exceeds {limit} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HTTPProblem(400, "invalid_json", "the body is not valid JSON") from None


def validate(model: type[M], data: Any) -> M:
    """``data`` as ``model``, or 422 naming the first problem (never echoing the input)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise HTTPProblem(422, "invalid_request", f"{where}: {first['msg']}") from None


def check_query(runtime: Runtime, query: str, field: str = "query") -> None:
    if not query.strip():
        raise HTTPProblem(422, "invalid_request", f"{field}: must not be empty or blank")
    limit = runtime.settings.max_query_bytes
    if len(query.encode()) > limit:
        raise HTTPProblem(413, "query_too_long", f"{field} exceeds {limit} bytes")


def backend_named(runtime: Runtime, name: str | None) -> str:
    """The backend to ask: ``name`` or the default; 404 listing the configured ones."""
    name = name or runtime.settings.default_backend
    if name not in runtime.upstreams:
        known = ", ".join(sorted(runtime.upstreams))
        raise HTTPProblem(404, "unknown_backend", f"no backend {name!r}; configured: {known}")
    return name


async def answer(
    request: Request,
    send: Send,
    question: QARequest,
    backend: str,
    respond: Callable[[Started], Awaitable[Response]],
) -> None:
    """Open the answer and send the response ``respond`` makes of it; the client leaving
    cancels both (``Departure``). Call once the body has been read."""
    runtime: Runtime = request.app.state.runtime
    async with Departure(request.receive):
        started = await start_answer(request, runtime, question, backend)
        response = await respond(started)
        await response(request.scope, request.receive, send)


async def start_answer(
    request: Request, runtime: Runtime, question: QARequest, backend: str
) -> Started:
    """Open the answer through cache, retries and fallback; an error status if it can't start."""
    if runtime.guards.draining:
        raise HTTPProblem(
            503, "shutting_down", "the gateway is shutting down", headers={"Retry-After": "1"}
        )
    trace = trace_of(request)
    trace.backend = backend
    trace.query = question.query
    directives = request.headers.get("cache-control", "").lower()
    ask = Ask(
        question,
        tenant=runtime.settings.cache.tenant,
        cache_read="no-cache" not in directives,
        cache_write="no-store" not in directives,
        trace=trace,
    )
    try:
        answer = await runtime.upstreams[backend].open(ask)
    except BackendError as exc:
        raise HTTPProblem.from_backend(exc) from None
    trace.first_event_s = time.perf_counter() - trace.started
    trace.cache = answer.cache
    trace.answered_by = answer.backend.name
    return Started(answer, trace, runtime.settings.backends[answer.backend.name].idle_s)


def trace_of(request: Request) -> Trace:
    """The request's ``Trace`` (started by ``Observed``; a fresh one without it)."""
    trace: Trace | None = request.scope.get("state", {}).get("trace")
    return trace if trace is not None else Trace(uuid.uuid4().hex)


async def outcomes(started: Started, runtime: Runtime) -> AsyncIterator[Sequence[Event | Failure]]:
    """The answer's events, in batches of those ready together; a ``Failure`` last if it
    fails, stalls or is cut by shutdown.

    Closing this iterator (a client leaving) cancels the upstream call.
    """
    answer, trace = started.answer, started.trace
    guard = StreamGuard(started.idle_s, runtime.guards)
    trace.outcome = "disconnected"
    try:
        yield (answer.first,)
        guard.waiting()
        async for batch in answer.rest:
            guard.writing()
            yield batch
            guard.waiting()
        trace.outcome = "done"
    except BackendError as exc:
        trace.outcome = exc.code
        trace.upstream_errors.append(exc.code)
        yield (Failure(exc.code, exc.message, exc.retryable),)
    except asyncio.CancelledError:
        if guard.reason is None:
            raise  # the client went away
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        trace.outcome = guard.reason
        yield (Failure(guard.reason, _INTERRUPTIONS[guard.reason], True),)
    finally:
        guard.close()
        await answer.aclose()
