"""A minimal HTTP/1.1 client for the load: keep-alive connections, chunked SSE answers.

One ``Connection`` is one socket with one request in flight at a time. It writes the request
bytes, parses the status line, headers and chunked body as bytes arrive, and notes the time of
the first event after ``meta`` (frame 2), of the terminating chunk, and optionally of every
frame. SSE frames end in a blank line and their JSON is one line, so frames are counted by
``\\n\\n``. No per-request objects beyond one ``Exchange``; no header dict.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

import orjson

_HEAD, _SIZE, _DATA, _TRAILER, _FIXED = range(5)


class Exchange:
    """One request and what came back."""

    __slots__ = (
        "cache",
        "error",
        "first",
        "frames",
        "last",
        "stamps",
        "start",
        "status",
        "stream_id",
    )

    def __init__(self, start: float, stamps: list[float] | None) -> None:
        self.start = start
        self.first = 0.0
        self.last = 0.0
        self.frames = 0
        self.status = 0
        self.cache = b""
        self.stream_id = b""
        self.error: str | None = None
        self.stamps = stamps  # arrival time of every frame, when asked for

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200


def qa_request(query: str, path: bytes = b"/qa") -> bytes:
    body = orjson.dumps({"query": query})
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body)
    )


def resume_request(stream_id: bytes, after: int) -> bytes:
    """``GET /qa/streams/{stream_id}`` for the events after ``after``."""
    return b"GET /qa/streams/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: %d\r\n\r\n" % (
        stream_id,
        after,
    )


class Connection(asyncio.Protocol):
    """A keep-alive connection to the server under test."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.state = _HEAD
        self.need = 0
        self.exchange: Exchange | None = None
        self.waiter: asyncio.Future[Exchange] | None = None
        self.tail = b""  # last byte of the previous chunk, for a frame end split across chunks

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._finish(f"connection lost: {exc}")

    async def send(self, request: bytes, *, stamps: bool = False) -> Exchange:
        """Send one request; the exchange once the whole answer has arrived."""
        if self.transport is None:
            raise ConnectionError("closed")
        self.exchange = Exchange(time.monotonic(), [] if stamps else None)
        self.waiter = asyncio.get_running_loop().create_future()
        self.state, self.tail = _HEAD, b""
        self.transport.write(request)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        now = time.monotonic()
        buffer = self.buffer
        while self.exchange is not None:
            if self.state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._head(bytes(buffer[:end]))
                del buffer[: end + 4]
            elif self.state == _SIZE:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(buffer[:end].split(b";", 1)[0], 16)
                del buffer[: end + 2]
                self.state, self.need = (_TRAILER, 2) if size == 0 else (_DATA, size)
            elif len(buffer) < self.need + (2 if self.state == _DATA else 0):
                return
            elif self.state == _DATA:
                self._body(buffer[: self.need], now)
                del buffer[: self.need + 2]
                self.state = _SIZE
            else:  # the last chunk's CRLF, or a fixed-length body
                del buffer[: self.need]
                self._finish(None, now)

    def _head(self, head: bytes) -> None:
        exchange = self.exchange
        assert exchange is not None
        lines = head.split(b"\r\n")
        exchange.status = int(lines[0].split(b" ", 2)[1])
        chunked, length = False, 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"content-length":
                length = int(value)
            elif name == b"x-cache":
                exchange.cache = value.strip().upper()
            elif name == b"x-stream-id":
                exchange.stream_id = value.strip()
        self.state, self.need = (_SIZE, 0) if chunked else (_FIXED, length)

    def _body(self, chunk: bytearray, now: float) -> None:
        exchange = self.exchange
        assert exchange is not None
        found = chunk.count(b"\n\n") + (self.tail == b"\n" and chunk[:1] == b"\n")
        self.tail = bytes(chunk[-1:])
        if not found:
            return
        before = exchange.frames
        exchange.frames += found
        if before < 2 <= exchange.frames:
            exchange.first = now
        if exchange.stamps is not None:
            exchange.stamps.extend([now] * found)

    def _finish(self, error: str | None, now: float | None = None) -> None:
        exchange, waiter = self.exchange, self.waiter
        self.exchange = self.waiter = None
        if exchange is None or waiter is None or waiter.done():
            return
        exchange.last = now if now is not None else time.monotonic()
        exchange.error = error
        waiter.set_result(exchange)
