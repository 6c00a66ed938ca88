"""A reader that leaves mid-answer lets the gRPC read in flight land before the call is
cancelled (``backends.sdk.Responses``): grpc.aio leaks the native batch of a read
cancelled in flight, about half a kilobyte per client that left (see ``bench.soak``)."""

from __future__ import annotations

import asyncio

from backends.base import QARequest
from backends.emulator import Behaviour, Emulator
from backends.gemini import GeminiConfig
from tests.support import wait_for


async def test_the_read_in_flight_lands_before_the_call_is_cancelled(emulator: Emulator) -> None:
    emulator.reset(Behaviour(chunks=4, delay_ms=500))
    backend = GeminiConfig(
        type="gemini", transport="grpc", endpoint=emulator.address, insecure=True
    ).build("g")
    try:
        answer = backend.stream(QARequest("hi"))
        await anext(answer)  # the first chunk is in; the read of the second is next
        reading = asyncio.ensure_future(anext(answer))
        await asyncio.sleep(0.05)
        reading.cancel()  # the reader leaves while the second chunk is on its way
        await asyncio.gather(reading, return_exceptions=True)
        await answer.aclose()
        assert await wait_for(lambda: emulator.calls[0].cancelled, timeout=2.0)
        # The second chunk was sent (and its read landed) before the call was cancelled.
        assert emulator.calls[0].chunks_sent == 2
        assert not emulator.calls[0].completed
    finally:
        await backend.aclose()
