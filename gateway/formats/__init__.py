"""Events in, bytes out: the formats an answer is sent in.

``/qa`` speaks SSE (default), NDJSON and text, chosen by ``choose``; the OpenAI-compatible
route speaks chat completion chunks or one completion (``gateway.formats.openai``).
"""

from __future__ import annotations

from gateway.formats.base import Failure, Format, Framed, Head, Outcome, Outcomes, ends
from gateway.formats.ndjson import NDJSON
from gateway.formats.sse import SSE
from gateway.formats.text import Text

__all__ = [
    "NDJSON",
    "SSE",
    "Failure",
    "Format",
    "Framed",
    "Head",
    "Outcome",
    "Outcomes",
    "Text",
    "ends",
]

QA_FORMATS: dict[str, Framed] = {"sse": SSE(), "ndjson": NDJSON(), "text": Text()}
"""The formats of ``/qa`` by their ``?format=`` name."""
_BY_MEDIA_TYPE = {
    "text/event-stream": "sse",
    "application/x-ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "text/plain": "text",
}


def choose(format_param: str | None, accept: str | None) -> Framed | None:
    """``?format=`` wins; else the first media type in ``Accept`` we speak; else SSE.

    None means ``format_param`` names no format.
    """
    if format_param is not None:
        return QA_FORMATS.get(format_param.lower())
    for item in (accept or "").split(","):
        name = _BY_MEDIA_TYPE.get(item.split(";", 1)[0].strip().lower())
        if name is not None:
            return QA_FORMATS[name]
    return QA_FORMATS["sse"]
