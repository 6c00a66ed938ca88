"""OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models``, answered through
the same pipeline as ``/qa`` (cache, coalescing, retries, fallback).

How the OpenAI request maps onto the gateway (the response shapes: ``gateway.formats.openai``):

- ``model`` names a configured backend; ``GET /v1/models`` lists them.
- The last ``user`` message is the query; the ``user`` and ``assistant`` messages before it
  are the conversation so far (``QARequest.history``), which Gemini is sent with the query.
  ``system`` (and tool) messages are not sent: each backend has its own system instruction.
  Sampling fields (``temperature``, ``max_tokens``, ...), ``user`` and other
  fields OpenAI clients send are accepted and ignored; ``n`` other than 1 is refused.
- Agent Builder keeps the conversation itself, in sessions, and is sent the query alone:
  every answer carries the extension field ``session_id``; send it back as the extension
  request field ``session_id`` (``extra_body={"session_id": ...}`` in the openai SDK).
  ``user`` keeps its OpenAI meaning, an end-user id, so it is not overloaded for this.
- Errors keep the gateway's one body, ``{"error": {"code", "message", "retryable"}}``, which
  the openai SDK reads (``message``, ``code``). Before the first chunk it comes with the same
  status as from ``/qa``; a non-streamed answer that fails midway gets the status ``/qa``
  gives that failure before its first event.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backends.base import QARequest, Turn
from gateway.formats.openai import ChatChunks, ChatCompletion
from gateway.http import openapi
from gateway.http.errors import HTTPProblem
from gateway.http.pipeline import check_history, check_query, deliver, read_body
from gateway.runtime import Runtime

router = APIRouter(prefix="/v1")

_ROLES: dict[str, Literal["user", "model"]] = {"user": "user", "assistant": "model"}


class Part(BaseModel):
    """One part of a message's content; only ``text`` parts can be answered."""

    type: str
    text: str = ""


class Message(BaseModel):
    role: str
    content: str | list[Part] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatBody(BaseModel):
    """The fields of an OpenAI chat completion request the gateway reads; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="A configured backend (see `GET /v1/models`).")
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] | None = Field(None, description="Only one choice is supported.")
    session_id: str | None = Field(
        None, min_length=1, max_length=256, description="Extension: continue this session."
    )


class ChatCompletions:
    """``POST /v1/chat/completions``: answer the last user message as a chat completion,
    streamed if ``stream`` is true. A plain ASGI app, like ``/qa``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        body = await read_body(request, ChatBody)
        query, history = conversation(body.messages)
        check_query(request, query, "messages")
        check_history(request, history, "messages")
        question = QARequest(query, body.session_id, history)
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            await deliver(request, send, question, body.model, ChatChunks(usage))
        else:
            await deliver(request, send, question, body.model, ChatCompletion())


router.routes.append(
    Route("/v1/chat/completions", ChatCompletions(), methods=["POST"], include_in_schema=False)
)
OPENAPI_PATH = {
    "post": openapi.operation(
        ChatBody,
        "A `chat.completion`, or with `stream` true its `chat.completion.chunk`s as "
        "server-sent events ending in `data: [DONE]`.",
        ["application/json", "text/event-stream"],
        summary="Chat Completions",
        description="The OpenAI chat completions API over the same answering path as `/qa`.",
        operationId="chat_completions",
    )
}
"""``/v1/chat/completions`` in the OpenAPI document."""
OPENAPI_SCHEMAS = openapi.schemas(ChatBody)


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    """The configured backends as models; `id` is what `model` takes."""
    runtime: Runtime = request.app.state.runtime
    return {
        "object": "list",
        "data": [
            {
                "id": entry["name"],
                "object": "model",
                "created": 0,  # unknown: a backend is configuration, not a release
                "owned_by": "google",
                "backend_type": entry["type"],
                "upstream_model": entry["model"],
                "emulated": entry["emulated"],
            }
            for entry in runtime.catalog()
        ],
    }


def conversation(messages: list[Message]) -> tuple[str, tuple[Turn, ...]]:
    """The last ``user`` message's text, and the ``user`` and ``assistant`` turns before it
    that have text; 422 if there is no user message or a turn is not text."""
    turns = [
        (role, _text(message))
        for message in messages
        if (role := _ROLES.get(message.role)) is not None
    ]
    last = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
    if last is None:
        raise HTTPProblem(422, "invalid_request", "messages: there is no user message")
    return turns[last][1], tuple(Turn(role, text) for role, text in turns[:last] if text)


def _text(message: Message) -> str:
    if not isinstance(message.content, list):
        return message.content or ""
    if any(part.type != "text" for part in message.content):
        raise HTTPProblem(422, "invalid_request", "messages: only text content is supported")
    return "".join(part.text for part in message.content)
