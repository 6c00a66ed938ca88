"""A TCP proxy for tests that cuts one event stream mid-answer, as a flaky network would.

It forwards bytes both ways between a free loopback port and ``upstream``. The first
``GET /qa?…`` response it carries (an SSE stream, chunked) is cut once: after ``after_events``
events and ``then_bytes`` bytes of the next, both connections are closed. Each event stream
it carries also starts with ``retry: <retry_ms>``, so a browser reconnects after that long
rather than its default of seconds (the gateway sends no ``retry:``).
"""

from __future__ import annotations

import asyncio
import contextlib

STREAM_REQUEST = b"GET /qa?"
REQUESTS = (b"GET ", b"POST ", b"HEAD ", b"OPTIONS ")


class CuttingProxy:
    """``url`` reaches ``upstream_port`` through the proxy; ``streams`` holds, for each event
    stream requested, the number of the connection that carried it; ``cuts`` how many it
    cut."""

    def __init__(
        self, upstream_port: int, after_events: int, then_bytes: int = 0, retry_ms: int = 100
    ) -> None:
        self.upstream_port = upstream_port
        self.after_events = after_events
        self.then_bytes = then_bytes
        self.retry_ms = retry_ms
        self.connections = 0
        self.streams: list[int] = []
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        link = _Link(self, self.connections)
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.upstream_port
        )
        pumps = [
            asyncio.create_task(link.requests(reader, upstream_writer)),
            asyncio.create_task(link.responses(upstream_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for side in (writer, upstream_writer):
                side.close()
                with contextlib.suppress(OSError):
                    await side.wait_closed()


class _Link:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: CuttingProxy, number: int) -> None:
        self.proxy = proxy
        self.number = number
        self.streaming = False
        """The response now under way answers an event stream request."""
        self.cutting = False
        self.head: bytes | None = b""
        self.events = 0
        self.last = b""
        self.left: int | None = None
        """Once ``after_events`` are through: how many bytes more before the cut."""

    async def requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if data.startswith(REQUESTS):  # a new request on this connection
                self.streaming, self.head = data.startswith(STREAM_REQUEST), b""
                if self.streaming:
                    self.proxy.streams.append(self.number)
                    self.cutting = len(self.proxy.streams) == 1
            writer.write(data)
            await writer.drain()

    async def responses(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            forward, cut = self._through(data)
            writer.write(forward)
            await writer.drain()
            if cut:
                self.proxy.cuts += 1
                return

    def _through(self, data: bytes) -> tuple[bytes, bool]:
        """What of ``data`` goes to the client, and whether the connection is cut after it."""
        if not self.streaming:
            return data, False
        prefix = b""
        if self.head is not None:  # the response head is still arriving
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return b"", False
            head, data = self.head.split(b"\r\n\r\n", 1)
            self.head = None
            assert b"transfer-encoding: chunked" in head.lower(), head
            retry = b"retry: %d\n\n" % self.proxy.retry_ms
            prefix = head + b"\r\n\r\n" + b"%x\r\n%s\r\n" % (len(retry), retry)
        if not self.cutting:
            return prefix + data, False
        if self.left is None:
            seen = self.last + data
            ends = [i for i in range(len(seen) - 1) if seen[i : i + 2] == b"\n\n"]
            ends = [end + 2 - len(self.last) for end in ends if end + 2 > len(self.last)]
            self.last = data[-1:]
            if self.events + len(ends) < self.proxy.after_events:
                self.events += len(ends)
                return prefix + data, False
            end = ends[self.proxy.after_events - self.events - 1]
            self.events = self.proxy.after_events
            self.left = self.proxy.then_bytes
            prefix, data = prefix + data[:end], data[end:]
        taken = data[: self.left]
        self.left -= len(taken)
        return prefix + taken, self.left == 0
