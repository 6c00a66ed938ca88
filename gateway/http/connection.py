"""One client connection: uvicorn's httptools protocol, with limits on the request head.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``, configured from
``keep_alive_s``) but bounds nothing before a request starts: not the size of its head, not
its header count, not how long it may take to arrive (a connection that never sends a
request stays open for good), nor how many connections are open. ``LimitedHttp`` adds those,
each answered in the gateway's error shape, then the connection is closed:

- a head larger than ``max_header_bytes`` or with more than ``max_headers`` headers: 431
  (counted as bytes arrive, so a huge head is refused before it is held);
- a head not complete ``head_timeout_s`` after the connection opened or the head began: 408
  (a connection that sent nothing is closed silently);
- a request on a connection beyond ``max_connections`` open ones: 503, with ``Retry-After``.

(uvicorn's own ``limit_concurrency`` answers a plain-text 503 outside that shape.)

A response's head goes out with its first body chunk, in one write: uvicorn writes the head
on ``http.response.start``, a syscall (and on loopback, a wake-up of the reader) of its own.
Every write goes out at once (``TCP_NODELAY``), however the listening socket was made.
"""

from __future__ import annotations

import asyncio
import socket
import weakref
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

LINGER_S = 1.0
"""After a refusal, how long the connection reads (and drops) what the client still sends."""


class ServerSettings(BaseModel):
    """``[server]``: what one instance accepts from its clients (defaults fit Cloud Run,
    which sends an instance at most 1,000 requests at once)."""

    model_config = ConfigDict(extra="forbid")

    max_connections: int = Field(2000, gt=0)
    """Open connections, idle keep-alive ones included; a request on one beyond gets 503."""
    keep_alive_s: int = Field(5, gt=0)
    """An idle keep-alive connection is closed after this long."""
    head_timeout_s: float = Field(10.0, gt=0)
    """A request head must be complete this long after the connection opened (or after its
    first byte, on a kept-alive connection); else 408 and the connection is closed."""
    max_header_bytes: int = Field(32 * 1024, gt=0)
    """The request line and headers together; a larger head gets 431."""
    max_headers: int = Field(100, gt=0)
    """A request with more header lines gets 431."""


class _Refused(Exception):
    """Stops the parser once the request has been answered with a refusal."""


class LimitedHttp(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the limits of ``ServerSettings`` (``with_limits``)."""

    limits: ClassVar[ServerSettings] = ServerSettings()

    @classmethod
    def with_limits(cls, limits: ServerSettings) -> type[LimitedHttp]:
        """The protocol class to give uvicorn (``Config(http=...)``)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._arrived = 0  # bytes received while the current head is incomplete
        self._head_bytes = 0  # of the current head's request line and headers, as parsed
        self._header_count = 0
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # asyncio sets this only on sockets made with TCP's protocol number: one made by
            # `socket.socket()` and handed to the server would hold each write after the
            # first until the client's delayed ACK (~40 ms).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._arrived += len(data)
        super().data_received(data)
        if self._in_head and self._arrived > self.limits.max_header_bytes and not self._refused:
            self._refuse(431, "headers_too_large", self._too_large())

    def send_400_response(self, msg: str) -> None:
        if not self._refused:  # else the parser stopped because we refused
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = self._header_count = 0
        if self._deadline is None:
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4  # ": " and CRLF
        self._header_count += 1
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._arrived = False, 0
        before = self.cycle
        self._disarm()
        limits = self.limits
        if self._head_bytes > limits.max_header_bytes:
            self._refuse(431, "headers_too_large", self._too_large())
        elif self._header_count > limits.max_headers:
            message = f"the request has more than {limits.max_headers} headers"
            self._refuse(431, "too_many_headers", message)
        elif len(self.connections) > limits.max_connections:
            message = f"the gateway has {limits.max_connections} connections open; retry soon"
            self._refuse(503, "too_many_connections", message, b"retry-after: 1\r\n")
        else:
            super().on_headers_complete()
            if self.cycle is not before and self.cycle is not None:
                self.cycle.transport = HeadWithBody(self.cycle, self.transport, self.loop)
            return
        raise _Refused

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._arrived = True, 0  # what follows is the next request's head

    def _too_large(self) -> str:
        return f"the request head exceeds {self.limits.max_header_bytes} bytes"

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.limits.head_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        idle = self._arrived == 0 and self.cycle is None
        answering = self.cycle is not None and not self.cycle.response_complete
        if idle or answering:
            self._refused = True
            self.transport.close()
        else:
            message = f"the request head did not arrive within {self.limits.head_timeout_s:g} s"
            self._refuse(408, "request_timeout", message)

    def _refuse(self, status: int, code: str, message: str, extra: bytes = b"") -> None:
        """Answer ``status`` with the gateway's error body, then close the connection."""
        self._refused = True
        self._disarm()
        body = orjson.dumps({"error": {"code": code, "message": message}})
        head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
        self.transport.write(
            b"".join([STATUS_LINE[status], head % len(body), extra, b"\r\n", body])
        )
        # Closing with the client's bytes unread would reset the connection, and the client
        # could lose the answer with it: end our side, drop what still comes, close later.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


class HeadWithBody(asyncio.Transport):
    """The connection as one response cycle writes to it: the response head is held until
    the first body chunk and both go out as one write; a head with no body written in the
    same step goes out on the loop's next turn. (uvicorn's cycle only writes, closes and
    asks ``is_closing``.)"""

    def __init__(
        self,
        cycle: RequestResponseCycle,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__()
        self._cycle = weakref.ref(cycle)  # which refers to this: no cycle for the collector
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None
        self._started = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        cycle = self._cycle()
        if not self._started and cycle is not None and cycle.response_started:  # the head
            self._started = True
            self._head = bytes(data)
            self._loop.call_soon(self.flush)
            return
        if self._head is not None:
            data, self._head = self._head + bytes(data), None
        self._transport.write(data)

    def flush(self) -> None:
        """Write the held head, if any."""
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()
