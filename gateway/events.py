"""The JSON form of events: what the formats send, the cache stores, shared flights carry
and the terminal client reads. One codec, so the four never disagree."""

from __future__ import annotations

from typing import Any

from backends.base import Citation, Delta, Done, Event, Source, Usage

Body = dict[str, Any]


def event_body(event: Event) -> Body:
    """The JSON body of a backend event, without its type."""
    if isinstance(event, Delta):
        return {"text": event.text}
    if isinstance(event, Citation):
        return {
            "start": event.start,
            "end": event.end,
            "sources": [
                {"title": s.title, "uri": s.uri}
                | ({"snippet": s.snippet} if s.snippet is not None else {})
                for s in event.sources
            ],
        }
    body: Body = {"finish_reason": event.finish_reason, "usage": None}
    if event.usage is not None:
        usage = event.usage
        body["usage"] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        }
        if usage.cached_tokens is not None:
            body["usage"]["cached_tokens"] = usage.cached_tokens
        if usage.reasoning_tokens is not None:
            body["usage"]["reasoning_tokens"] = usage.reasoning_tokens
    if event.session_id is not None:
        body["session_id"] = event.session_id
    if event.skip_reasons:
        body["skip_reasons"] = list(event.skip_reasons)
    if event.related_questions:
        body["related_questions"] = list(event.related_questions)
    return body


def event_from_body(kind: str, body: Body) -> Event:
    """The event ``event_body`` made ``body`` from (for replays); raises on a malformed body."""
    if kind == "delta":
        return Delta(body["text"])
    if kind == "citation":
        sources = tuple(Source(s["title"], s["uri"], s.get("snippet")) for s in body["sources"])
        return Citation(body["start"], body["end"], sources)
    if kind == "done":
        usage = body["usage"]
        return Done(
            body["finish_reason"],
            Usage(
                usage["prompt_tokens"],
                usage["completion_tokens"],
                usage["total_tokens"],
                usage.get("cached_tokens"),
                usage.get("reasoning_tokens"),
            )
            if usage is not None
            else None,
            body.get("session_id"),
            tuple(body.get("skip_reasons", ())),
            tuple(body.get("related_questions", ())),
        )
    raise ValueError(f"unknown event type {kind!r}")


def error_body(code: str, message: str, retryable: bool) -> Body:
    """The JSON body of a terminal ``error``."""
    return {"code": code, "message": message, "retryable": retryable}
