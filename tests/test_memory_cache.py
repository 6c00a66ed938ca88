"""Without Redis, answers are kept in process, bounded in entries and in bytes: the least
recently used go first, and an answer larger than the bound is not kept at all."""

from __future__ import annotations

import httpx

from backends.emulator import Emulator
from tests.support import caching, gateway, parse_sse


async def _ask(client: httpx.AsyncClient, url: str, query: str) -> str:
    response = await client.post(f"{url}/qa", json={"query": query})
    assert parse_sse(response.content)[-1][1] == "done"
    return response.headers["x-cache"]


async def test_the_least_recently_used_answer_goes_first(emulator: Emulator) -> None:
    # Each answer takes two entries: its stream and the question's pointer to it.
    settings = caching(emulator, cache={"memory_max_entries": 4})
    async with gateway(settings) as url, httpx.AsyncClient(timeout=10) as client:
        assert [await _ask(client, url, q) for q in ("one", "two")] == ["MISS", "MISS"]
        assert await _ask(client, url, "one") == "HIT"  # now the most recently used
        assert await _ask(client, url, "three") == "MISS"  # drops "two"
        assert await _ask(client, url, "one") == "HIT"
        assert await _ask(client, url, "two") == "MISS"


async def test_an_answer_beyond_the_bytes_is_not_kept(emulator: Emulator) -> None:
    settings = caching(emulator, cache={"memory_max_bytes": 200})
    async with gateway(settings) as url, httpx.AsyncClient(timeout=10) as client:
        assert [await _ask(client, url, "long") for _ in range(2)] == ["MISS", "MISS"]
