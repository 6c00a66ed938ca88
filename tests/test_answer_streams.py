"""Shared answers stay correct: a follower sees only the attempt it joined, and a bad value
under a question's keys is that key's problem, never an outage of the instance."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from backends.emulator import Behaviour, Emulator
from backends.emulator.gemini import answer_chunks
from gateway.upstream.streams import encode, new_stream_id
from tests.redis_support import RedisTarget
from tests.support import gateway, parse_sse, text_of, wait_for
from tests.test_cache import answer_keys, cached, two_instances

QUERY = {"query": "Which attempt do I follow?"}


async def metric(client: httpx.AsyncClient, url: str, name: str) -> float:
    scrape = (await client.get(f"{url}/metrics")).text
    values = [float(line.split()[-1]) for line in scrape.splitlines() if line.startswith(name)]
    return sum(values)


async def test_a_follower_never_sees_an_earlier_attempts_error(
    emulator: Emulator, redis_target: RedisTarget
) -> None:
    """The first attempt at a question fails (400); the second streams on one instance while
    the other instance follows it: the follower gets the second attempt, not the old error."""
    async with two_instances(emulator, redis_target) as (first_url, second_url, client):
        emulator.reset(Behaviour(fail_first=1, fail_code="INVALID_ARGUMENT"))
        failed = await client.post(f"{first_url}/qa", json=QUERY)
        assert failed.status_code == 400
        emulator.reset(Behaviour(chunks=8, delay_ms=30, first_delay_ms=200))
        answering = asyncio.create_task(client.post(f"{first_url}/qa", json=QUERY))
        assert await wait_for(lambda: len(emulator.calls) == 1)
        following = await client.post(f"{second_url}/qa", json=QUERY)
        answered = await answering
    for response in (answered, following):
        kinds = [kind for _, kind, _ in parse_sse(response.content)]
        assert (response.status_code, kinds) == (200, ["meta"] + ["delta"] * 8 + ["done"])
    assert len(emulator.calls) == 1


@pytest.mark.parametrize("where", ["question", "stream"])
async def test_a_wrong_typed_value_is_replaced_and_never_pauses_caching(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget, where: str
) -> None:
    """A hash where the question's pointer should be, or a string where its stream should
    be (with no expiry): that question is answered, counted, and cached again; the breaker
    stays closed and other questions keep caching throughout."""
    async with gateway(cached(emulator, redis_target)) as url:
        await client.post(f"{url}/qa", json=QUERY)
        [key] = answer_keys(redis_target)
        with redis_target.client() as r:
            if where == "question":
                r.delete(key)
                r.hset(key, "planted", "1")
            else:
                streams = [k for k in redis_target.stored() if k != key]
                for stream_key in streams:
                    r.delete(stream_key)
                    r.set(stream_key, b"planted")
        results = []
        for i in range(3):
            results.append((await client.post(f"{url}/qa", json=QUERY)).headers["x-cache"])
            other = {"query": f"another question {i}"}
            again = [(await client.post(f"{url}/qa", json=other)).headers["x-cache"] for _ in "ab"]
            assert again == ["MISS", "HIT"]
        assert results == ["MISS", "HIT", "HIT"]
        assert await metric(client, url, "qa_redis_errors_total") == 0
        assert await metric(client, url, "qa_redis_bad_values_total") >= 1
    assert all(ttl > 0 for ttl in redis_target.stored().values())


async def test_a_follower_elsewhere_gets_the_error_of_the_attempt_it_joined(
    emulator: Emulator, redis_target: RedisTarget
) -> None:
    """The attempt it joined fails before its first event (quota, after a retry): the
    follower gets that error too, with no upstream call of its own; the next asker starts
    afresh."""
    slow_retry = {"attempts": 2, "initial_s": 0.6, "max_s": 0.6}
    settings = cached(emulator, redis_target, entry={"retry": slow_retry})
    async with (
        gateway(settings) as first_url,
        gateway(settings) as second_url,
        httpx.AsyncClient(timeout=30) as client,
    ):
        emulator.reset(Behaviour(fail_first=2, fail_code="RESOURCE_EXHAUSTED"))
        answering = asyncio.create_task(client.post(f"{first_url}/qa", json=QUERY))
        assert await wait_for(lambda: len(emulator.calls) == 1)  # now in its backoff
        following = await client.post(f"{second_url}/qa", json=QUERY)
        failed = await answering
        assert (failed.status_code, following.status_code) == (429, 429)
        assert len(emulator.calls) == 2  # both from the first instance
        again = await client.post(f"{second_url}/qa", json=QUERY)
    assert again.status_code == 200 and len(emulator.calls) == 3


async def test_what_redis_holds_for_a_cached_answer(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget
) -> None:
    """The question's pointer and its stream under the stream's hash tag, both expiring;
    entry ``1-n`` is the n-th event, ``1-0`` the origin; no heartbeat once finished."""
    async with gateway(cached(emulator, redis_target)) as url:
        answer = await client.post(f"{url}/qa", json=QUERY)
    stream_id = answer.headers["x-stream-id"]
    [key] = answer_keys(redis_target)
    events_key = f"{redis_target.prefix}s:{{{stream_id}}}:events".encode()
    assert set(redis_target.stored()) == {key, events_key}
    with redis_target.client() as r:
        assert r.get(key) == stream_id.encode()
        entries = r.xrange(events_key)
        assert 0 < r.pttl(events_key) <= 3600 * 1000
    frames = parse_sse(answer.content)
    assert [entry_id for entry_id, _ in entries] == [f"1-{n}".encode() for n, _, _ in frames]
    assert b"c" in entries[-1][1]  # the end of a cached answer


async def test_a_stream_whose_producer_died_is_taken_over_once(
    emulator: Emulator, redis_target: RedisTarget
) -> None:
    """The question points at what a crashed instance left (its stream's origin and a first
    delta; no heartbeat, no end): two instances asked at once take it over atomically, so one
    upstream call answers both, afresh, never with the dead answer's text; a resume of the
    dead stream is 404."""
    async with two_instances(emulator, redis_target) as (first_url, second_url, client):
        await client.post(f"{first_url}/qa", json=QUERY)
        [key] = answer_keys(redis_target)
        dead = new_stream_id()
        events_key = f"{redis_target.prefix}s:{{{dead}}}:events"
        origin = {"backend": "gemini", "owner": "anonymous", "tenant": "default", "shared": True}
        with redis_target.client() as r:
            r.xadd(events_key, {"e": encode("meta", origin)}, id="1-0")
            r.xadd(events_key, {"e": encode("delta", {"text": "The dead answer "})}, id="1-1")
            r.expire(events_key, 60)
            r.set(key, dead, px=60_000)
        emulator.reset(Behaviour(first_delay_ms=200))
        replies = await asyncio.gather(
            *(client.post(f"{url}/qa", json=QUERY) for url in (first_url, second_url))
        )
        resumed = await client.get(f"{second_url}/qa/streams/{dead}")
        with redis_target.client() as r:
            pointer = r.get(key)
    for reply in replies:
        frames = parse_sse(reply.content)
        assert [kind for _, kind, _ in frames] == ["meta"] + ["delta"] * 8 + ["done"]
        assert text_of(frames) == "".join(answer_chunks(QUERY["query"], 8))
    assert len(emulator.calls) == 1
    assert pointer == replies[0].headers["x-stream-id"].encode() != dead.encode()
    assert (resumed.status_code, resumed.json()["error"]["code"]) == (404, "stream_not_found")
