"""Per-principal limits against real servers: two instances on one Redis, the emulator, and a
Redis of our own that we stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from backends.emulator import Behaviour, Emulator
from gateway.app import create_app
from gateway.http.limits import LimitOverrides
from gateway.settings import Settings
from gateway.upstream.base import Principal
from tests.redis_support import RedisServer, RedisTarget, keys_under
from tests.support import gateway, parse_sse, serve, settings_for, wait_for

ANONYMOUS = "default/anonymous"
"""The principal of every request without credentials: tenant ``default``, ``anonymous``."""


def limited(
    emulator: Emulator, redis_target: RedisTarget | None, cached: bool = False, **limits: Any
) -> Settings:
    """Settings with ``limits``, counted in ``redis_target`` (in process if None)."""
    # These tests are about counting, not outages: ride out a busy machine.
    shared = redis_target.settings() if redis_target else {}
    prefix = redis_target.prefix if redis_target else "unused:"
    cache = {"prefix": prefix, "command_timeout_s": 1.0}
    settings = settings_for(emulator, cache=cache, limits=limits, **shared)
    settings.backends["gemini"].cache = cached
    return settings


async def instances(stack: AsyncExitStack, settings: Settings, count: int = 2) -> list[str]:
    """``count`` gateways built from ``settings``: each with its own runtime and Redis client."""
    return [await stack.enter_async_context(gateway(settings)) for _ in range(count)]


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


def key(prefix: str, kind: str) -> str:
    return f"{prefix}limits:{{{ANONYMOUS}}}:{kind}"


def ask(client: httpx.AsyncClient, url: str, query: str = "How are limits shared?") -> Any:
    return client.post(f"{url}/qa", json={"query": query})


def refusal(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/json"
    code: str = response.json()["error"]["code"]
    return code


async def test_rpm_is_shared_by_two_instances(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget, stack: AsyncExitStack
) -> None:
    urls = await instances(stack, limited(emulator, redis_target, rpm=6))
    answers = [await ask(client, urls[i % 2]) for i in range(6)]
    seventh = await ask(client, urls[0])

    assert [a.status_code for a in answers] == [200] * 6
    assert all(parse_sse(a.content)[-1][1] == "done" for a in answers)
    assert [a.headers["ratelimit-limit"] for a in answers] == ["6"] * 6
    assert [a.headers["ratelimit-remaining"] for a in answers] == ["5", "4", "3", "2", "1", "0"]
    assert all(0 < int(a.headers["ratelimit-reset"]) <= 60 for a in answers)
    assert seventh.status_code == 429
    assert refusal(seventh) == "rate_limited"
    assert 1 <= int(seventh.headers["retry-after"]) <= 10  # one request every 10 s
    assert seventh.headers["ratelimit-remaining"] == "0"
    assert len(emulator.calls) == 6  # the refused one cost no upstream call
    # Redis holds the count under the prefix, in one hash tag, with an expiry.
    limit_keys = keys_under(redis_target.url, f"{redis_target.prefix}limits:")
    [(name, ttl)] = limit_keys.items()
    assert name.decode() == f"{redis_target.prefix}limits:{{{ANONYMOUS}}}:rpm"
    assert 0 < ttl <= 60_000


async def test_concurrent_answers_are_shared_and_freed_when_one_ends(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget, stack: AsyncExitStack
) -> None:
    urls = await instances(stack, limited(emulator, redis_target, concurrent=2))
    emulator.reset(Behaviour(chunks=20, delay_ms=50))  # each answer stays open for ~1 s
    async with AsyncExitStack() as streams:
        open_ones = []
        for url in urls:  # one open answer on each instance
            response = await streams.enter_async_context(
                client.stream("POST", f"{url}/qa", json={"query": f"open on {url}"})
            )
            assert response.status_code == 200
            assert response.headers["ratelimit-limit"] == "2"
            chunks = response.aiter_bytes()
            assert b"event: meta" in await anext(chunks)
            open_ones.append(chunks)
        third = await ask(client, urls[0], "a third at once")
        assert third.status_code == 429
        assert refusal(third) == "concurrency_limited"
        assert int(third.headers["retry-after"]) >= 1
        with redis_target.client() as shared:
            assert shared.zcard(key(redis_target.prefix, "open")) == 2
        async for _ in open_ones[0]:  # the first answer ends...
            pass
        fourth = await ask(client, urls[1], "a new one once the first has ended")
        assert fourth.status_code == 200  # ...and frees its slot
        assert parse_sse(fourth.content)[-1][1] == "done"
    assert len(emulator.calls) == 3


async def test_an_open_answer_renews_its_lease_and_a_dead_instances_expires(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget, stack: AsyncExitStack
) -> None:
    [url] = await instances(stack, limited(emulator, redis_target, concurrent=1, lease_s=1.0), 1)
    emulator.reset(Behaviour(chunks=80, delay_ms=50))
    loop = asyncio.get_running_loop()
    async with client.stream("POST", f"{url}/qa", json={"query": "a long one"}) as response:
        started = loop.time()
        async for _ in response.aiter_bytes():
            if loop.time() > started + 2.0:  # past two leases: it must have been renewed
                break
        assert (await ask(client, url, "while it lasts")).status_code == 429
    # What a crashed instance leaves: a slot whose lease nobody renews. Live, it counts...
    with redis_target.client() as shared:
        now_us = int(shared.time()[0]) * 1_000_000
        # The client that left frees its slot as soon as the gateway sees it gone.
        assert await wait_for(lambda: shared.zcard(key(redis_target.prefix, "open")) == 0)
        shared.zadd(key(redis_target.prefix, "open"), {"crashed": now_us + 60_000_000})
        emulator.reset()
        assert refusal(await ask(client, url, "behind a live slot")) == "concurrency_limited"
        # ...expired, it is dropped.
        shared.zadd(key(redis_target.prefix, "open"), {"crashed": now_us - 1})
        assert (await ask(client, url, "behind an expired slot")).status_code == 200
        assert shared.zcard(key(redis_target.prefix, "open")) == 0


async def test_tokens_per_day_on_both_routes_then_budget_exhausted(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget, stack: AsyncExitStack
) -> None:
    urls = await instances(stack, limited(emulator, redis_target, tokens_per_day=20))
    first = await ask(client, urls[0], "one two three")
    usage = parse_sse(first.content)[-1][2]["usage"]["total_tokens"]
    chat = await client.post(
        f"{urls[1]}/v1/chat/completions",
        json={"model": "gemini", "messages": [{"role": "user", "content": "four five"}]},
    )
    spent = usage + chat.json()["usage"]["total_tokens"]
    refused = await ask(client, urls[1], "six")
    messages = [{"role": "user", "content": "seven"}]
    chat_refused = await client.post(
        f"{urls[0]}/v1/chat/completions",
        json={"model": "gemini", "messages": messages, "stream": True},
    )

    assert (first.status_code, chat.status_code) == (200, 200)
    assert first.headers["ratelimit-limit"] == "20"
    assert first.headers["ratelimit-remaining"] == "20"  # before this answer's cost
    assert chat.headers["ratelimit-remaining"] == str(20 - usage)
    assert spent >= 20
    for response in (refused, chat_refused):
        assert response.status_code == 429
        assert refusal(response) == "budget_exhausted"
        assert 1 <= int(response.headers["retry-after"]) <= 86_400  # the next UTC midnight
        assert response.headers["ratelimit-remaining"] == "0"
    assert len(emulator.calls) == 2
    with redis_target.client() as shared:
        assert int(shared.hget(key(redis_target.prefix, "tokens"), "used") or 0) == spent
        assert 0 < shared.pttl(key(redis_target.prefix, "tokens")) <= 86_400_000


async def test_a_cache_hit_counts_as_a_request_but_costs_no_tokens(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget, stack: AsyncExitStack
) -> None:
    settings = limited(emulator, redis_target, cached=True, rpm=6, tokens_per_day=1000)
    urls = await instances(stack, settings)
    miss = await ask(client, urls[0])
    with redis_target.client() as shared:
        after_miss = int(shared.hget(key(redis_target.prefix, "tokens"), "used") or 0)
        hit = await ask(client, urls[1])
        after_hit = int(shared.hget(key(redis_target.prefix, "tokens"), "used") or 0)
    third = await ask(client, urls[0], "another question")

    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    assert after_miss == parse_sse(miss.content)[-1][2]["usage"]["total_tokens"] > 0
    assert after_hit == after_miss
    assert [r.headers["ratelimit-remaining"] for r in (miss, hit, third)] == ["5", "4", "3"]


async def test_an_answer_that_fails_to_start_carries_the_headers_too(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget, stack: AsyncExitStack
) -> None:
    [url] = await instances(stack, limited(emulator, redis_target, rpm=6, concurrent=1), 1)
    emulator.reset(Behaviour(fail_first=1, fail_code="INVALID_ARGUMENT"))
    failed = await ask(client, url)
    answered = await ask(client, url)  # the failed one freed its slot

    assert (failed.status_code, refusal(failed)) == (400, "invalid_argument")
    assert failed.headers["ratelimit-remaining"] == "5"
    assert answered.status_code == 200
    assert answered.headers["ratelimit-remaining"] == "4"


async def test_a_corrupt_count_is_that_principals_problem(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget, stack: AsyncExitStack
) -> None:
    [url] = await instances(stack, limited(emulator, redis_target, rpm=6, concurrent=2), 1)
    with redis_target.client() as shared:
        shared.set(key(redis_target.prefix, "rpm"), "garbage", px=60_000)
        repaired = await ask(client, url)  # a count that is not one reads as none...
        assert int(shared.get(key(redis_target.prefix, "rpm")) or 0) > 0  # ...and is replaced
        shared.set(key(redis_target.prefix, "open"), "not a sorted set", px=60_000)
        unchecked_one = await ask(client, url)  # a key of the wrong type: served unchecked,
        shared.delete(key(redis_target.prefix, "open"))
        counted = await ask(client, url)  # without pausing the checks of anyone else

    assert repaired.headers["ratelimit-remaining"] == "5"
    assert unchecked_one.status_code == 200
    assert "ratelimit-remaining" not in unchecked_one.headers
    assert counted.headers["ratelimit-remaining"] == "4"
    assert await unchecked(client, url) == 1


async def test_without_redis_the_limits_hold_in_process(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    async with gateway(limited(emulator, None, rpm=2)) as url:
        statuses = [(await ask(client, url)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


async def unchecked(client: httpx.AsyncClient, url: str) -> float:
    metrics = (await client.get(f"{url}/metrics")).text
    [line] = [x for x in metrics.splitlines() if x.startswith("qa_limits_unchecked_total")]
    return float(line.split()[-1])


@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_stopped(
    client: httpx.AsyncClient,
    emulator: Emulator,
    caplog: pytest.LogCaptureFixture,
    fail_open: bool,
) -> None:
    server = RedisServer().start()
    try:
        settings = limited(emulator, RedisTarget(server.url), rpm=1, fail_open=fail_open)
        async with gateway(settings) as url:
            assert (await ask(client, url)).status_code == 200
            assert (await ask(client, url)).status_code == 429
            server.stop()
            responses = [await ask(client, url, f"during {i}") for i in range(3)]
            assert await unchecked(client, url) == 3
    finally:
        server.stop()
    if fail_open:  # served, past the limit: nobody can count
        assert [r.status_code for r in responses] == [200] * 3
        assert all(parse_sse(r.content)[-1][1] == "done" for r in responses)
        assert "limit checks (requests served unchecked) paused" in caplog.text
    else:
        assert [r.status_code for r in responses] == [503] * 3
        assert {refusal(r) for r in responses} == {"limits_unavailable"}
        assert all(int(r.headers["retry-after"]) >= 1 for r in responses)
        assert "limit checks (requests refused) paused" in caplog.text


async def test_what_the_front_door_sets_picks_the_limits_and_the_count(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget
) -> None:
    """A stand-in for the front door puts a principal (and a key's own limits) in the scope."""
    settings = limited(emulator, redis_target, rpm=3, tenants={"acme": {"rpm": 2}})
    callers = {
        "key": (Principal("key-a", "acme"), LimitOverrides(rpm=1)),
        "user": (Principal("user-1", "acme"), None),
        "other": (Principal("user-2", "beta"), None),
    }

    def front_door(app: ASGIApp) -> ASGIApp:
        async def admit(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                principal, own = callers[dict(scope["headers"])[b"x-caller"].decode()]
                scope.setdefault("state", {}).update(principal=principal, limits=own)
            await app(scope, receive, send)

        return admit

    async with serve(front_door(create_app(settings))) as url:

        async def statuses(caller: str, count: int) -> list[int]:
            headers = {"x-caller": caller}
            return [
                (await client.post(f"{url}/qa", json={"query": "q"}, headers=headers)).status_code
                for _ in range(count)
            ]

        assert await statuses("key", 2) == [200, 429]  # its own rpm
        assert await statuses("user", 3) == [200, 200, 429]  # its tenant's
        assert await statuses("other", 4) == [200, 200, 200, 429]  # the defaults
    limit_keys = keys_under(redis_target.url, f"{redis_target.prefix}limits:")
    tagged = {name.decode().split("{")[1].split("}")[0] for name in limit_keys}
    assert tagged == {"acme/key-a", "acme/user-1", "beta/user-2"}
