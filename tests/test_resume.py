"""Resuming answers by id (``GET /qa/streams/{id}``), on another instance or the same one,
the detach window, and ``GET /qa`` for a browser's ``EventSource``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from backends.emulator import Behaviour, Emulator
from gateway.settings import Settings
from gateway.upstream.base import Principal
from gateway.upstream.streams import Origin
from tests.redis_support import RedisTarget, delete_prefix, redis_named
from tests.support import FAST_RETRY, gateway, parse_sse, settings_for, text_of, wait_for

QUERY = {"query": "Where did my answer go?"}
Frames = list[tuple[int, str, dict[str, Any]]]


@pytest.fixture(params=["memory", "standalone", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[RedisTarget | None]:
    """Where answer streams are kept: in process (None), the shared Redis, a Redis Cluster."""
    if request.param == "memory":
        yield None
        return
    target = redis_named(request, request.param)
    yield target
    delete_prefix(target.url, target.prefix)


def resumable(emulator: Emulator, redis_target: RedisTarget | None, **resume: Any) -> Settings:
    entry = {
        "type": "gemini",
        "endpoint": emulator.rest_address,
        "insecure": True,
        "retry": FAST_RETRY,
    }
    redis: dict[str, Any] = {}
    if redis_target is not None:
        cache = {"prefix": redis_target.prefix, "command_timeout_s": 1.0}
        redis = redis_target.settings() | {"cache": cache}
    return settings_for(
        emulator, backends={"gemini": entry}, resume={"detach_s": 10} | resume, **redis
    )


async def read_events(response: httpx.Response, count: int) -> Frames:
    """The frames so far, once events 1..``count`` are in (the connection stays open)."""
    seen = b""
    chunks = response.aiter_bytes()
    while len(parse_sse(seen.rsplit(b"\n\n", 1)[0] + b"\n\n")) <= count:
        seen += await anext(chunks)
    return [f for f in parse_sse(seen.rsplit(b"\n\n", 1)[0] + b"\n\n") if f[0] <= count]


async def reference(client: httpx.AsyncClient, url: str) -> str:
    """The text of an uninterrupted answer (neither read from nor written to the cache)."""
    answer = await client.post(
        f"{url}/qa", json=QUERY, headers={"Cache-Control": "no-cache, no-store"}
    )
    return text_of(parse_sse(answer.content))


async def drop_after_five(client: httpx.AsyncClient, url: str) -> tuple[str, Frames]:
    async with client.stream("POST", f"{url}/qa", json=QUERY) as response:
        frames = await read_events(response, 5)
        stream_id = response.headers["x-stream-id"]
    assert frames[0][2]["stream_id"] == stream_id and len(stream_id) >= 22
    return stream_id, frames


async def resume_after_five(
    client: httpx.AsyncClient, url: str, stream_id: str, frames: Frames, whole: str
) -> None:
    resumed = await client.get(f"{url}/qa/streams/{stream_id}", headers={"Last-Event-ID": "5"})
    assert resumed.status_code == 200
    rest = parse_sse(resumed.content)
    assert [f[0] for f in frames] == [0, 1, 2, 3, 4, 5]
    assert [f[0] for f in rest] == list(range(6, 6 + len(rest)))
    assert rest[-1][1] == "done"
    assert text_of(frames) + text_of(rest) == whole


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def test_an_answer_resumes_on_another_instance(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget
) -> None:
    settings = resumable(emulator, redis_target)
    async with gateway(settings) as first, gateway(settings) as second:
        emulator.reset(Behaviour(chunks=12, delay_ms=50))
        whole = await reference(client, first)
        emulator.reset(Behaviour(chunks=12, delay_ms=50))
        stream_id, frames = await drop_after_five(client, first)
        await resume_after_five(client, second, stream_id, frames, whole)
    [call] = emulator.calls
    assert call.completed and not call.cancelled


async def test_an_answer_resumes_on_one_instance_without_redis(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    async with gateway(resumable(emulator, None)) as url:
        emulator.reset(Behaviour(chunks=12, delay_ms=50))
        whole = await reference(client, url)
        emulator.reset(Behaviour(chunks=12, delay_ms=50))
        stream_id, frames = await drop_after_five(client, url)
        await resume_after_five(client, url, stream_id, frames, whole)
        [call] = emulator.calls
        assert call.completed and not call.cancelled
        # Finished: the rest at once, then nothing left (204 stops an EventSource).
        again = await client.get(f"{url}/qa/streams/{stream_id}?last_event_id=5")
        assert text_of(frames) + text_of(parse_sse(again.content)) == whole
        last = parse_sse(again.content)[-1][0]
        done = await client.get(
            f"{url}/qa/streams/{stream_id}", headers={"Last-Event-ID": str(last)}
        )
        assert done.status_code == 204
        whole_again = await client.get(f"{url}/qa/streams/{stream_id}")
        assert [f[0] for f in parse_sse(whole_again.content)] == list(range(last + 1))


async def test_dropped_and_never_resumed_is_cancelled_after_the_window(
    client: httpx.AsyncClient, emulator: Emulator, store: RedisTarget | None
) -> None:
    emulator.reset(Behaviour(chunks=200, delay_ms=20))
    async with gateway(resumable(emulator, store, detach_s=0.5)) as url:
        async with client.stream("POST", f"{url}/qa", json=QUERY) as response:
            await read_events(response, 2)
        assert await wait_for(lambda: emulator.calls[0].cancelled, timeout=1.5)
    assert not emulator.calls[0].completed


async def test_asking_again_inside_the_window_joins_the_detached_answer(
    client: httpx.AsyncClient, emulator: Emulator, redis_target: RedisTarget
) -> None:
    emulator.reset(Behaviour(chunks=20, delay_ms=30))
    async with gateway(resumable(emulator, redis_target)) as url:
        async with client.stream("POST", f"{url}/qa", json=QUERY) as response:
            await read_events(response, 2)
            stream_id = response.headers["x-stream-id"]
        again = await client.post(f"{url}/qa", json=QUERY)
    frames = parse_sse(again.content)
    assert again.headers["x-stream-id"] == stream_id
    assert [kind for _, kind, _ in frames] == ["meta"] + ["delta"] * 20 + ["done"]
    [call] = emulator.calls
    assert call.completed and not call.cancelled


async def test_unknown_streams_are_not_found(client: httpx.AsyncClient, emulator: Emulator) -> None:
    async with gateway(resumable(emulator, None)) as url:
        for stream_id in ("A" * 22, "nope", "x" * 300):
            response = await client.get(f"{url}/qa/streams/{stream_id}")
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "stream_not_found"
        bad = await client.get(f"{url}/qa/streams/{'A' * 22}", headers={"Last-Event-ID": "x"})
        assert bad.status_code == 400


def test_a_stream_is_resumed_only_by_its_principal_or_for_a_shared_one_its_tenant() -> None:
    alice, bob, eve = Principal("alice", "acme"), Principal("bob", "acme"), Principal("eve", "evil")
    private, shared = Origin("gemini", alice, False), Origin("gemini", alice, True)
    assert private.allows(alice) and not private.allows(bob) and not private.allows(eve)
    assert shared.allows(bob) and not shared.allows(eve)


async def test_event_source_get_answers_and_reconnects_to_the_same_answer(
    client: httpx.AsyncClient, emulator: Emulator, store: RedisTarget | None
) -> None:
    """What a browser's EventSource does: GET, then (after a cut) the same URL again with
    ``Last-Event-ID`` and ``Cache-Control: no-cache``: it resumes, also once finished."""
    emulator.reset(Behaviour(chunks=10, delay_ms=30))
    browser = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    async with gateway(resumable(emulator, store)) as url:
        page = f"{url}/qa?query={QUERY['query']}&backend=gemini"
        async with client.stream("GET", page, headers=browser) as response:
            assert response.status_code == 200
            frames = await read_events(response, 3)
        resumed = await client.get(page, headers=browser | {"Last-Event-ID": "3"})
        rest = parse_sse(resumed.content)
        assert resumed.headers["x-stream-id"] == frames[0][2]["stream_id"]
        assert [f[0] for f in rest] == list(range(4, 12)) and rest[-1][1] == "done"
        finished = await client.get(page, headers=browser | {"Last-Event-ID": "9"})
        assert [f[0] for f in parse_sse(finished.content)] == [10, 11]
        hit = await client.get(page, headers=browser)  # a first GET reads the cache
        assert hit.headers["x-cache"] == "HIT"
        assert text_of(parse_sse(hit.content)) == text_of(frames) + text_of(rest)
    assert len(emulator.calls) == 1


async def test_event_source_get_is_validated_like_post(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    settings = resumable(emulator, None)
    settings.max_query_bytes = 64
    async with gateway(settings) as url:
        assert (await client.get(f"{url}/qa?query=" + "q" * 65)).status_code == 413
        assert (await client.get(f"{url}/qa?query=" + "q" * 2000)).status_code == 414
        assert (await client.get(f"{url}/qa?query=%20")).status_code == 422
        assert (await client.get(f"{url}/qa")).status_code == 422
        assert (await client.get(f"{url}/qa?query=q&colour=red")).status_code == 422
        assert (await client.get(f"{url}/qa?query=q&backend=nope")).status_code == 404


async def test_every_answer_carries_its_stream_id(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    async with gateway(resumable(emulator, None)) as url:
        ndjson = await client.post(f"{url}/qa?format=ndjson", json=QUERY)
        chat = await client.post(
            f"{url}/v1/chat/completions",
            json={
                "model": "gemini",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    assert (
        ndjson.headers["x-stream-id"]
        == httpx.Response(200, content=ndjson.content.split(b"\n")[0]).json()["stream_id"]
    )
    assert len(chat.headers["x-stream-id"]) >= 22


async def test_an_answer_past_the_caps_reaches_its_client_but_is_not_kept(
    client: httpx.AsyncClient, emulator: Emulator, store: RedisTarget | None
) -> None:
    emulator.reset(Behaviour(chunks=12))
    settings = resumable(emulator, store, max_events=5)
    async with gateway(settings) as url:
        answers = [await client.post(f"{url}/qa", json=QUERY) for _ in range(2)]
        kinds = [kind for _, kind, _ in parse_sse(answers[0].content)]
        assert kinds == ["meta"] + ["delta"] * 12 + ["done"]
        assert [a.headers["x-cache"] for a in answers] == ["MISS", "MISS"]
        stream_id = answers[0].headers["x-stream-id"]
        assert (await client.get(f"{url}/qa/streams/{stream_id}")).status_code == 404
    assert len(emulator.calls) == 2
