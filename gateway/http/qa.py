"""``POST /qa``: validate the question, then answer it as a stream in the chosen format."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backends.base import QARequest, Turn
from gateway import formats
from gateway.http import openapi
from gateway.http.errors import HTTPProblem
from gateway.http.pipeline import check_history, check_query, deliver, read_body

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
        chosen = formats.choose(request.query_params.get("format"), request.headers.get("accept"))
        if chosen is None:
            raise HTTPProblem(400, "unsupported_format", "format must be one of: sse, ndjson, text")
        body = await read_body(request, QABody)
        check_query(request, body.query)
        history = tuple(Turn(turn.role, turn.text) for turn in body.history)
        check_history(request, history)
        question = QARequest(body.query, body.session_id, history)
        await deliver(request, send, question, body.backend, chosen)


router.routes.append(Route("/qa", QAEndpoint(), methods=["POST"], include_in_schema=False))

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
    )
}
"""``/qa`` in the OpenAPI document (a plain ASGI route has none of its own)."""
OPENAPI_SCHEMAS = openapi.schemas(QABody)
