"""Emulated Vertex REST ``...:streamGenerateContent``: server-sent events with ``alt=sse``,
else one streamed JSON array, as Google serves them.

The body is parsed strictly into the SDK's ``GenerateContentRequest`` (an unknown field is
400 ``INVALID_ARGUMENT``, as Google answers), and the answer is the gRPC emulator's, each
chunk rendered from a ``GenerateContentResponse`` in its JSON form. Faults are Google's: an
HTTP status with its error JSON before the stream, an ``{"error": ...}`` chunk after.
"""

from __future__ import annotations

import functools
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from google.cloud.aiplatform_v1 import GenerateContentRequest, GenerateContentResponse
from google.protobuf import json_format

from backends.emulator import gemini
from backends.emulator.server import Fault
from backends.rest import HTTP_STATUS, RETRY_INFO

if TYPE_CHECKING:
    from backends.emulator.server import Emulator

ROUTE = (
    "/v1/projects/{project}/locations/{location}/publishers/google/models/{model}"
    ":streamGenerateContent"
)
EMULATOR = web.AppKey("emulator", object)


async def start(emulator: Emulator, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the REST API for ``emulator``; the runner (to clean up) and the port."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app[EMULATOR] = emulator
    app.router.add_post(ROUTE, _stream_generate_content)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server: Any = site._server  # the bound socket's port, when 0 asked for a free one
    return runner, int(server.sockets[0].getsockname()[1])


def error_json(fault: Fault) -> dict[str, object]:
    """Google's error object for ``fault``."""
    error: dict[str, object] = {
        "code": HTTP_STATUS[fault.code],
        "message": fault.message,
        "status": fault.code,
    }
    if fault.retry_after_ms is not None:
        error["details"] = [{"@type": RETRY_INFO, "retryDelay": fault.retry_delay().ToJsonString()}]
    return {"error": error}


async def _stream_generate_content(request: web.Request) -> web.StreamResponse:
    emulator: Any = request.app[EMULATOR]
    message = GenerateContentRequest.pb()()
    try:
        json_format.Parse(await request.read(), message)
    except json_format.ParseError as exc:
        return _error(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. {exc}")
    path = request.match_info
    message.model = (
        f"projects/{path['project']}/locations/{path['location']}"
        f"/publishers/google/models/{path['model']}"
    )
    parsed = GenerateContentRequest.wrap(message)
    call = emulator.record(gemini.METHOD, parsed)
    call.metadata = dict(request.headers)
    sse = request.query.get("alt") == "sse"
    played = emulator.play(call, gemini.responses_for(parsed, emulator.behaviour))
    async with aclosing(played):
        try:
            first = await anext(played)
        except Fault as fault:
            return web.json_response(error_json(fault), status=HTTP_STATUS[fault.code])
        media_type = "text/event-stream" if sse else "application/json"
        response = web.StreamResponse(headers={"Content-Type": media_type})
        await response.prepare(request)
        await response.write(_chunk(first, sse, first=True))
        try:
            async for chunk in played:
                await response.write(_chunk(chunk, sse, first=False))
        except Fault as fault:
            await response.write(_frame(orjson.dumps(error_json(fault)), sse, first=False))
        if not sse:
            await response.write(b"]")
        await response.write_eof()
        return response


def _chunk(response: GenerateContentResponse, sse: bool, *, first: bool) -> bytes:
    return _frame(
        _json_of(GenerateContentResponse.pb(response).SerializeToString()), sse, first=first
    )


@functools.lru_cache(maxsize=4096)
def _json_of(serialized: bytes) -> bytes:
    """A response's JSON form, by its wire form: answers are made of few distinct chunks, and
    ``json_format`` is pure Python (it would cost the emulator more than the gateway)."""
    message = GenerateContentResponse.pb()()
    message.ParseFromString(serialized)
    return orjson.dumps(json_format.MessageToDict(message))


def _frame(body: bytes, sse: bool, *, first: bool) -> bytes:
    if sse:
        return b"data: " + body + b"\r\n\r\n"
    return (b"[" if first else b",\r\n") + body


def _error(status: int, code: str, message: str) -> web.Response:
    error = {"code": status, "message": message, "status": code}
    return web.json_response({"error": error}, status=status)
