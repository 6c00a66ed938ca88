"""A server that answers every request with a canned SSE answer, to measure the load generator.

``python -m bench.trivial --port P --events N`` answers any HTTP/1.1 request with the same
chunked ``text/event-stream`` body the gateway sends (``meta``, N ``delta``, ``done``, one
chunk per frame), all in one write. It does no other work, so a load run against it shows
the ceiling of the load generator itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import cast

import uvloop


def canned_response(events: int) -> bytes:
    frames = [b'id: 0\nevent: meta\ndata: {"request_id":"trivial"}\n\n']
    delta = b'id: %d\nevent: delta\ndata: {"text":"word "}\n\n'
    frames += [delta % i for i in range(1, events + 1)]
    frames.append(b'id: %d\nevent: done\ndata: {"finish_reason":"stop"}\n\n' % (events + 1))
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(frame), frame) for frame in frames)
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    return head + chunks + b"0\r\n\r\n"


class Canned(asyncio.Protocol):
    def __init__(self, response: bytes) -> None:
        self.response = response
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buffer[:end]).lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buffer) < end + 4 + length:
                return
            del self.buffer[: end + 4 + length]
            assert self.transport is not None
            self.transport.write(self.response)


async def serve(port: int, events: int) -> None:
    response = canned_response(events)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Canned(response), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.trivial")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, default=20)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port, args.events))


if __name__ == "__main__":
    main()
