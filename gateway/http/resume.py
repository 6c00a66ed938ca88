"""Resuming answers: ``GET /qa/streams/{stream_id}``, and what ``GET /qa`` resumes.

The events after ``Last-Event-ID`` (header, or ``?last_event_id=``), numbered as the
original stream (``meta`` is 0 and is sent only without one), live until the end, in SSE
(default), NDJSON or text. A finished stream with nothing left after it: 204 (which also
stops a browser's ``EventSource`` from reconnecting). Unknown, expired, capped or another
principal's: 404 ``stream_not_found``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backends.base import BackendError, Event
from gateway import formats
from gateway.formats import Failure, Format, Head, Outcome
from gateway.http.errors import HTTPProblem
from gateway.http.pipeline import (
    STREAM_HEADERS,
    Started,
    check_draining,
    principal_of,
    respond,
    trace_of,
)
from gateway.http.streaming import Departure, EventStream
from gateway.runtime import Runtime
from gateway.upstream.answers import Resumed
from gateway.upstream.base import Answer

MAX_EVENT_ID = 10**9


def last_event_id(request: Request) -> int | None:
    """``Last-Event-ID`` (or ``?last_event_id=``) as a number; None if absent; 400 if not one."""
    raw = request.headers.get("last-event-id")
    if raw is None:
        raw = request.query_params.get("last_event_id")
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    if not raw.isdigit() or int(raw) > MAX_EVENT_ID:
        raise HTTPProblem(400, "invalid_last_event_id", "Last-Event-ID must be an event's id")
    return int(raw)


def not_found() -> HTTPProblem:
    return HTTPProblem(404, "stream_not_found", "no such answer stream (unknown or expired)")


async def find(request: Request, stream_id: str, after: int) -> Resumed | None:
    """The stream ``stream_id`` after event ``after`` (-1: from ``meta``), if the request's
    principal may read it."""
    check_draining(request)
    runtime: Runtime = request.app.state.runtime
    return await runtime.streams.resume(stream_id, principal_of(request), after)


async def send_resumed(
    request: Request, send: Send, found: Resumed, stream_id: str, after: int, format: Format
) -> None:
    """Stream ``found`` to the client (the events after ``after``) in ``format``."""
    runtime: Runtime = request.app.state.runtime
    trace = trace_of(request)
    trace.backend = trace.answered_by = found.backend.name
    headers = STREAM_HEADERS | {"X-Stream-ID": stream_id}
    async with Departure(request.receive):
        try:
            first = await anext(found.batches)
        except StopAsyncIteration:
            trace.status = 204
            response = Response(status_code=204, headers=headers)  # nothing left to send
        except BackendError as error:  # the answer's end is its error
            trace.status, trace.outcome = 200, error.code
            backend = found.backend
            head = Head(
                trace.request_id,
                backend.name,
                backend.model,
                backend.emulated,
                False,
                stream_id,
                after,
            )
            response = EventStream(format, head, _failure(error), headers, found.batches.aclose)
        else:
            answer = Answer(
                found.backend,
                first[0],
                _rest(first[1:], found.batches),
                release=found.batches.aclose,
                stream_id=stream_id,
            )
            idle_s = runtime.settings.backends[found.backend.name].idle_s
            response = await respond(
                Started(answer, trace, idle_s, after), request.app.state.guards, format
            )
        await response(request.scope, request.receive, send)


class StreamEndpoint:
    """``GET /qa/streams/{stream_id}``: resume an answer by its id."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        chosen = formats.choose(request.query_params.get("format"), request.headers.get("accept"))
        if chosen is None:
            raise HTTPProblem(400, "unsupported_format", "format must be one of: sse, ndjson, text")
        stream_id = request.path_params["stream_id"]
        last = last_event_id(request)
        after = -1 if last is None else last
        found = await find(request, stream_id, after)
        if found is None:
            raise not_found()
        await send_resumed(request, send, found, stream_id, after, chosen)


LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer"}}
MEDIA: dict[str, object] = {"text/event-stream": {}, "application/x-ndjson": {}, "text/plain": {}}
OPENAPI_PATH = {
    "get": {
        "summary": "Resume an answer",
        "description": "The events after `Last-Event-ID` (or `?last_event_id=`), numbered as "
        "the original stream, live until its end; without it, from `meta`.",
        "operationId": "qa_stream",
        "parameters": [
            {"name": "stream_id", "in": "path", "required": True, "schema": {"type": "string"}},
            {"name": "last_event_id", "in": "query", "schema": {"type": "integer"}},
            LAST_EVENT_ID,
        ],
        "responses": {
            "200": {"description": "The events after the last one seen.", "content": MEDIA},
            "204": {"description": "The answer has ended; nothing left after that id."},
            "404": {"description": "`stream_not_found`: unknown, expired or not yours."},
        },
    }
}
"""``/qa/streams/{stream_id}`` in the OpenAPI document."""
ROUTE = Route("/qa/streams/{stream_id}", StreamEndpoint(), methods=["GET"], include_in_schema=False)


async def _failure(error: BackendError) -> AsyncGenerator[Sequence[Outcome], None]:
    yield (Failure(error.code, error.message, error.retryable),)


async def _rest(
    first: Sequence[Event], batches: AsyncGenerator[Sequence[Event], None]
) -> AsyncGenerator[Sequence[Event], None]:
    try:
        if first:
            yield first
        async for batch in batches:
            yield batch
    finally:
        await batches.aclose()
