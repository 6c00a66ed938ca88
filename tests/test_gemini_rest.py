"""Gemini over Vertex REST: what only the REST transport has (the rest runs on both
transports in test_qa and test_resilience): the emulator's strict parsing and its JSON-array
form, bearer tokens from google-auth credentials, and a connection dropped mid-answer."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from google.auth.credentials import Credentials

from backends.base import Delta, Done, QARequest, TransientError
from backends.emulator import Behaviour, Emulator
from backends.emulator.gemini import answer_chunks
from backends.gemini import GeminiConfig
from backends.gemini_rest import GeminiRestBackend

MODEL_PATH = "/v1/projects/p/locations/l/publishers/google/models/m:streamGenerateContent"
BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


class LocalCredentials(Credentials):  # type: ignore[misc]
    """Credentials that mint numbered tokens locally, living ``lifetime_s`` each."""

    def __init__(self, lifetime_s: float = 3600) -> None:
        super().__init__()
        self.lifetime_s = lifetime_s
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        self.token = f"token-{self.refreshes}"
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        self.expiry = now + datetime.timedelta(seconds=self.lifetime_s)


def config(emulator: Emulator, **extra: Any) -> GeminiConfig:
    return GeminiConfig(type="gemini", endpoint=emulator.rest_address, insecure=True, **extra)


async def answer(backend: GeminiRestBackend, query: str = "hi") -> list[Any]:
    return [event async for event in backend.stream(QARequest(query))]


@pytest.fixture
async def rest() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


async def test_an_unknown_field_is_refused_as_google_does(
    rest: httpx.AsyncClient, emulator: Emulator
) -> None:
    url = f"http://{emulator.rest_address}{MODEL_PATH}?alt=sse"
    response = await rest.post(url, content=orjson.dumps(BODY | {"generationConfg": {}}))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert "generationConfg" in error["message"]
    assert not emulator.calls


async def test_without_alt_sse_the_chunks_come_as_one_json_array(
    rest: httpx.AsyncClient, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(chunks=3))
    response = await rest.post(f"http://{emulator.rest_address}{MODEL_PATH}", json=BODY)
    chunks = orjson.loads(response.content)
    texts = [chunk["candidates"][0]["content"]["parts"][0]["text"] for chunk in chunks]
    assert texts == answer_chunks("hi", 3)
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


async def test_a_fault_before_the_stream_is_googles_error_json(
    rest: httpx.AsyncClient, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(fail_first=1, fail_code="RESOURCE_EXHAUSTED", retry_after_ms=1500))
    response = await rest.post(f"http://{emulator.rest_address}{MODEL_PATH}?alt=sse", json=BODY)
    assert response.status_code == 429
    assert response.json()["error"] == {
        "code": 429,
        "message": "emulated RESOURCE_EXHAUSTED",
        "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.500s"}],
    }


async def test_bearer_token_and_quota_project_reach_google(emulator: Emulator) -> None:
    credentials = LocalCredentials()
    backend = GeminiRestBackend("g", config(emulator, quota_project="billing"), credentials)
    try:
        await asyncio.gather(*(answer(backend) for _ in range(20)))
    finally:
        await backend.aclose()
    assert credentials.refreshes == 1  # twenty answers at once: one refresh, not twenty
    for call in emulator.calls:
        assert call.metadata["Authorization"] == "Bearer token-1"
        assert call.metadata["x-goog-user-project"] == "billing"


async def test_a_token_is_refreshed_before_it_expires(emulator: Emulator) -> None:
    credentials = LocalCredentials(lifetime_s=0.4)  # refreshed at half its life
    backend = GeminiRestBackend("g", config(emulator), credentials)
    try:
        await answer(backend)
        await asyncio.sleep(0.3)
        await answer(backend)
    finally:
        await backend.aclose()
    tokens = [call.metadata["Authorization"] for call in emulator.calls]
    assert tokens == ["Bearer token-1", "Bearer token-2"]
    assert "x-goog-user-project" not in emulator.calls[0].metadata


async def test_an_insecure_endpoint_sends_no_credentials(emulator: Emulator) -> None:
    backend = GeminiRestBackend("g", config(emulator))
    try:
        events = await answer(backend)
    finally:
        await backend.aclose()
    assert isinstance(events[-1], Done)
    assert "Authorization" not in emulator.calls[0].metadata


async def test_a_connection_dropped_midstream_is_unavailable() -> None:
    """A server that sends one chunk, then closes the connection without ending the body."""

    async def one_chunk_then_drop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        frame = b'data: {"candidates": [{"content": {"parts": [{"text": "Half"}]}}]}\r\n\r\n'
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(frame), frame))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(one_chunk_then_drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = GeminiRestBackend(
        "g", GeminiConfig(type="gemini", endpoint=f"127.0.0.1:{port}", insecure=True)
    )
    events: list[Any] = []
    try:
        with pytest.raises(TransientError) as raised:
            async for event in backend.stream(QARequest("hi")):
                events.append(event)
    finally:
        await backend.aclose()
        server.close()
    assert events == [Delta("Half")]
    assert raised.value.code == "unavailable"


async def test_frames_split_anywhere_read_the_same() -> None:
    """A body written a few bytes at a time, CRLF and LF lines, a comment, and a last event
    the body ends in without its blank line."""

    def text(words: str) -> bytes:
        return orjson.dumps({"candidates": [{"content": {"parts": [{"text": words}]}}]})

    body = (
        b": keep-alive\r\n\r\ndata: " + text("One ") + b"\r\n\r\n"
        b"data: " + text("two") + b"\n\n"
        b'data: {"candidates": [{"finishReason": "STOP"}]}'
    )

    async def in_pieces(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        for start in range(0, len(body), 7):
            writer.write(body[start : start + 7])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    server = await asyncio.start_server(in_pieces, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = GeminiRestBackend(
        "g", GeminiConfig(type="gemini", endpoint=f"127.0.0.1:{port}", insecure=True)
    )
    try:
        events = [event async for event in backend.stream(QARequest("hi"))]
    finally:
        await backend.aclose()
        server.close()
    assert events[:2] == [Delta("One "), Delta("two")]
    assert isinstance(events[2], Done) and events[2].finish_reason == "stop"
