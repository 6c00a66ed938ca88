"""An answer is freed as it ends: no request leaves reference cycles of the gateway's objects
for the garbage collector (each one held an answer's events until a collection, and the
collections, every hundred-odd requests, paused every stream for 5-15 ms).

A retried request is the exception: tenacity's retry state is a cycle of its own, and it
keeps the errors of the attempts (with their frames) until a collection."""

from __future__ import annotations

import gc
import itertools
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx
import pytest

from backends.emulator import Behaviour, Emulator
from gateway.app import create_app
from tests.redis_support import RedisTarget
from tests.support import caching, gateway, parse_sse, serve

Ask = Callable[[httpx.AsyncClient, str], Awaitable[object]]


@pytest.fixture
def saved_garbage() -> Iterator[None]:
    """Cycles the collector finds stay in ``gc.garbage`` to be looked at."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def ours_in_cycles() -> list[str]:
    """The gateway's and backends' objects the collector had to free since the last call."""
    gc.collect()
    found = sorted(
        {type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith(_OURS)}
    )
    gc.garbage.clear()
    return found


_OURS = ("gateway.", "backends.")
_JSON = "application/json"


_ASKED = itertools.count()


async def _post(client: httpx.AsyncClient, url: str, **extra: object) -> httpx.Response:
    """A question not asked before."""
    question = {"query": f"What is freed, {next(_ASKED)}?", **extra}
    return await client.post(f"{url}/qa", json=question)


async def miss_then_hit(client: httpx.AsyncClient, url: str) -> None:
    query = f"Asked twice, {next(_ASKED)}"
    for cache in ("MISS", "HIT"):
        response = await client.post(f"{url}/qa", json={"query": query})
        assert response.headers["x-cache"] == cache
        assert parse_sse(response.content)[-1][1] == "done"


async def bypass(client: httpx.AsyncClient, url: str) -> None:
    response = await client.post(
        f"{url}/qa", json={"query": "Fresh"}, headers={"Cache-Control": "no-cache, no-store"}
    )
    assert parse_sse(response.content)[-1][1] == "done"


async def resumed(client: httpx.AsyncClient, url: str) -> None:
    response = await _post(client, url)
    stream_id = response.headers["x-stream-id"]
    again = await client.get(f"{url}/qa/streams/{stream_id}", headers={"Last-Event-ID": "2"})
    assert parse_sse(again.content)[-1][1] == "done"


async def event_source(client: httpx.AsyncClient, url: str) -> None:
    response = await client.get(f"{url}/qa", params={"query": f"Seen by GET {next(_ASKED)}"})
    assert parse_sse(response.content)[-1][1] == "done"


async def chat_completions(client: httpx.AsyncClient, url: str) -> None:
    messages = [{"role": "user", "content": f"Chat {next(_ASKED)}"}]
    for stream in (True, False):
        body = {"model": "gemini", "messages": messages, "stream": stream}
        assert (await client.post(f"{url}/v1/chat/completions", json=body)).status_code == 200


async def refused(client: httpx.AsyncClient, url: str) -> None:
    assert (await _post(client, url, backend="nope")).status_code == 404
    broken = await client.post(f"{url}/qa", content=b"{", headers={"Content-Type": _JSON})
    assert broken.status_code == 400


async def left_midway(client: httpx.AsyncClient, url: str) -> None:
    async with client.stream("POST", f"{url}/qa", json={"query": "Leave early"}) as response:
        async for _ in response.aiter_bytes():
            break


async def failed(client: httpx.AsyncClient, url: str, emulator: Emulator) -> None:
    emulator.reset(Behaviour(fail_after=3))
    response = await client.post(f"{url}/qa", json={"query": "Fails midway"})
    assert parse_sse(response.content)[-1][1] == "error"
    emulator.reset(Behaviour(fail_first=99, fail_code="INVALID_ARGUMENT"))
    assert (await client.post(f"{url}/qa", json={"query": "Refused"})).status_code == 400


CASES: dict[str, Ask] = {
    "miss then hit": miss_then_hit,
    "bypass": bypass,
    "resumed": resumed,
    "event source": event_source,
    "chat completions": chat_completions,
    "refused": refused,
    "left midway": left_midway,
}


@pytest.fixture
async def in_memory(emulator: Emulator) -> AsyncIterator[str]:
    async with gateway(caching(emulator)) as url:
        yield url


@pytest.mark.parametrize("case", CASES)
async def test_no_cycles_left_in_memory(
    in_memory: str, emulator: Emulator, case: str, saved_garbage: None
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:  # its connections stay open
        await CASES[case](client, in_memory)  # the first time may build what lasts
        ours_in_cycles()
        for _ in range(3):
            await CASES[case](client, in_memory)
        assert ours_in_cycles() == []


async def test_no_cycles_left_by_failures(
    in_memory: str, emulator: Emulator, saved_garbage: None
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        await failed(client, in_memory, emulator)
        ours_in_cycles()
        await failed(client, in_memory, emulator)
        assert ours_in_cycles() == []


async def test_no_cycles_left_through_redis(
    emulator: Emulator, redis_target: RedisTarget, saved_garbage: None
) -> None:
    settings = caching(emulator, cache={"prefix": redis_target.prefix}, **redis_target.settings())
    async with gateway(settings) as url, httpx.AsyncClient(timeout=10) as client:
        await miss_then_hit(client, url)
        await resumed(client, url)
        ours_in_cycles()
        for _ in range(3):
            await miss_then_hit(client, url)
            await resumed(client, url)
        assert ours_in_cycles() == []


async def test_a_gateway_that_stopped_is_freed(
    emulator: Emulator, redis_target: RedisTarget
) -> None:
    """Nothing of ours keeps a stopped gateway alive, nor its runtime, metrics and Redis
    clients (FastAPI's caches of endpoints aside: ``serve`` empties them). A process that
    builds many, as the test session does, would hold them all, and every full collection
    would walk them (0.4-0.7 s by the end of the suite, seen)."""
    settings = caching(emulator, cache={"prefix": redis_target.prefix}, **redis_target.settings())
    app = create_app(settings)
    async with serve(app) as url, httpx.AsyncClient(timeout=10) as client:
        await miss_then_hit(client, url)
    stopped = weakref.ref(app)
    del app
    gc.collect()
    assert stopped() is None
