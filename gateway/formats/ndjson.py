"""Newline-delimited JSON: the events of ``/qa`` as one object per line."""

from __future__ import annotations

import orjson

from gateway.events import Body
from gateway.formats.base import Framed


class NDJSON(Framed):
    """One JSON object per line, its type in ``type``."""

    media_type = "application/x-ndjson"

    def frame(self, seq: int, kind: str, body: Body) -> bytes:
        return orjson.dumps({"type": kind, **body}) + b"\n"
