"""The answer cache on the real Redis (own key prefix per test), and single flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest

from backends.base import Turn
from backends.emulator import Behaviour, Emulator
from backends.gemini import GeminiConfig
from gateway.settings import Settings
from gateway.upstream.entries import cache_key, identity_of
from gateway.upstream.streams import new_stream_id
from tests.redis_support import RedisServer, RedisTarget
from tests.support import caching, gateway, parse_sse, text_of, wait_for

QUERY = {"query": "What does the cache keep?"}


def cached(emulator: Emulator, redis_target: RedisTarget, **extra: Any) -> Settings:
    return caching(
        emulator,
        extra.pop("entry", {}),
        # Generous timeouts: a busy CI machine must not turn these tests into outage tests.
        cache={"prefix": redis_target.prefix, "command_timeout_s": 1.0, "breaker_s": 0.3}
        | extra.pop("cache", {}),
        **redis_target.settings(),
        **extra,
    )


@asynccontextmanager
async def two_instances(
    emulator: Emulator, redis_target: RedisTarget
) -> AsyncIterator[tuple[str, str, httpx.AsyncClient]]:
    """Two gateways sharing one Redis prefix (two instances), and a client."""
    settings = cached(emulator, redis_target)
    async with (
        gateway(settings) as first,
        gateway(settings) as second,
        httpx.AsyncClient(timeout=30) as client,
    ):
        yield first, second, client


def answer_keys(redis_target: RedisTarget) -> dict[bytes, int]:
    """The questions' pointers under the test's prefix, with their time to live."""
    found = redis_target.stored()
    return {k: ttl for k, ttl in found.items() if k.count(b":") == 2}


def comparable(frames: list[tuple[int, str, dict[str, Any]]]) -> list[Any]:
    """Frames without what legitimately differs between two answers: request id, cached,
    stream id."""
    meta = {k: v for k, v in frames[0][2].items() if k not in ("request_id", "cached", "stream_id")}
    return [(0, "meta", meta), *frames[1:]]


async def test_miss_then_hit_replays_the_same_stream(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget
) -> None:
    async with gateway(cached(emulator, redis_target)) as url:
        first = await client.post(f"{url}/qa", json=QUERY)
        second = await client.post(f"{url}/qa", json={"query": "  What does the\tcache keep? "})

    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    one, two = parse_sse(first.content), parse_sse(second.content)
    assert one[0][2]["cached"] is False
    assert two[0][2]["cached"] is True
    assert comparable(one) == comparable(two)
    assert len(emulator.calls) == 1
    [(_key, ttl)] = answer_keys(redis_target).items()
    assert 0 < ttl <= 3600 * 1000
    assert all(ttl > 0 for ttl in redis_target.stored().values())


@pytest.mark.parametrize("fault", ["fail_after", "disconnect", "idle_timeout"])
async def test_truncated_answers_are_not_stored(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget, fault: str
) -> None:
    behaviour = {
        "fail_after": Behaviour(fail_after=3),
        "disconnect": Behaviour(chunks=50, delay_ms=20),
        "idle_timeout": Behaviour(hang_after=3),
    }[fault]
    emulator.reset(behaviour)
    async with gateway(cached(emulator, redis_target, entry={"idle_s": 0.2})) as url:
        async with client.stream("POST", f"{url}/qa", json=QUERY) as response:
            async for chunk in response.aiter_bytes():
                if fault == "disconnect" and b"event: delta" in chunk:
                    break
        assert await wait_for(lambda: emulator.calls[0].cancelled or emulator.calls[0].failed)
        await asyncio.sleep(0.05)
        assert answer_keys(redis_target) == {}
        emulator.reset()
        again = await client.post(f"{url}/qa", json=QUERY)
    assert again.headers["x-cache"] == "MISS"


async def test_a_failed_answer_leaves_a_question_taken_over_alone(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget
) -> None:
    """The question's pointer, taken over by another stream while this one was answering,
    still names that stream once this one has failed."""
    emulator.reset(Behaviour(fail_after=3, delay_ms=30))
    other, key = new_stream_id(), None
    async with gateway(cached(emulator, redis_target)) as url:
        async with client.stream("POST", f"{url}/qa", json=QUERY) as response:
            async for chunk in response.aiter_bytes():
                if key is None and b"event: delta" in chunk:
                    [key] = answer_keys(redis_target)  # another instance takes it over
                    with redis_target.client() as r:
                        r.set(key, other, px=60_000)
        assert b"event: error" in chunk
    with redis_target.client() as r:
        assert r.get(key) == other.encode()


def test_keys_differ_by_everything_that_changes_the_answer() -> None:
    def key(
        query: str = "q", tenant: str = "t", history: tuple[Turn, ...] = (), **config: Any
    ) -> str:
        backend = GeminiConfig(type="gemini", **config).build("gemini")
        return cache_key("p:", identity_of(backend), query, tenant, history)

    base = key()
    assert key("  q ") == base
    assert (
        len(
            {
                base,
                key(model="gemini-2.5-pro"),
                key(generation={"temperature": 0.9}),
                key(safety={"HARM_CATEGORY_HARASSMENT": "OFF"}),
                key(system_instruction="Be terse."),
                key(tenant="other"),
                key("Q"),
                key(history=(Turn("user", "q"),)),
                key(history=(Turn("model", "q"),)),
            }
        )
        == 9
    )
    assert key(deadline_s=5) == base  # not part of the answer


async def test_tenants_and_models_never_share_answers(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget
) -> None:
    for settings in (
        cached(emulator, redis_target),
        cached(emulator, redis_target, cache={"tenant": "acme"}),
        cached(emulator, redis_target, entry={"model": "gemini-2.5-pro"}),
    ):
        async with gateway(settings) as url:
            response = await client.post(f"{url}/qa", json=QUERY)
            assert response.headers["x-cache"] == "MISS"
    assert len(emulator.calls) == 3
    assert len(answer_keys(redis_target)) == 3


async def test_a_question_is_cached_with_its_conversation(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget
) -> None:
    earlier = [{"role": "user", "text": "Which clouds?"}, {"role": "model", "text": "Vertex."}]
    asked = [
        QUERY,
        QUERY | {"history": earlier},
        QUERY | {"history": earlier[:1]},
        QUERY | {"history": earlier},
        QUERY,
    ]
    async with gateway(cached(emulator, redis_target)) as url:
        responses = [await client.post(f"{url}/qa", json=body) for body in asked]
    assert [r.headers["x-cache"] for r in responses] == ["MISS", "MISS", "MISS", "HIT", "HIT"]
    assert len(emulator.calls) == len(answer_keys(redis_target)) == 3
    assert responses[3].content.split(b"\n\n")[1:] == responses[1].content.split(b"\n\n")[1:]


async def test_garbage_entry_is_a_miss_then_overwritten(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget
) -> None:
    async with gateway(cached(emulator, redis_target)) as url:
        await client.post(f"{url}/qa", json=QUERY)
        [key] = answer_keys(redis_target)
        for garbage in (b"\x00not json", b'{"v": 0, "events": []}', b'{"v": 1}'):
            with redis_target.client() as r:
                r.set(key, garbage, px=60_000)
            miss = await client.post(f"{url}/qa", json=QUERY)
            hit = await client.post(f"{url}/qa", json=QUERY)
            assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
            assert text_of(parse_sse(hit.content)) == text_of(parse_sse(miss.content))
    assert len(emulator.calls) == 4


async def test_identical_concurrent_requests_share_one_call(
    emulator: Emulator, redis_target: RedisTarget
) -> None:
    emulator.reset(Behaviour(chunks=20, delay_ms=10))
    async with (
        gateway(cached(emulator, redis_target)) as url,
        httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=60)) as client,
    ):
        responses = await asyncio.gather(*(client.post(f"{url}/qa", json=QUERY) for _ in range(50)))
        assert await redis_errors(client, url) == 0  # all at once, on a fresh client too
    answers = [comparable(parse_sse(r.content)) for r in responses]
    assert all(answer == answers[0] for answer in answers)
    assert answers[0][-1][1] == "done"
    assert len(emulator.calls) == 1


async def _read_until(chunks: AsyncIterator[bytes], deltas: int) -> bytes:
    """The stream so far, once it holds ``deltas`` delta events; the connection stays open."""
    seen = b""
    while seen.count(b"event: delta") < deltas:
        seen += await anext(chunks)
    return seen


@pytest.mark.parametrize("leaves_after", [0, 3], ids=["before-first-event", "mid-stream"])
async def test_a_client_leaving_never_cuts_the_others_short(
    emulator: Emulator, redis_target: RedisTarget, leaves_after: int
) -> None:
    """The first asker leaves (before the first event, or mid-stream); the one who joined its
    flight still gets the whole answer from the same upstream call, and it is stored."""
    emulator.reset(Behaviour(chunks=12, delay_ms=30, first_delay_ms=400))
    async with (
        gateway(cached(emulator, redis_target)) as url,
        httpx.AsyncClient(timeout=30) as client,
    ):
        alone = await client.post(f"{url}/qa", json={"query": "the reference answer"})
        emulator.reset(Behaviour(chunks=12, delay_ms=30, first_delay_ms=400))
        first = client.stream("POST", f"{url}/qa", json=QUERY)
        second = client.stream("POST", f"{url}/qa", json=QUERY)
        if leaves_after:
            chunks = (await first.__aenter__()).aiter_bytes()  # kept: dropping it hangs up
            await _read_until(chunks, leaves_after)
            answer = await second.__aenter__()  # its status line: it has joined
            await first.__aexit__(None, None, None)
        else:  # both wait for the first event; the second joins while the first still waits
            waiting = asyncio.create_task(first.__aenter__())
            assert await wait_for(lambda: len(emulator.calls) == 1)
            joined = asyncio.create_task(second.__aenter__())
            await asyncio.sleep(0.1)
            waiting.cancel()  # the first client hangs up
            with pytest.raises(asyncio.CancelledError):
                await waiting
            answer = await joined
        other = await answer.aread()
        await second.__aexit__(None, None, None)
    kinds = [kind for _, kind, _ in parse_sse(other)]
    assert kinds == [kind for _, kind, _ in parse_sse(alone.content)]
    assert kinds[-1] == "done" and kinds.count("delta") == 12
    [call] = emulator.calls
    assert call.completed and not call.cancelled
    assert await wait_for(lambda: len(answer_keys(redis_target)) == 2)


async def test_when_every_client_leaves_the_upstream_call_is_cancelled(
    emulator: Emulator, redis_target: RedisTarget
) -> None:
    emulator.reset(Behaviour(chunks=100, delay_ms=20))
    async with (
        gateway(cached(emulator, redis_target)) as url,
        httpx.AsyncClient(timeout=30) as client,
    ):
        async with client.stream("POST", f"{url}/qa", json=QUERY) as one:
            chunks = one.aiter_bytes()  # kept: dropping it hangs up
            await _read_until(chunks, 2)
            async with client.stream("POST", f"{url}/qa", json=QUERY) as two:
                await _read_until(two.aiter_bytes(), 3)
        assert await wait_for(lambda: emulator.calls[0].cancelled, timeout=1.0)
        [call] = emulator.calls
        assert not call.completed
        async with client.stream("POST", f"{url}/qa", json=QUERY) as alone:
            await _read_until(alone.aiter_bytes(), 1)
        assert await wait_for(lambda: emulator.calls[-1].cancelled, timeout=1.0)
    assert len(emulator.calls) == 2
    assert answer_keys(redis_target) == {}


async def test_asked_again_right_after_hanging_up_gets_a_whole_new_answer(
    emulator: Emulator, redis_target: RedisTarget
) -> None:
    """Stop, then ask again at once: the new question never follows the abandoned call."""
    emulator.reset(Behaviour(chunks=8, delay_ms=20))
    async with (
        gateway(cached(emulator, redis_target)) as url,
        httpx.AsyncClient(timeout=30) as client,
    ):
        async with client.stream("POST", f"{url}/qa", json=QUERY) as stopped:
            chunks = stopped.aiter_bytes()
            await _read_until(chunks, 2)
        again = await client.post(f"{url}/qa", json=QUERY)
    kinds = [kind for _, kind, _ in parse_sse(again.content)]
    assert kinds == ["meta"] + ["delta"] * 8 + ["done"]
    assert [call.cancelled for call in emulator.calls] == [True, False]


async def test_leaving_before_the_first_event_cancels_the_flight(
    emulator: Emulator, redis_target: RedisTarget
) -> None:
    emulator.reset(Behaviour(first_delay_ms=5000))
    async with (
        gateway(cached(emulator, redis_target)) as url,
        httpx.AsyncClient(timeout=30) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{url}/qa", json=QUERY, timeout=0.3)
        assert await wait_for(lambda: emulator.calls and emulator.calls[0].cancelled, timeout=2.0)
    assert answer_keys(redis_target) == {}


async def test_a_call_followed_from_another_instance_outlives_its_first_asker(
    emulator: Emulator, redis_target: RedisTarget
) -> None:
    """The asker on the first instance hangs up before the first event while one on the
    second instance follows that flight through Redis: the call goes on for the second."""
    emulator.reset(Behaviour(chunks=8, delay_ms=10, first_delay_ms=600))
    async with two_instances(emulator, redis_target) as (first_url, second_url, client):
        first = asyncio.create_task(client.post(f"{first_url}/qa", json=QUERY))
        assert await wait_for(lambda: len(emulator.calls) == 1)
        second = asyncio.create_task(client.post(f"{second_url}/qa", json=QUERY))
        assert await wait_for(lambda: any(k.endswith(b":followers") for k in redis_target.stored()))
        first.cancel()  # the first asker hangs up; the second instance still follows
        with pytest.raises(asyncio.CancelledError):
            await first
        answer = await second
    kinds = [kind for _, kind, _ in parse_sse(answer.content)]
    assert (answer.status_code, kinds) == (200, ["meta"] + ["delta"] * 8 + ["done"])
    [call] = emulator.calls
    assert call.completed and not call.cancelled


async def test_an_answer_that_is_only_done_reaches_followers_elsewhere(
    emulator: Emulator, redis_target: RedisTarget
) -> None:
    """A blocked prompt's answer is one ``done`` event: the instance following it through
    Redis ends with that ``done`` too."""
    emulator.reset(Behaviour(first_delay_ms=400))
    blocked = {"query": "Tell me [skip] now"}
    async with two_instances(emulator, redis_target) as (first_url, second_url, client):
        first = asyncio.create_task(client.post(f"{first_url}/qa", json=blocked))
        assert await wait_for(lambda: len(emulator.calls) == 1)
        second = await client.post(f"{second_url}/qa", json=blocked)
        answers = [await first, second]
    for answer in answers:
        assert [kind for _, kind, _ in parse_sse(answer.content)] == ["meta", "done"]
        assert parse_sse(answer.content)[-1][2]["finish_reason"] == "skipped"
    assert len(emulator.calls) == 1


async def test_an_answer_abandoned_elsewhere_is_never_followed(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget
) -> None:
    """Asked in the moment between another instance abandoning its call and releasing the
    question: the half answer it left in Redis is not replayed; this instance answers afresh."""
    async with gateway(cached(emulator, redis_target)) as url:
        reference = await client.post(f"{url}/qa", json=QUERY)
        [key] = answer_keys(redis_target)
        abandoned = [
            ["meta", {"backend": "gemini", "owner": "anonymous", "tenant": "default"}],
            ["delta", {"text": "Half an answer"}],
            ["error", {"code": "abandoned", "message": "every client left", "retryable": True}],
        ]
        stream = f"{redis_target.prefix}s:{{{'A' * 22}}}".encode()
        with redis_target.client() as r:
            r.set(key, "A" * 22, px=10_000)  # the question still points at that stream
            r.set(stream + b":live", b"1", px=10_000)  # the other instance, still on it
            for seq, entry in enumerate(abandoned):
                r.xadd(stream + b":events", {"e": orjson.dumps(entry)}, id=f"1-{seq}")
            r.pexpire(stream + b":events", 10_000)
        answer = await client.post(f"{url}/qa", json=QUERY)
    assert answer.status_code == 200
    assert comparable(parse_sse(answer.content)) == comparable(parse_sse(reference.content))
    assert len(emulator.calls) == 2


async def test_failure_reaches_every_client_and_nothing_is_stored(
    emulator: Emulator, redis_target: RedisTarget
) -> None:
    emulator.reset(Behaviour(chunks=20, delay_ms=20, fail_after=5))
    async with (
        gateway(cached(emulator, redis_target)) as url,
        httpx.AsyncClient(timeout=30) as client,
    ):
        responses = await asyncio.gather(*(client.post(f"{url}/qa", json=QUERY) for _ in range(5)))
    for response in responses:
        kinds = [kind for _, kind, _ in parse_sse(response.content)]
        assert kinds == ["meta"] + ["delta"] * 5 + ["error"]
    assert len(emulator.calls) == 1
    assert answer_keys(redis_target) == {}


async def test_cache_control_and_bypasses(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget
) -> None:
    settings = cached(emulator, redis_target)
    settings.backends["plain"] = settings.backends["gemini"].model_copy(update={"cache": False})
    async with gateway(settings) as url:
        stored_nothing = await client.post(
            f"{url}/qa", json=QUERY, headers={"Cache-Control": "no-store"}
        )
        assert stored_nothing.headers["x-cache"] == "MISS"
        assert answer_keys(redis_target) == {}
        await client.post(f"{url}/qa", json=QUERY)
        refreshed = await client.post(
            f"{url}/qa", json=QUERY, headers={"Cache-Control": "no-cache"}
        )
        assert refreshed.headers["x-cache"] == "BYPASS"
        assert len(emulator.calls) == 3
        follow_up = await client.post(f"{url}/qa", json=QUERY | {"session_id": "s1"})
        assert follow_up.headers["x-cache"] == "BYPASS"
        off = await client.post(f"{url}/qa", json=QUERY | {"backend": "plain"})
        assert off.headers["x-cache"] == "BYPASS"
        assert len(emulator.calls) == 5
        assert (await client.post(f"{url}/qa", json=QUERY)).headers["x-cache"] == "HIT"


async def redis_errors(client: httpx.AsyncClient, url: str) -> float:
    scrape = (await client.get(f"{url}/metrics")).text
    [line] = [line for line in scrape.splitlines() if line.startswith("qa_redis_errors_total")]
    return float(line.split()[-1])


@pytest.mark.parametrize("outage", ["stopped", "paused"])
async def test_redis_trouble_never_fails_a_request(
    client: httpx.AsyncClient, emulator: Emulator, outage: str
) -> None:
    """Every request is answered, and only the first one meets the failing Redis: it waits at
    most one 50 ms timeout; the breaker spares the others any wait (the bound, by design)."""
    server = RedisServer().start()
    try:
        fast = {"command_timeout_s": 0.05, "connect_timeout_s": 0.05, "breaker_s": 3.0}
        own = RedisTarget(server.url, prefix="t:")
        async with gateway(cached(emulator, own, cache=fast)) as url:
            await client.post(f"{url}/qa", json={"query": "warm"})
            assert await redis_errors(client, url) == 0
            server.stop() if outage == "stopped" else server.pause()
            for i in range(5):
                response = await client.post(f"{url}/qa", json={"query": f"during {i}"})
                assert response.status_code == 200
                assert parse_sse(response.content)[-1][1] == "done"
            assert await redis_errors(client, url) == 1
            server.start() if outage == "stopped" else server.resume()
            await asyncio.sleep(3.1)  # the breaker's pause
            results = []
            for _ in range(10):  # caching resumes (a busy machine may need a few tries)
                response = await client.post(f"{url}/qa", json={"query": "after"})
                results.append(response.headers["x-cache"])
                if results[-1] == "HIT":
                    break
            assert results[-1] == "HIT", results
    finally:
        server.stop()
