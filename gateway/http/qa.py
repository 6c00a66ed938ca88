"""``/qa``: validate the question (a POST body, or a GET query string for ``EventSource``),
then answer it as a stream in the chosen format; ``/qa/streams/{id}`` resumes one."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backends.base import Generation, QARequest, Turn
from gateway import formats
from gateway.http import openapi, resume
from gateway.http.errors import HTTPProblem
from gateway.http.pipeline import (
    backend_named,
    check_history,
    check_query,
    deliver,
    principal_of,
    read_body,
)
from gateway.upstream.base import Ask

router = APIRouter()


class HistoryTurn(BaseModel):
    """An earlier turn of the conversation."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["user", "model"]
    text: str = Field(min_length=1)


class QABody(BaseModel):
    """The JSON body of ``POST /qa``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    query: str = Field(description="The question.")
    backend: str | None = Field(None, description="A configured backend; the default if unset.")
    session_id: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Continue this conversation (backends that keep sessions: Agent Builder, "
        "Agent Engine).",
    )
    history: list[HistoryTurn] = Field(
        default_factory=list,
        description="The conversation so far, oldest first, for backends that are sent it "
        "(Gemini); session backends keep their own through `session_id`.",
    )
    generation: Generation | None = Field(
        None,
        description="Generation settings for this answer, over the backend's configured ones "
        "(what a backend accepts: its `[requests]` config).",
    )
    system: str | None = Field(
        None,
        min_length=1,
        description="Instructions for this answer, after the backend's configured ones "
        "(or instead of them, as the backend is configured).",
    )


class QAEndpoint:
    """``POST /qa``: answer a question as a stream (SSE by default; NDJSON or text by
    ``Accept`` or ``format``).

    A plain ASGI app, not a FastAPI route: the hot path skips dependency injection and the
    per-request exit stacks, and an open stream holds fewer frames. Errors are
    ``HTTPProblem``s, turned into JSON by the app's handler like everywhere else.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        chosen = formats.choose(request.query_params.get("format"), request.headers.get("accept"))
        if chosen is None:
            raise HTTPProblem(400, "unsupported_format", "format must be one of: sse, ndjson, text")
        body = await read_body(request, QABody)
        check_query(request, body.query)
        history = tuple(Turn(turn.role, turn.text) for turn in body.history)
        check_history(request, history)
        question = QARequest(body.query, body.session_id, history, body.generation, body.system)
        await deliver(request, send, question, body.backend, chosen)


class EventSourceEndpoint:
    """``GET /qa?query=&backend=&session_id=``: the same answer as ``POST /qa``, for a
    browser's ``EventSource`` (which only speaks GET). Reconnected with ``Last-Event-ID``, it
    resumes the answer the question finds (live, or just finished and cached) instead of
    asking again; if there is none, the answer starts afresh, with ``meta``.

    ``Cache-Control`` is not read: browsers send ``no-cache`` on every ``EventSource``
    request, so a first GET reads and fills the cache like a plain POST (refresh with
    ``POST /qa`` and ``Cache-Control: no-cache``).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        limit = request.app.state.runtime.settings.max_query_bytes
        if len(scope.get("query_string", b"")) > 3 * limit + 1024:  # every byte %-encoded
            raise HTTPProblem(414, "uri_too_long", "the query string is too long")
        params = request.query_params
        unknown = sorted(set(params) - _GET_PARAMS)
        if unknown:
            raise HTTPProblem(422, "invalid_request", f"{unknown[0]}: unknown parameter")
        chosen = formats.choose(params.get("format"), request.headers.get("accept"))
        if chosen is None:
            raise HTTPProblem(400, "unsupported_format", "format must be one of: sse, ndjson, text")
        query = params.get("query")
        if query is None:
            raise HTTPProblem(422, "invalid_request", "query: Field required")
        check_query(request, query)
        session_id = params.get("session_id") or None
        if session_id is not None and len(session_id) > 256:
            raise HTTPProblem(422, "invalid_request", "session_id: at most 256 characters")
        question = QARequest(query, session_id)
        backend = params.get("backend") or None
        after = resume.last_event_id(request)
        if after is not None:
            runtime = request.app.state.runtime
            upstream = runtime.upstreams[backend_named(runtime, backend)]
            ask = Ask(question, principal=principal_of(request))
            stream_id = await upstream.current(ask)
            found = await resume.find(request, stream_id, after) if stream_id else None
            if found is not None and stream_id is not None:
                await resume.send_resumed(request, send, found, stream_id, after, chosen)
                return
        await deliver(request, send, question, backend, chosen, cache_control="")


_GET_PARAMS = frozenset({"query", "backend", "session_id", "format", "last_event_id"})

router.routes.append(Route("/qa", QAEndpoint(), methods=["POST"], include_in_schema=False))
router.routes.append(Route("/qa", EventSourceEndpoint(), methods=["GET"], include_in_schema=False))
router.routes.append(resume.ROUTE)

OPENAPI_PATH = {
    "post": openapi.operation(
        QABody,
        "The answer as a stream of events: `meta`, `delta`, `citation`, then one `done` "
        "or `error`.",
        ["text/event-stream", "application/x-ndjson", "text/plain"],
        summary="Answer a question as a stream",
        description="SSE by default; NDJSON or plain text by `Accept` or `format`.",
        operationId="qa",
        parameters=[
            {
                "name": "format",
                "in": "query",
                "required": False,
                "schema": {"enum": list(formats.QA_FORMATS), "type": "string"},
            }
        ],
    ),
    "get": {
        "summary": "Answer a question as a stream, for EventSource",
        "description": "The same answer as `POST /qa`, from the query string. With "
        "`Last-Event-ID`, resumes the answer the question finds instead of asking again. "
        "`Cache-Control` is not read.",
        "operationId": "qa_get",
        "parameters": [
            {"name": name, "in": "query", "required": name == "query", "schema": {"type": "string"}}
            for name in ("query", "backend", "session_id", "format", "last_event_id")
        ]
        + [resume.LAST_EVENT_ID],
        "responses": {"200": {"description": "The answer's events.", "content": resume.MEDIA}},
    },
}
"""``/qa`` in the OpenAPI document (a plain ASGI route has none of its own)."""
OPENAPI_SCHEMAS = openapi.schemas(QABody)
