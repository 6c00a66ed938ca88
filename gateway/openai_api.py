"""OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models``, answered through
the same path as ``/qa`` (cache, coalescing, retries, fallback).

How the OpenAI shapes map onto the gateway:

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
- Citations ride in the extension field ``citations``: ``[{"start", "end", "sources"}]``,
  ``start``/``end`` in characters of the answer text, as in ``/qa``. Streaming puts each on a
  chunk of its own (with an empty delta); a completion carries them all.
- ``finish_reason``: ``max_tokens`` -> ``length``; safety-like reasons -> ``content_filter``;
  everything else -> ``stop``. An answer the upstream declined (``skipped``) is an empty
  ``stop`` with the extension field ``skip_reasons``; ``related_questions`` ride alike.
- Usage is the upstream's count, or ``null`` where the backend reports none (Agent Builder).
- Errors keep the gateway's one body, ``{"error": {"code", "message", "retryable"}}``, which
  the openai SDK reads (``message``, ``code``). Before the first chunk it comes with the same
  status as from ``/qa``; after it, as a ``data: {"error": ...}`` line that ends the stream
  without ``[DONE]`` (the SDK raises ``APIError``). A non-streamed answer that fails midway
  gets the status ``/qa`` gives that failure before its first event.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backends.base import Citation, Delta, Done, PermanentError, QARequest, TransientError, Turn
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
from gateway.catalog import configured
from gateway.errors import HTTPProblem
from gateway.runtime import Runtime
from gateway.streaming import EventStream
from gateway.wire import Body, error_body, event_body

router = APIRouter(prefix="/v1")

_CONTENT_FILTER = ("safety", "recitation", "blocklist", "prohibited_content", "spii")
_FINISH = {"max_tokens": "length"} | dict.fromkeys(_CONTENT_FILTER, "content_filter")
_DONE = b"data: [DONE]\n\n"
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
        runtime: Runtime = request.app.state.runtime
        body = validate(ChatBody, await read_json(request, runtime.settings.max_body_bytes))
        query, history = conversation(body.messages)
        check_query(runtime, query, "messages")
        backend = backend_named(runtime, body.model)
        question = QARequest(query, body.session_id, history)

        async def respond(started: Started) -> Response:
            reply = Reply(
                f"chatcmpl-{started.trace.request_id}",
                int(time.time()),
                started.answer.backend.name,
            )
            if body.stream:
                usage = body.stream_options is not None and body.stream_options.include_usage
                return EventStream(
                    _chunks(started, runtime, reply, usage),
                    media_type="text/event-stream",
                    headers=started.headers(),
                    close=started.answer.aclose,
                )
            return Response(
                orjson.dumps(await _completion(started, runtime, reply)),
                media_type="application/json",
                headers=started.headers(),
            )

        await answer(request, send, question, backend, respond)


router.routes.append(
    Route("/v1/chat/completions", ChatCompletions(), methods=["POST"], include_in_schema=False)
)
OPENAPI_PATH = {
    "post": {
        "summary": "Chat Completions",
        "description": "The OpenAI chat completions API over the same answering path as `/qa`.",
        "operationId": "chat_completions",
        **openapi(
            ChatBody,
            "A `chat.completion`, or with `stream` true its `chat.completion.chunk`s as "
            "server-sent events ending in `data: [DONE]`.",
            ["application/json", "text/event-stream"],
        ),
    }
}
"""``/v1/chat/completions`` in the OpenAPI document."""
OPENAPI_SCHEMAS = openapi_schemas(ChatBody)


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
            for entry in configured(runtime)
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


def finish_reason(reason: str) -> str:
    """The OpenAI ``finish_reason`` for a ``Done.finish_reason``."""
    return _FINISH.get(reason, "stop")


def done_extensions(done: Done) -> Body:
    """What ``done`` says beyond finish reason and usage (session id, skip reasons, ...)."""
    return {k: v for k, v in event_body(done).items() if k not in ("finish_reason", "usage")}


@dataclass(frozen=True, slots=True)
class Reply:
    """What every chunk of one answer, or its completion, repeats."""

    id: str
    created: int
    model: str

    def body(self, kind: str, choices: list[Body], **extensions: Any) -> Body:
        head = {"id": self.id, "object": kind, "created": self.created, "model": self.model}
        return head | {"choices": choices} | extensions

    def chunk(self, delta: Body, finish: str | None = None, **extensions: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _data(self.body("chat.completion.chunk", [choice], **extensions))


def _data(body: Body) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def _chunks(
    started: Started, runtime: Runtime, reply: Reply, include_usage: bool
) -> AsyncIterator[bytes]:
    """The role chunk, a chunk per event, the usage chunk if asked for, then ``[DONE]``;
    or, when the answer fails, an ``error`` line last."""
    lines = [reply.chunk({"role": "assistant", "content": ""})]
    async for batch in outcomes(started, runtime):
        for item in batch:
            if isinstance(item, Failure):
                lines.append(_data({"error": error_body(item.code, item.message, item.retryable)}))
            elif isinstance(item, Delta):
                lines.append(reply.chunk({"content": item.text}))
            elif isinstance(item, Citation):
                lines.append(reply.chunk({}, citations=[event_body(item)]))
            else:
                extensions = done_extensions(item)
                lines.append(reply.chunk({}, finish_reason(item.finish_reason), **extensions))
                if include_usage:
                    usage = event_body(item)["usage"]
                    lines.append(_data(reply.body("chat.completion.chunk", [], usage=usage)))
                lines.append(_DONE)
        yield b"".join(lines)  # what was ready together, in one write
        lines.clear()


async def _completion(started: Started, runtime: Runtime, reply: Reply) -> Body:
    """The whole answer as one ``chat.completion``; an error status if it fails midway."""
    items = [item async for batch in outcomes(started, runtime) for item in batch]
    end = items[-1]
    if isinstance(end, Failure):
        error = (TransientError if end.retryable else PermanentError)(end.code, end.message)
        raise HTTPProblem.from_backend(error)
    assert isinstance(end, Done), "every answer ends in done"
    message = {
        "role": "assistant",
        "content": "".join(i.text for i in items if isinstance(i, Delta)),
    }
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": finish_reason(end.finish_reason),
        "logprobs": None,
    }
    return reply.body(
        "chat.completion",
        [choice],
        usage=event_body(end)["usage"],
        citations=[event_body(i) for i in items if isinstance(i, Citation)],
        **done_extensions(end),
    )
