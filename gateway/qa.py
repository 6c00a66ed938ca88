"""``POST /qa``: validate the question, open the answer, stream it in the chosen format."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backends.base import QARequest, Turn
from gateway.answering import (
    Failure,
    Started,
    answer,
    backend_named,
    check_query,
    openapi,
    openapi_schemas,
    outcomes,
    read_json,
    validate,
)
from gateway.errors import HTTPProblem
from gateway.runtime import Runtime
from gateway.streaming import EventStream
from gateway.wire import Wire, choose_wire, error_body, event_body

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
        description="Continue this conversation (backends that keep sessions: Agent Builder).",
    )
    history: list[HistoryTurn] = Field(
        default_factory=list,
        description="The conversation so far, oldest first, for backends that are sent it "
        "(Gemini); Agent Builder keeps its own through `session_id`.",
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
        runtime: Runtime = request.app.state.runtime
        wire = choose_wire(request.query_params.get("format"), request.headers.get("accept"))
        if wire is None:
            raise HTTPProblem(400, "unsupported_format", "format must be one of: sse, ndjson, text")
        body = validate(QABody, await read_json(request, runtime.settings.max_body_bytes))
        check_query(runtime, body.query)
        backend = backend_named(runtime, body.backend)
        history = tuple(Turn(turn.role, turn.text) for turn in body.history)
        question = QARequest(body.query, body.session_id, history)

        async def respond(started: Started) -> Response:
            return EventStream(
                _frames(started, runtime, wire),
                media_type=wire.media_type,
                headers=started.headers(),
                close=started.answer.aclose,
            )

        await answer(request, send, question, backend, respond)


router.routes.append(Route("/qa", QAEndpoint(), methods=["POST"], include_in_schema=False))

OPENAPI_PATH = {
    "post": {
        "summary": "Answer a question as a stream",
        "description": "SSE by default; NDJSON or plain text by `Accept` or `format`.",
        "operationId": "qa",
        "parameters": [
            {
                "name": "format",
                "in": "query",
                "required": False,
                "schema": {"enum": ["sse", "ndjson", "text"], "type": "string"},
            }
        ],
        **openapi(
            QABody,
            "The answer as a stream of events: `meta`, `delta`, `citation`, then one `done` "
            "or `error`.",
            ["text/event-stream", "application/x-ndjson", "text/plain"],
        ),
    }
}
"""``/qa`` in the OpenAPI document (a plain ASGI route has none of its own)."""
OPENAPI_SCHEMAS = openapi_schemas(QABody)


async def _frames(started: Started, runtime: Runtime, wire: Wire) -> AsyncIterator[bytes]:
    """``meta``, every event of the answer, and ``error`` if it fails midway; the events
    ready together go out as one chunk (``meta`` with the first)."""
    frames = [wire.frame(0, "meta", started.meta())]
    seq = 0
    async for batch in outcomes(started, runtime):
        for item in batch:
            seq += 1
            if isinstance(item, Failure):
                body = error_body(item.code, item.message, item.retryable)
                frames.append(wire.frame(seq, "error", body))
            else:
                frames.append(wire.frame(seq, item.type, event_body(item)))
        yield b"".join(frames)
        frames.clear()
