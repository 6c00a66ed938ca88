"""The floor of the gateway's stack: a bare relay on the same server and client libraries.

``python -m bench.floor --port P --upstream HOST:PORT`` serves ``POST /qa`` under uvicorn
(uvloop, httptools, as the gateway) with a plain ASGI function: it reads the JSON body,
posts the question to the emulator's REST API (one aiohttp session, ``alt=sse``), parses
each ``data:`` frame with orjson and writes the text as SSE frames, those of one read in
one chunk. No validation, cache, flight, retry, log or metric: what any Python relay on
this stack pays, against which the gateway's added latency is read (``bench.compare
--floor``).
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import orjson
import uvicorn

from bench.direct import MODEL

_JSON = {"Content-Type": "application/json"}
_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream")],
}


class Relay:
    """The ASGI app: ``/readyz`` and ``POST /qa``."""

    def __init__(self, upstream: str) -> None:
        self.url = f"http://{upstream}/v1/{MODEL}:streamGenerateContent?alt=sse"
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["path"] == "/readyz":
            await send({**_START, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        else:
            await self._answer(receive, send)

    async def _answer(self, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        text = orjson.loads(body)["query"]
        question = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        async with self.session.post(self.url, data=orjson.dumps(question), headers=_JSON) as up:
            await send(_START)
            chunk, seq, pending = b"id: 0\nevent: meta\ndata: {}\n\n", 0, b""
            async for data in up.content.iter_any():
                *frames, pending = (pending + data).split(b"\r\n\r\n")
                for frame in frames:
                    parts = orjson.loads(frame[6:])["candidates"][0]["content"]["parts"]
                    seq += 1
                    text = orjson.dumps({"text": parts[0].get("text", "")})
                    chunk += b"id: %d\nevent: delta\ndata: %s\n\n" % (seq, text)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = b""
            end = b"id: %d\nevent: done\ndata: {}\n\n" % (seq + 1)
            await send({"type": "http.response.body", "body": end})


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        kind = (await receive())["type"]
        await send({"type": f"{kind}.complete"})
        if kind == "lifespan.shutdown":
            return


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="the emulator's REST address")
    args = parser.parse_args()
    uvicorn.run(
        Relay(args.upstream),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
