"""Two gateway processes sharing one Redis: one upstream call for everyone asking at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backends.emulator import Behaviour, Emulator
from tests.redis_support import RedisTarget
from tests.support import free_port, parse_sse, ready, spawn_gateway, text_of, wait_for

QUERY = {"query": "Who answers when two gateways are asked?"}


@pytest.fixture
def two_gateways(
    emulator: Emulator, tmp_path: Path, redis_target: RedisTarget
) -> Iterator[list[str]]:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
default_backend = "gemini"
redis_url = "{redis_target.url}"
redis_cluster = {str(redis_target.cluster).lower()}
[cache]
prefix = "{redis_target.prefix}"
command_timeout_s = 1.0  # this test is about sharing, not outages: ride out a busy machine
[backends.gemini]
type = "gemini"
endpoint = "{emulator.rest_address}"
insecure = true
"""
    )
    ports = [free_port(), free_port()]
    logs = contextlib.ExitStack()
    processes = [
        spawn_gateway(
            port, config, stderr=logs.enter_context((tmp_path / f"gw-{port}.log").open("w"))
        )
        for port in ports
    ]
    try:
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
        logs.close()
        for log in tmp_path.glob("gw-*.log"):
            print(log.read_text())


async def test_two_processes_share_one_upstream_call(
    two_gateways: list[str], emulator: Emulator
) -> None:
    first_url, second_url = two_gateways
    assert await wait_for(lambda: all(map(ready, two_gateways)), 60)
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        for url in two_gateways:  # warm up: first connections to the emulator and Redis
            await client.post(f"{url}/qa", json={"query": f"warm-up {url}"})
        emulator.reset(Behaviour(chunks=30, delay_ms=30))
        # The first asker, on the first gateway, leaves after one delta...
        async with client.stream("POST", f"{first_url}/qa", json=QUERY) as response:
            async for chunk in response.aiter_bytes():
                if b"event: delta" in chunk:
                    # ...while 49 more ask both gateways, most of them the second one.
                    others = [
                        asyncio.create_task(client.post(f"{url}/qa", json=QUERY))
                        for url in [first_url] * 9 + [second_url] * 40
                    ]
                    await asyncio.sleep(0.2)
                    break
        responses = await asyncio.gather(*others)

    texts = {text_of(parse_sse(r.content)) for r in responses}
    assert len(texts) == 1
    assert all(parse_sse(r.content)[-1][1] == "done" for r in responses)
    assert all(len([f for f in parse_sse(r.content) if f[1] == "delta"]) == 30 for r in responses)
    assert len(emulator.calls) == 1
    assert emulator.calls[0].completed
    assert not emulator.calls[0].cancelled
