"""The direct baselines: the cheapest clients of the emulator that still read every message.

``RawRest`` (``direct``): one aiohttp session posting to the REST API (``alt=sse``) and
parsing each ``data:`` frame with orjson. ``RawStub`` (``direct-grpc``): a raw ``grpc.aio``
channel calling ``PredictionService/StreamGenerateContent`` with the raw protobuf classes
behind the SDK's messages (``GenerateContentRequest.pb()``), with no proto-plus wrapping and
no SDK client layers. Each reuses its connections, like the gateway.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import grpc
import orjson
from google.cloud.aiplatform_v1 import GenerateContentRequest, GenerateContentResponse
from yarl import URL

from backends.base import BackendError, QARequest
from backends.gemini import GeminiConfig
from bench.http_client import Exchange

METHOD = "/google.cloud.aiplatform.v1.PredictionService/StreamGenerateContent"
MODEL = "projects/emulated-project/locations/us-central1/publishers/google/models/gemini-2.5-flash"

_JSON = {"Content-Type": "application/json"}
_Request: Any = GenerateContentRequest.pb()
_Response: Any = GenerateContentResponse.pb()


def _arrived(exchange: Exchange) -> None:
    """Note one more message of ``exchange``, now."""
    now = time.monotonic()
    exchange.frames += 1
    if exchange.frames == 1:
        exchange.first = now
    if exchange.stamps is not None:
        exchange.stamps.append(now)


class RawRest:
    """Streams answers straight from the emulator's REST API; results look like the HTTP
    client's."""

    def __init__(self, address: str) -> None:
        self.url = URL(f"http://{address}/v1/{MODEL}:streamGenerateContent?alt=sse")
        self._session: aiohttp.ClientSession | None = None

    async def ask(self, query: str, *, stamps: bool = False) -> Exchange:
        """One answer; ``frames`` counts chunks, ``first`` is the first one's arrival."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0)
            self._session = aiohttp.ClientSession(connector=connector)
        body = orjson.dumps({"contents": [{"role": "user", "parts": [{"text": query}]}]})
        exchange = Exchange(time.monotonic(), [] if stamps else None)
        try:
            async with self._session.post(self.url, data=body, headers=_JSON) as response:
                exchange.status = response.status
                pending = b""
                async for chunk in response.content.iter_any():
                    *frames, pending = (pending + chunk).split(b"\r\n\r\n")
                    for frame in frames:
                        orjson.loads(frame[6:])  # after "data: "
                        _arrived(exchange)
        except aiohttp.ClientError as exc:
            exchange.error = type(exc).__name__
        exchange.last = time.monotonic()
        return exchange

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class RawStub:
    """Streams answers straight from the emulator; results look like the HTTP client's."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self._call = self.channel.unary_stream(
            METHOD,
            request_serializer=_Request.SerializeToString,
            response_deserializer=_Response.FromString,
        )

    async def ask(self, query: str, *, stamps: bool = False) -> Exchange:
        """One answer; ``frames`` counts messages, ``first`` is the first one's arrival."""
        request = _Request(model=MODEL)
        request.contents.add(role="user").parts.add(text=query)
        exchange = Exchange(time.monotonic(), [] if stamps else None)
        try:
            async for _ in self._call(request, timeout=120):
                _arrived(exchange)
            exchange.status = 200
        except grpc.aio.AioRpcError as exc:
            exchange.error = f"{exc.code().name}: {exc.details()}"
        exchange.last = time.monotonic()
        return exchange

    async def close(self) -> None:
        await self.channel.close()


class ThroughSdk:
    """The gateway's Gemini backend alone (``GeminiGrpcBackend.stream``, on the SDK's async
    client), in the bench process and without HTTP: what the SDK costs above ``RawStub``, and
    the floor under the gateway's own CPU. ``frames`` counts events (the answer's, ``done``)."""

    def __init__(self, address: str) -> None:
        config = GeminiConfig(type="gemini", transport="grpc", endpoint=address, insecure=True)
        self.backend = config.build("sdk")

    async def ask(self, query: str) -> Exchange:
        exchange = Exchange(time.monotonic(), None)
        try:
            async for _ in self.backend.stream(QARequest(query)):
                exchange.frames += 1
                if exchange.frames == 1:
                    exchange.first = time.monotonic()
            exchange.status = 200
        except BackendError as exc:
            exchange.error = f"{exc.code}: {exc.message}"
        exchange.last = time.monotonic()
        return exchange

    async def close(self) -> None:
        await self.backend.aclose()
