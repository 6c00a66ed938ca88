"""The OpenAI chat completion shapes of an answer: ``chat.completion.chunk`` events, or one
``chat.completion``.

- ``finish_reason``: ``max_tokens`` -> ``length``; safety-like reasons and an answer the
  upstream declined (``skipped``, with the extension field ``skip_reasons``) ->
  ``content_filter``; everything else -> ``stop``. ``session_id`` and ``related_questions``
  ride as extension fields.
- Citations ride in the extension field ``citations``: ``[{"start", "end", "sources"}]``.
  Streaming puts each on a chunk of its own (with an empty delta); a completion carries all.
- Usage is the upstream's count, or ``null`` where the backend reports none.
- A failure after the first chunk is a ``data: {"error": ...}`` line that ends the stream
  without ``[DONE]`` (the openai SDK raises ``APIError``); a completion that fails raises it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import orjson

from backends.base import Citation, Delta, Done, PermanentError, TransientError
from gateway.events import Body, event_body
from gateway.formats.base import Failure, Head, Outcomes

_CONTENT_FILTER = ("safety", "recitation", "blocklist", "prohibited_content", "spii", "skipped")
_FINISH = {"max_tokens": "length"} | dict.fromkeys(_CONTENT_FILTER, "content_filter")
_DONE = b"data: [DONE]\n\n"


def finish_reason(reason: str) -> str:
    """The OpenAI ``finish_reason`` for a ``Done.finish_reason``."""
    return _FINISH.get(reason, "stop")


def usage_of(done: Done) -> Body | None:
    """``done``'s usage in OpenAI's shape, with the token details Google reported."""
    usage: Body | None = event_body(done)["usage"]
    if usage is None:
        return None
    cached, reasoning = usage.pop("cached_tokens", None), usage.pop("reasoning_tokens", None)
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def done_extensions(done: Done) -> Body:
    """What ``done`` says beyond finish reason and usage (session id, skip reasons, ...)."""
    return {k: v for k, v in event_body(done).items() if k not in ("finish_reason", "usage")}


@dataclass(frozen=True, slots=True)
class Reply:
    """What every chunk of one answer, or its completion, repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def to(cls, head: Head) -> Reply:
        return cls(f"chatcmpl-{head.request_id}", int(time.time()), head.backend)

    def body(self, kind: str, choices: list[Body], **extensions: Any) -> Body:
        top = {"id": self.id, "object": kind, "created": self.created, "model": self.model}
        return top | {"choices": choices} | extensions

    def chunk(self, delta: Body, finish: str | None = None, **extensions: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _data(self.body("chat.completion.chunk", [choice], **extensions))


def _data(body: Body) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


class ChatChunks:
    """A streamed completion: the role chunk, a chunk per event, the usage chunk if asked
    for, then ``[DONE]``; or, when the answer fails, an ``error`` line last."""

    media_type = "text/event-stream"
    streamed = True

    def __init__(self, include_usage: bool = False) -> None:
        self.include_usage = include_usage

    async def encode(self, head: Head, outcomes: Outcomes) -> AsyncGenerator[bytes, None]:
        reply = Reply.to(head)
        lines = [reply.chunk({"role": "assistant", "content": ""})]
        async for batch in outcomes:
            for item in batch:
                if isinstance(item, Failure):
                    lines.append(_data({"error": item.body()}))
                elif isinstance(item, Delta):
                    lines.append(reply.chunk({"content": item.text}))
                elif isinstance(item, Citation):
                    lines.append(reply.chunk({}, citations=[event_body(item)]))
                else:
                    extensions = done_extensions(item)
                    lines.append(reply.chunk({}, finish_reason(item.finish_reason), **extensions))
                    if self.include_usage:
                        usage = usage_of(item)
                        lines.append(_data(reply.body("chat.completion.chunk", [], usage=usage)))
                    lines.append(_DONE)
            yield b"".join(lines)  # what was ready together, in one write
            lines.clear()


class ChatCompletion:
    """The whole answer as one ``chat.completion``; raises the failure if it fails midway."""

    media_type = "application/json"
    streamed = False

    async def encode(self, head: Head, outcomes: Outcomes) -> AsyncGenerator[bytes, None]:
        items = [item async for batch in outcomes for item in batch]
        end = items[-1]
        if isinstance(end, Failure):
            raise (TransientError if end.retryable else PermanentError)(end.code, end.message)
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
        yield orjson.dumps(
            Reply.to(head).body(
                "chat.completion",
                [choice],
                usage=usage_of(end),
                citations=[event_body(i) for i in items if isinstance(i, Citation)],
                **done_extensions(end),
            )
        )
