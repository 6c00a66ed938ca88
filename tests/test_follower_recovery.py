"""Followers on one instance of answers produced on another survive what befalls Redis or the
producer. Two gateways (A answers, B follows) share a private redis-server; the emulator is
paced so the fault lands mid-answer, and every client ends in ``done`` with the whole text,
once. A is a real process where it is killed (-9); elsewhere both are served in process."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from backends.emulator import Behaviour, Emulator
from backends.emulator.gemini import answer_chunks
from gateway.settings import Settings
from tests.redis_support import RedisServer, RedisTarget
from tests.support import free_port, gateway, parse_sse, ready, spawn_gateway, text_of, wait_for
from tests.test_cache import cached

CHUNKS = 40
PACE = Behaviour(chunks=CHUNKS, delay_ms=60)
"""About 2.4 s an answer: time for a fault to land in the middle of it."""
TIMEOUT_S = 1.0
"""Redis command timeout: a busy machine is not the outage under test."""


@dataclass
class Process:
    """A gateway process and its URL."""

    popen: subprocess.Popen[bytes]
    url: str


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


def on(redis_server: RedisServer, emulator: Emulator, **cache: Any) -> Settings:
    """An instance on the private Redis, with the default heartbeat, recovery window and
    breaker pause unless ``cache`` says otherwise."""
    knobs = {"command_timeout_s": TIMEOUT_S, "breaker_s": 5.0} | cache
    return cached(emulator, RedisTarget(redis_server.url, prefix="qa:"), cache=knobs)


@pytest.fixture
def doomed(emulator: Emulator, tmp_path: Path, redis_server: RedisServer) -> Iterator[Process]:
    """A gateway process like ``on(redis_server, emulator)``, to kill."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
default_backend = "gemini"
redis_url = "{redis_server.url}"
[cache]
command_timeout_s = {TIMEOUT_S}
[backends.gemini]
type = "gemini"
endpoint = "{emulator.rest_address}"
insecure = true
[backends.gemini.retry]
initial_s = 0.001
max_s = 0.005
"""
    )
    log = tmp_path / "doomed.log"
    port = free_port()
    with log.open("w") as stderr:
        process = spawn_gateway(port, config, stderr=stderr)
        try:
            yield Process(process, f"http://127.0.0.1:{port}")
        finally:
            process.kill()
            process.wait(timeout=20)
    print(log.read_text())


@asynccontextmanager
async def client_of(*urls: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client, once each of ``urls`` has answered a first question (first connections to
    the emulator and Redis)."""
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as client:
        for url in urls:
            await client.post(f"{url}/qa", json={"query": f"warm-up {url}"})
        yield client


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
    assert text_of(reply.frames) == "".join(answer_chunks(query, CHUNKS))


async def test_a_redis_restart_mid_answer_fails_no_follower(
    redis_server: RedisServer, emulator: Emulator
) -> None:
    """Six answers on A, each followed from B; Redis restarts (losing everything) in the
    middle: A writes its streams again, B's followers read on where they were, and every
    client gets the whole answer from A's one call per question."""
    queries = [f"Which answers outlive a Redis restart? {n}" for n in range(6)]
    settings = on(redis_server, emulator)
    async with (
        gateway(settings) as first,
        gateway(settings) as second,
        client_of(first, second) as client,
    ):
        emulator.reset(PACE)
        producing = [asyncio.create_task(ask(client, first, query)) for query in queries]
        assert await wait_for(lambda: len(emulator.calls) == len(queries), 5)
        await asyncio.sleep(0.2)
        following = [asyncio.create_task(ask(client, second, query)) for query in queries]
        await asyncio.sleep(0.6)
        redis_server.stop()
        await asyncio.sleep(0.8)
        await asyncio.to_thread(redis_server.start)
        produced = await asyncio.gather(*producing)
        followed = await asyncio.gather(*following)
    lag = max(b.ended_at - a.ended_at for a, b in zip(produced, followed, strict=True))
    print(f"followers done at most {lag:.2f} s after their producer's clients")
    for query, mine, theirs in zip(queries, produced, followed, strict=True):
        assert_whole(mine, query)
        assert_whole(theirs, query)
        assert theirs.stream_id == mine.stream_id  # B followed A's stream
    assert len(emulator.calls) == len(queries)  # and finished it from A, with no call of its own


async def test_followers_answer_afresh_when_redis_stays_down(
    redis_server: RedisServer, emulator: Emulator
) -> None:
    """Redis goes away for good mid-answer: past ``recover_s`` B's followers answer afresh
    (one call of B's for both), going on from what they have; A's client finishes too."""
    query = "What if Redis never comes back?"
    settings = on(redis_server, emulator, recover_s=0.5)
    async with (
        gateway(settings) as first,
        gateway(settings) as second,
        client_of(first, second) as client,
    ):
        emulator.reset(PACE)
        producing = asyncio.create_task(ask(client, first, query))
        assert await wait_for(lambda: len(emulator.calls) == 1, 5)
        await asyncio.sleep(0.2)
        following = [asyncio.create_task(ask(client, second, query)) for _ in range(2)]
        await asyncio.sleep(0.6)
        redis_server.stop()
        produced = await producing
        followed = await asyncio.gather(*following)
    for reply in (produced, *followed):
        assert_whole(reply, query)
    assert {reply.stream_id for reply in followed} == {produced.stream_id}
    assert len(emulator.calls) == 2


async def test_followers_of_a_killed_instance_answer_afresh(
    doomed: Process, redis_server: RedisServer, emulator: Emulator
) -> None:
    """A is killed (-9) mid-answer: B's followers, and new askers on B, get the whole answer
    (the ids and text they had, then the rest from B's own call) within about the heartbeat's
    expiry plus an answer; an asker after the death is known takes the question over."""
    followed, unfollowed, later = (
        f"What if the instance answering dies? {name}" for name in ("followed", "alone", "later")
    )
    first = doomed.url
    assert await wait_for(lambda: ready(first), 60)
    async with gateway(on(redis_server, emulator)) as second, client_of(first, second) as client:
        emulator.reset(PACE)
        producing = [
            asyncio.create_task(ask(client, first, query))
            for query in (followed, unfollowed, later)
        ]
        assert await wait_for(lambda: len(emulator.calls) == 3, 5)
        await asyncio.sleep(0.2)
        following = [asyncio.create_task(ask(client, second, followed)) for _ in range(3)]
        await asyncio.sleep(0.6)
        doomed.popen.kill()
        killed = time.monotonic()
        joining = [asyncio.create_task(ask(client, second, q)) for q in (followed, unfollowed)]
        await asyncio.gather(*producing, return_exceptions=True)
        await asyncio.sleep(3.0)  # past the heartbeat's expiry: A's death is known
        taken_over = await ask(client, second, later)
        followers = await asyncio.gather(*following)
        joiners = await asyncio.gather(*joining)
    for reply in followers:
        assert_whole(reply, followed)
        assert reply.stream_id == followers[0].stream_id  # the one stream they followed
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
