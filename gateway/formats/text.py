"""Plain text: the answer alone, for terminals and the simplest clients."""

from __future__ import annotations

from gateway.events import Body
from gateway.formats.base import Framed


class Text(Framed):
    """The answer text only; a failure mid-stream appends one ``[error]`` line."""

    media_type = "text/plain; charset=utf-8"

    def frame(self, seq: int, kind: str, body: Body) -> bytes:
        if kind == "delta":
            return str(body["text"]).encode()
        if kind == "error":
            return f"\n[error] {body['code']}: {body['message']}\n".encode()
        if kind == "done":
            return b"\n"
        return b""
