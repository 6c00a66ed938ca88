"""OpenAI-compatible ``POST /v1/chat/completions`` and ``GET /v1/models``, answered through
the same pipeline as ``/qa`` (cache, coalescing, retries, fallback).

How the OpenAI request maps onto the gateway (the response shapes: ``gateway.formats.openai``):

- ``model`` names a configured backend; ``GET /v1/models`` lists them.
- The last ``user`` message is the query; the ``user`` and ``assistant`` messages before it
  are the conversation so far (``QARequest.history``), which Gemini is sent with the query.
  ``system`` and ``developer`` messages are the request's ``system`` instructions (Gemini's
  system instruction, after the configured one; Agent Builder's preamble).
- ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``,
  ``presence_penalty``, ``frequency_penalty`` and ``response_format`` (``json_object``: a JSON
  answer; ``json_schema``: one following the schema) are the request's generation settings,
  refused like those of ``/qa`` where the backend does not take them. What the gateway
  cannot do is refused, never ignored: ``n`` > 1, ``tools``, ``functions``,
  ``tool_choice``, ``logprobs``, audio output and non-text content parts are 400
  ``unsupported_parameter`` with ``param`` naming the field. ``user`` goes to the request log.
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backends.base import Generation, QARequest, Turn
from gateway.formats.openai import ChatChunks, ChatCompletion
from gateway.http import openapi
from gateway.http.auth import allowed_backends
from gateway.http.errors import HTTPProblem
from gateway.http.pipeline import check_history, check_query, deliver, read_body
from gateway.runtime import Runtime
from gateway.upstream.trace import Trace

router = APIRouter(prefix="/v1")

_ROLES: dict[str, Literal["user", "model"]] = {"user": "user", "assistant": "model"}


_UNSUPPORTED = ("tools", "functions", "tool_choice", "function_call", "audio", "top_logprobs")
"""Fields whose mere presence asks for what the gateway cannot do."""


class Part(BaseModel):
    """One part of a message's content; only ``text`` parts can be answered."""

    type: str
    text: str = ""


class Message(BaseModel):
    role: str
    content: str | list[Part] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class JSONSchema(BaseModel):
    name: str = "answer"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchema | None = None


class ChatBody(BaseModel):
    """The fields of an OpenAI chat completion request the gateway reads; what it cannot do
    is refused, other fields are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="A configured backend (see `GET /v1/models`).")
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, description="Only one choice is supported.")
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    user: str | None = Field(None, max_length=256, description="An end-user id, for the log.")
    session_id: str | None = Field(
        None, min_length=1, max_length=256, description="Extension: continue this session."
    )

    def refuse_unsupported(self) -> None:
        """400 ``unsupported_parameter`` for what the gateway would otherwise ignore."""
        extra = self.model_extra or {}
        asked = [name for name in _UNSUPPORTED if extra.get(name) not in (None, [], False)]
        if self.n is not None and self.n > 1:
            asked.insert(0, "n")
        if self.logprobs:
            asked.append("logprobs")
        if "audio" in (extra.get("modalities") or ()):
            asked.append("modalities")
        if asked:
            raise _unsupported(asked[0], f"{asked[0]} is not supported by this gateway")

    def generation(self) -> Generation | None:
        """The sampling fields as the request's generation settings (422 if out of range)."""
        fields: dict[str, Any] = {
            "max_output_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop_sequences": [self.stop] if isinstance(self.stop, str) else self.stop,
            "seed": self.seed,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
        }
        answer_format = self.response_format
        if answer_format is not None and answer_format.type != "text":
            fields["response_mime_type"] = "application/json"
            if answer_format.json_schema is not None:
                fields["response_schema"] = answer_format.json_schema.schema_
        given = {name: value for name, value in fields.items() if value is not None}
        if not given:
            return None
        try:
            return Generation(**given)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            raise HTTPProblem(
                422, "invalid_request", f"{first['loc'][0]}: {first['msg']}"
            ) from None


class ChatCompletions:
    """``POST /v1/chat/completions``: answer the last user message as a chat completion,
    streamed if ``stream`` is true. A plain ASGI app, like ``/qa``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        body = await read_body(request, ChatBody)
        body.refuse_unsupported()
        query, history, system = conversation(body.messages)
        check_query(request, query, "messages")
        check_history(request, history, "messages")
        trace: Trace | None = scope.get("state", {}).get("trace")
        if trace is not None:
            trace.user = body.user
        question = QARequest(query, body.session_id, history, body.generation(), system)
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


@router.get("/models", response_model=None)
async def models(request: Request) -> dict[str, Any]:
    """The backends this client may use, as models; `id` is what `model` takes."""
    runtime: Runtime = request.app.state.runtime
    allowed = allowed_backends(request)
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
            if allowed is None or entry["name"] in allowed
        ],
    }


def conversation(messages: list[Message]) -> tuple[str, tuple[Turn, ...], str | None]:
    """The last ``user`` message's text, the ``user`` and ``assistant`` turns before it that
    have text, and the ``system``/``developer`` messages' text (None without any); 422 if
    there is no user message, 400 for content that is not text."""
    instructions = [_text(m) for m in messages if m.role in ("system", "developer")]
    system = "\n\n".join(text for text in instructions if text) or None
    turns = [
        (role, _text(message))
        for message in messages
        if (role := _ROLES.get(message.role)) is not None
    ]
    last = max((i for i, (role, _) in enumerate(turns) if role == "user"), default=None)
    if last is None:
        raise HTTPProblem(422, "invalid_request", "messages: there is no user message")
    history = tuple(Turn(role, text) for role, text in turns[:last] if text)
    return turns[last][1], history, system


def _text(message: Message) -> str:
    if not isinstance(message.content, list):
        return message.content or ""
    for part in message.content:
        if part.type != "text":
            raise _unsupported("messages", f"messages: {part.type} content is not supported")
    return "".join(part.text for part in message.content)


def _unsupported(param: str, message: str) -> HTTPProblem:
    return HTTPProblem(400, "unsupported_parameter", message, param=param)
