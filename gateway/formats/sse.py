"""Server-sent events, the default format of ``/qa``."""

from __future__ import annotations

import orjson

from gateway.events import Body
from gateway.formats.base import Framed


class SSE(Framed):
    """``id:`` (the event's sequence number), ``event:`` and one line of JSON ``data:``."""

    media_type = "text/event-stream"

    def frame(self, seq: int, kind: str, body: Body) -> bytes:
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, kind.encode(), orjson.dumps(body))
