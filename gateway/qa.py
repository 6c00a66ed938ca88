"""``POST /qa``: validate the question, open the answer, stream it in the chosen format."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response, StreamingResponse

from backends.base import BackendError, QARequest
from gateway.errors import HTTPProblem
from gateway.guard import Guards, StreamGuard
from gateway.runtime import Runtime
from gateway.upstream import Answer, Ask
from gateway.wire import Wire, choose_wire, error_body, event_body

router = APIRouter()

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class QABody(BaseModel):
    """The JSON body of ``POST /qa``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(description="The question.")
    backend: str | None = Field(None, description="A configured backend; the default if unset.")
    session_id: str | None = Field(
        None, min_length=1, max_length=256, description="Continue this conversation."
    )


_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": QABody.model_json_schema()}},
    },
    "responses": {
        "200": {
            "description": "The answer as a stream of events: `meta`, `delta`, `citation`, "
            "then one `done` or `error`.",
            "content": {"text/event-stream": {}, "application/x-ndjson": {}, "text/plain": {}},
        }
    },
}


@router.post("/qa", openapi_extra=_OPENAPI, response_class=StreamingResponse)
async def qa(request: Request, format: str | None = None) -> Response:
    """Answer a question as a stream (SSE by default; NDJSON or text by `Accept` or `format`)."""
    runtime: Runtime = request.app.state.runtime
    wire = choose_wire(format, request.headers.get("accept"))
    if wire is None:
        raise HTTPProblem(400, "unsupported_format", "format must be one of: sse, ndjson, text")
    body = await _read_body(request, runtime.settings.max_body_bytes)
    question, backend_name = _validate(body, runtime)
    if runtime.guards.draining:
        raise HTTPProblem(
            503, "shutting_down", "the gateway is shutting down", headers={"Retry-After": "1"}
        )
    request_id = _request_id(request)
    directives = request.headers.get("cache-control", "").lower()
    ask = Ask(
        question,
        tenant=runtime.settings.cache.tenant,
        cache_read="no-cache" not in directives,
        cache_write="no-store" not in directives,
    )
    try:
        answer = await runtime.upstreams[backend_name].open(ask)
    except BackendError as exc:
        raise HTTPProblem.from_backend(exc) from None
    meta = {
        "request_id": request_id,
        "backend": answer.backend.name,
        "model": answer.backend.model,
        "emulated": answer.backend.emulated,
        "cached": answer.cache == "HIT",
    }
    idle_s = runtime.settings.backends[answer.backend.name].idle_s
    return StreamingResponse(
        _frames(answer, wire, meta, idle_s, runtime.guards),
        media_type=wire.media_type,
        headers=STREAM_HEADERS | {"X-Request-ID": request_id, "X-Cache": answer.cache},
    )


_INTERRUPTIONS = {
    "idle_timeout": "the upstream sent nothing for too long",
    "shutting_down": "the gateway is shutting down; ask again",
}


async def _frames(
    answer: Answer, wire: Wire, meta: dict[str, Any], idle_s: float, guards: Guards
) -> AsyncIterator[bytes]:
    """``meta``, every event of the answer, then one ``error`` frame if it fails midway."""
    guard = StreamGuard(idle_s, guards)
    seq = 1
    try:
        yield wire.frame(0, "meta", meta)
        event = answer.first
        yield wire.frame(1, event.type, event_body(event))
        guard.waiting()
        async for event in answer.rest:
            guard.writing()
            seq += 1
            yield wire.frame(seq, event.type, event_body(event))
            guard.waiting()
    except BackendError as exc:
        yield wire.frame(seq + 1, "error", error_body(exc.code, exc.message, exc.retryable))
    except asyncio.CancelledError:
        if guard.reason is None:
            raise  # the client went away
        _uncancel()
        message = _INTERRUPTIONS[guard.reason]
        yield wire.frame(seq + 1, "error", error_body(guard.reason, message, True))
    finally:
        guard.close()
        await answer.aclose()


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def _read_body(request: Request, limit: int) -> Any:
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


def _validate(data: Any, runtime: Runtime) -> tuple[QARequest, str]:
    try:
        body = QABody.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise HTTPProblem(422, "invalid_request", f"{where}: {first['msg']}") from None
    if not body.query.strip():
        raise HTTPProblem(422, "invalid_request", "query: must not be empty or blank")
    limit = runtime.settings.max_query_bytes
    if len(body.query.encode()) > limit:
        raise HTTPProblem(413, "query_too_long", f"query exceeds {limit} bytes")
    name = body.backend or runtime.settings.default_backend
    if name not in runtime.upstreams:
        known = ", ".join(sorted(runtime.upstreams))
        raise HTTPProblem(404, "unknown_backend", f"no backend {name!r}; configured: {known}")
    return QARequest(body.query, body.session_id), name


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id")
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex
