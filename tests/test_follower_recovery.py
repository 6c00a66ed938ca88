"""Followers on one instance of answers produced on another survive what befalls Redis or the
producer: two real gateway processes share a private redis-server; the emulator is paced so
the fault lands mid-answer, and every client ends in ``done`` with the whole text, once."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from backends.emulator import Behaviour, Emulator
from backends.emulator.gemini import answer_chunks
from tests.redis_support import RedisServer
from tests.support import free_port, parse_sse, ready, spawn_gateway, text_of, wait_for

CHUNKS = 40
PACE = Behaviour(chunks=CHUNKS, delay_ms=60)
"""About 2.4 s an answer: time for a fault to land in the middle of it."""


@dataclass
class Instance:
    url: str
    process: subprocess.Popen[bytes]


@dataclass
class Reply:
    status: int
    stream_id: str | None
    frames: list[tuple[int, str, dict[str, Any]]]
    ended_at: float


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def instances(
    emulator: Emulator, tmp_path: Path, redis_server: RedisServer
) -> Iterator[list[Instance]]:
    """Two gateway processes on the private Redis, with the default heartbeat and recovery
    window, calling the test's emulator."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
default_backend = "gemini"
redis_url = "{redis_server.url}"
[cache]
command_timeout_s = 0.5  # a busy machine is not the outage under test
[backends.gemini]
type = "gemini"
endpoint = "{emulator.rest_address}"
insecure = true
[backends.gemini.retry]
initial_s = 0.001
max_s = 0.005
"""
    )
    logs = contextlib.ExitStack()
    started = []
    for port in (free_port(), free_port()):
        log = logs.enter_context((tmp_path / f"gw-{port}.log").open("w"))
        started.append(
            Instance(f"http://127.0.0.1:{port}", spawn_gateway(port, config, stderr=log))
        )
    try:
        yield started
    finally:
        for instance in started:
            instance.process.terminate()
        for instance in started:
            instance.process.wait(timeout=20)
        logs.close()
        for log_file in sorted(tmp_path.glob("gw-*.log")):
            print(log_file.name, log_file.read_text(), sep="\n")


async def ask(client: httpx.AsyncClient, url: str, query: str) -> Reply:
    """The whole SSE answer to ``query`` from the gateway at ``url``, and when it ended."""
    async with client.stream("POST", f"{url}/qa", json={"query": query}) as response:
        body = b"".join([chunk async for chunk in response.aiter_bytes()])
        return Reply(
            response.status_code,
            response.headers.get("x-stream-id"),
            parse_sse(body),
            time.monotonic(),
        )


def assert_whole(reply: Reply, query: str) -> None:
    """``meta``, events numbered 1.. with no gap, one ``done`` at the end, and the text of the
    uninterrupted answer, nothing repeated."""
    kinds = [kind for _, kind, _ in reply.frames]
    assert reply.status == 200
    assert [frame_id for frame_id, _, _ in reply.frames] == list(range(len(reply.frames)))
    assert kinds[0] == "meta" and kinds[-1] == "done" and kinds.count("done") == 1, kinds
    assert "error" not in kinds, reply.frames[-1]
    assert text_of(reply.frames) == "".join(answer_chunks(query, CHUNKS))


async def started(client: httpx.AsyncClient, instances: list[Instance]) -> None:
    assert await wait_for(lambda: all(ready(instance.url) for instance in instances), 60)
    for instance in instances:  # first connections to the emulator and Redis
        await client.post(f"{instance.url}/qa", json={"query": f"warm-up {instance.url}"})


async def test_a_redis_restart_mid_answer_fails_no_follower(
    instances: list[Instance], redis_server: RedisServer, emulator: Emulator
) -> None:
    """Six answers on A, each followed from B; Redis restarts (losing everything) in the
    middle: A republishes its streams, B's followers pick up where they were, and every
    client gets the whole answer from A's one call per question."""
    first, second = instances
    queries = [f"Which answers outlive a Redis restart? {n}" for n in range(6)]
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as client:
        await started(client, instances)
        emulator.reset(PACE)
        producing = [asyncio.create_task(ask(client, first.url, query)) for query in queries]
        assert await wait_for(lambda: len(emulator.calls) == len(queries), 5)
        await asyncio.sleep(0.2)
        following = [asyncio.create_task(ask(client, second.url, query)) for query in queries]
        await asyncio.sleep(0.6)
        redis_server.stop()
        await asyncio.sleep(0.8)
        await asyncio.to_thread(redis_server.start)
        produced = await asyncio.gather(*producing)
        followed = await asyncio.gather(*following)
    for query, mine, theirs in zip(queries, produced, followed, strict=True):
        assert_whole(mine, query)
        assert_whole(theirs, query)
        assert theirs.stream_id == mine.stream_id  # B followed A's stream
    assert len(emulator.calls) == len(queries)  # and finished it from A, with no call of its own


async def test_followers_of_a_killed_instance_answer_afresh(
    instances: list[Instance], redis_server: RedisServer, emulator: Emulator
) -> None:
    """A is killed (-9) mid-answer: B's followers, and new askers on B, get the whole answer
    (the ids and text they had, then the rest from B's own call) within about the heartbeat's
    expiry plus an answer; an asker after the death is detected takes the question over."""
    first, second = instances
    followed, unfollowed, later = (
        f"What if the instance answering dies? {name}" for name in ("followed", "alone", "later")
    )
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as client:
        await started(client, instances)
        emulator.reset(PACE)
        producing = [
            asyncio.create_task(ask(client, first.url, query))
            for query in (followed, unfollowed, later)
        ]
        assert await wait_for(lambda: len(emulator.calls) == 3, 5)
        await asyncio.sleep(0.2)
        following = [asyncio.create_task(ask(client, second.url, followed)) for _ in range(3)]
        await asyncio.sleep(0.6)
        first.process.kill()
        killed = time.monotonic()
        joining = [
            asyncio.create_task(ask(client, second.url, query)) for query in (followed, unfollowed)
        ]
        await asyncio.gather(*producing, return_exceptions=True)
        await asyncio.sleep(3.0)  # past the heartbeat's expiry: A's death is known
        taken_over = await ask(client, second.url, later)
        followers = await asyncio.gather(*following)
        joiners = await asyncio.gather(*joining)
    for reply in followers:
        assert_whole(reply, followed)
    for reply, query in zip(joiners, (followed, unfollowed), strict=True):
        assert_whole(reply, query)
    assert_whole(taken_over, later)
    with redis.Redis.from_url(redis_server.url) as r:
        pointers = {r.get(key) for key in r.scan_iter(match="qa:v1:*")}
    assert taken_over.stream_id is not None
    assert taken_over.stream_id.encode() in pointers  # the question names B's stream now
    fresh = sorted(call.received_at - killed for call in list(emulator.calls)[3:])
    done = [reply.ended_at - killed for reply in followers]
    print(
        f"B's own calls {[f'{s:.2f}' for s in fresh]} s after the kill; followers done "
        f"after {max(done):.2f} s"
    )
    assert len(fresh) == 3  # one per question on B: followers and joiners share it
    assert max(done) < 8.0  # the heartbeat's expiry plus an answer, not lock_ttl_s (10 s)
