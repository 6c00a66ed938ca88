"""How a response reaches the connection: ``LimitedHttp`` driven by request bytes, with a
transport that records each write (each one a syscall, and a segment on the wire): the head
goes with the first chunk, and an answer's last event with the end of the body."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from backends.emulator import Emulator
from gateway.app import create_app
from gateway.http.connection import LimitedHttp
from tests.support import parse_sse, settings_for, wait_for

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _connection(app: Any) -> LimitedHttp:
    """The protocol of one connection to ``app``, not yet connected."""
    config = Config(app, http=LimitedHttp, lifespan="off", log_level="warning")
    config.load()
    return LimitedHttp(config=config, server_state=ServerState(), app_state={})


async def _serve(app: Any, transport: RecordingTransport, request: bytes = REQUEST) -> None:
    """Serve ``request`` with ``app`` until its response is complete and the loop turned."""
    protocol = _connection(app)
    protocol.connection_made(transport)
    protocol.data_received(request)
    for _ in range(200):
        if protocol.cycle is not None and protocol.cycle.response_complete:
            break
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.001)
    protocol.connection_lost(None)


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("no request was sent")


def _start(status: int = 200) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": []}


async def test_the_head_goes_out_with_the_first_chunk() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(_start())
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await asyncio.sleep(0.005)
        await send({"type": "http.response.body", "body": b"second", "more_body": False})

    transport = RecordingTransport()
    await _serve(app, transport)
    assert len(transport.writes) == 2
    head_and_first, rest = transport.writes
    assert head_and_first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert head_and_first.endswith(b"\r\n\r\n5\r\nfirst\r\n")
    assert rest == b"6\r\nsecond\r\n0\r\n\r\n"


async def test_a_head_with_no_body_yet_goes_out_on_its_own() -> None:
    """A head whose body is not ready in the same step is not held until it is."""
    transport = RecordingTransport()
    written_while_waiting: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(_start())
        await asyncio.sleep(0.005)
        written_while_waiting.extend(transport.writes)
        await send({"type": "http.response.body", "body": b"late"})

    await _serve(app, transport)
    assert len(written_while_waiting) == 1
    assert written_while_waiting[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[1:] == [b"4\r\nlate\r\n0\r\n\r\n"]


async def test_an_answer_goes_out_in_the_fewest_writes(emulator: Emulator) -> None:
    """The head with ``meta`` and the first event; ``done`` with the end of the body."""
    app = create_app(settings_for(emulator))
    body = b'{"query": "How many writes?"}'
    request = (
        b"POST /qa HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    transport = RecordingTransport()
    async with app.router.lifespan_context(app):
        await _serve(app, transport, request)

    first, *_, last = transport.writes
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"event: meta\n" in first and b"event: delta\n" in first
    assert b"event: done\n" in last and last.endswith(b"\n\n\r\n0\r\n\r\n")
    wire = b"".join(transport.writes)
    frames = parse_sse(_unchunked(wire.split(b"\r\n\r\n", 1)[1]))
    assert [kind for _, kind, _ in frames][-1] == "done"
    assert sum(b"event: done" in write for write in transport.writes) == 1


def _unchunked(body: bytes) -> bytes:
    """The payload of a chunked HTTP body."""
    payload = b""
    while True:
        size, _, rest = body.partition(b"\r\n")
        length = int(size, 16)
        if not length:
            return payload
        payload, body = payload + rest[:length], rest[length + 2 :]


async def test_every_connection_sends_its_writes_at_once() -> None:
    """TCP_NODELAY on every connection, whatever listening socket the server was handed.
    asyncio sets it only where the socket was made with TCP's protocol number; on one made by
    ``socket.socket()`` (as the tests' ``serve`` does), each write of an answer after the first
    waited for the client's delayed ACK: a cache hit took 44 ms instead of 1."""
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    made: list[LimitedHttp] = []

    def connection() -> LimitedHttp:
        made.append(_connection(_no_app))
        return made[-1]

    server = await asyncio.get_running_loop().create_server(connection, sock=listening)
    _, writer = await asyncio.open_connection(*listening.getsockname())
    try:
        assert await wait_for(lambda: made and made[0].transport is not None)
        accepted = made[0].transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
