"""The three wire formats of ``/qa``: SSE (default), NDJSON and plain text.

Every stream is ``meta``, then the backend's events, then exactly one terminal ``done``
or ``error``. A frame is built from a sequence number, an event type and a JSON body.
"""

from __future__ import annotations

from typing import Any

import orjson

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
        body["usage"] = {
            "prompt_tokens": event.usage.prompt_tokens,
            "completion_tokens": event.usage.completion_tokens,
            "total_tokens": event.usage.total_tokens,
        }
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
            Usage(usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
            if usage is not None
            else None,
            body.get("session_id"),
            tuple(body.get("skip_reasons", ())),
            tuple(body.get("related_questions", ())),
        )
    raise ValueError(f"unknown event type {kind!r}")


def error_body(code: str, message: str, retryable: bool) -> Body:
    return {"code": code, "message": message, "retryable": retryable}


class Wire:
    """Server-sent events: ``id:``, ``event:`` and one-line JSON ``data:`` per event."""

    name = "sse"
    media_type = "text/event-stream"

    def frame(self, seq: int, kind: str, body: Body) -> bytes:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, kind.encode(), orjson.dumps(body))


class NDJSONWire(Wire):
    """One JSON object per line, its type in ``type``."""

    name = "ndjson"
    media_type = "application/x-ndjson"

    def frame(self, seq: int, kind: str, body: Body) -> bytes:
        return orjson.dumps({"type": kind, **body}) + b"\n"


class TextWire(Wire):
    """The answer text only; a failure mid-stream appends one ``[error]`` line."""

    name = "text"
    media_type = "text/plain; charset=utf-8"

    def frame(self, seq: int, kind: str, body: Body) -> bytes:
        if kind == "delta":
            return str(body["text"]).encode()
        if kind == "error":
            return f"\n[error] {body['code']}: {body['message']}\n".encode()
        if kind == "done":
            return b"\n"
        return b""


WIRES: dict[str, Wire] = {wire.name: wire for wire in (Wire(), NDJSONWire(), TextWire())}
_BY_MEDIA_TYPE = {
    "text/event-stream": "sse",
    "application/x-ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "text/plain": "text",
}


def choose_wire(format_param: str | None, accept: str | None) -> Wire | None:
    """``?format=`` wins; else the first media type in ``Accept`` we speak; else SSE.

    None means ``format_param`` names no format.
    """
    if format_param is not None:
        return WIRES.get(format_param.lower())
    for item in (accept or "").split(","):
        name = _BY_MEDIA_TYPE.get(item.split(";", 1)[0].strip().lower())
        if name is not None:
            return WIRES[name]
    return WIRES["sse"]
