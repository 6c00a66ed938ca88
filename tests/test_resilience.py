"""Retries, timeouts, fallback, retry budget and disconnects, against the emulator's faults."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import pytest

from backends.emulator import Behaviour, Emulator
from backends.emulator.gemini import answer_chunks
from gateway.app import create_app
from tests.support import FAST_RETRY, gateway, parse_sse, serve, settings_for, text_of, wait_for

QUERY = {"query": "Is the gateway resilient?"}
ANSWER = "".join(answer_chunks(QUERY["query"], 8))


def gemini(emulator: Emulator, transport: str = "rest", **policy: Any) -> dict[str, Any]:
    return {
        "type": "gemini",
        "transport": transport,
        "endpoint": emulator.address_for(transport),
        "insecure": True,
        "retry": FAST_RETRY,
        **policy,
    }


async def test_unavailable_twice_then_success(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(fail_first=2, fail_code="UNAVAILABLE"))
    response = await client.post(f"{gemini_url}/qa", json=QUERY)

    assert response.status_code == 200
    frames = parse_sse(response.content)
    assert [kind for _, kind, _ in frames] == ["meta"] + ["delta"] * 8 + ["done"]
    assert text_of(frames) == ANSWER
    assert len(emulator.calls) == 3
    assert [call.failed for call in emulator.calls] == ["UNAVAILABLE", "UNAVAILABLE", None]


async def test_quota_retried_with_growing_waits_then_429(
    client: httpx.AsyncClient, emulator: Emulator, transport: str
) -> None:
    retry = {"attempts": 4, "initial_s": 0.02, "multiplier": 2, "max_s": 1}
    emulator.reset(Behaviour(fail_first=99, fail_code="RESOURCE_EXHAUSTED"))
    settings = settings_for(
        emulator, transport, backends={"gemini": gemini(emulator, transport, retry=retry)}
    )
    async with gateway(settings) as url:
        response = await client.post(f"{url}/qa", json=QUERY)

    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "resource_exhausted"
    assert len(emulator.calls) == 4
    stamps = [call.received_at for call in emulator.calls]
    gaps = [later - earlier for earlier, later in itertools.pairwise(stamps)]
    # Each wait is at least half its backoff: 0.02, 0.04, 0.08 s.
    for gap, backoff in zip(gaps, (0.02, 0.04, 0.08), strict=True):
        assert gap >= backoff / 2


async def test_server_retry_delay_is_honoured(
    client: httpx.AsyncClient, emulator: Emulator, transport: str
) -> None:
    emulator.reset(Behaviour(fail_first=1, fail_code="RESOURCE_EXHAUSTED", retry_after_ms=300))
    settings = settings_for(emulator, transport, backends={"gemini": gemini(emulator, transport)})
    async with gateway(settings) as url:
        response = await client.post(f"{url}/qa", json=QUERY)

    assert response.status_code == 200
    first, second = emulator.calls
    assert second.received_at - first.received_at >= 0.3


async def test_retry_after_header_carries_the_server_delay(
    client: httpx.AsyncClient, emulator: Emulator, transport: str
) -> None:
    emulator.reset(Behaviour(fail_first=99, fail_code="UNAVAILABLE", retry_after_ms=2500))
    retry = FAST_RETRY | {"attempts": 1}
    settings = settings_for(
        emulator, transport, backends={"gemini": gemini(emulator, transport, retry=retry)}
    )
    async with gateway(settings) as url:
        response = await client.post(f"{url}/qa", json=QUERY)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("INVALID_ARGUMENT", 400),
        ("PERMISSION_DENIED", 502),
        ("UNAUTHENTICATED", 502),
        ("NOT_FOUND", 502),
        ("FAILED_PRECONDITION", 400),
    ],
)
async def test_permanent_errors_are_not_retried(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator, code: str, status: int
) -> None:
    emulator.reset(Behaviour(fail_first=99, fail_code=code))
    response = await client.post(f"{gemini_url}/qa", json=QUERY)
    assert response.status_code == status
    assert response.json()["error"] == {
        "code": code.lower(),
        "message": f"emulated {code}",
        "retryable": False,
    }
    assert len(emulator.calls) == 1


async def test_first_event_hang_times_out_and_is_retried(
    client: httpx.AsyncClient, emulator: Emulator, transport: str
) -> None:
    emulator.reset(Behaviour(hang_first=1))
    retry = FAST_RETRY | {"first_event_s": 0.2}
    settings = settings_for(
        emulator, transport, backends={"gemini": gemini(emulator, transport, retry=retry)}
    )
    async with gateway(settings) as url:
        response = await client.post(f"{url}/qa", json=QUERY)

    assert response.status_code == 200
    assert text_of(parse_sse(response.content)) == ANSWER
    assert len(emulator.calls) == 2
    assert await wait_for(lambda: emulator.calls[0].cancelled)


async def test_idle_stall_midstream_ends_with_an_error_event(
    client: httpx.AsyncClient, emulator: Emulator, transport: str
) -> None:
    emulator.reset(Behaviour(hang_after=2))
    settings = settings_for(
        emulator, transport, backends={"gemini": gemini(emulator, transport, idle_s=0.2)}
    )
    async with gateway(settings) as url:
        response = await client.post(f"{url}/qa", json=QUERY)

    frames = parse_sse(response.content)
    assert [kind for _, kind, _ in frames] == ["meta", "delta", "delta", "error"]
    assert frames[-1][2]["code"] == "idle_timeout"
    assert frames[-1][2]["retryable"] is True
    assert len(emulator.calls) == 1
    assert await wait_for(lambda: emulator.calls[0].cancelled)


async def test_failure_after_two_chunks_is_never_retried(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(fail_after=2))
    response = await client.post(f"{gemini_url}/qa", json=QUERY)

    frames = parse_sse(response.content)
    assert [kind for _, kind, _ in frames] == ["meta", "delta", "delta", "error"]
    assert text_of(frames) == "".join(answer_chunks(QUERY["query"], 8)[:2])
    assert len(emulator.calls) == 1


async def test_fallback_answers_when_the_primary_keeps_failing(
    client: httpx.AsyncClient, emulator: Emulator, transport: str
) -> None:
    emulator.reset(Behaviour(fail_first=3))  # every attempt of the primary
    settings = settings_for(
        emulator,
        backends={
            "gemini": gemini(emulator, transport, fallback=["backup"]),
            "backup": gemini(emulator, transport, model="gemini-backup"),
        },
    )
    async with gateway(settings) as url:
        response = await client.post(f"{url}/qa", json=QUERY)

    assert response.status_code == 200
    frames = parse_sse(response.content)
    assert frames[0][2]["backend"] == "backup"
    assert frames[0][2]["model"] == "gemini-backup"
    assert text_of(frames) == ANSWER
    models = [call.request.model.rsplit("/", 1)[1] for call in emulator.calls]
    assert models == ["gemini-2.5-flash"] * 3 + ["gemini-backup"]


async def test_outage_retries_stay_within_the_budget(emulator: Emulator) -> None:
    """10 s of full outage at 20 requests/s: retries add at most 20% plus 0.5/s.

    The window is longer than the run, so the bound holds for the run as a whole."""
    emulator.reset(Behaviour(fail_first=10**9))
    settings = settings_for(
        emulator,
        backends={"gemini": gemini(emulator, retry=FAST_RETRY | {"attempts": 3})},
        retry_budget={"ratio": 0.2, "min_per_s": 0.5, "window_s": 30},
    )
    statuses: list[int] = []
    async with gateway(settings) as url, httpx.AsyncClient(timeout=10) as client:

        async def ask() -> None:
            statuses.append((await client.post(f"{url}/qa", json=QUERY)).status_code)

        tasks = []
        for _ in range(200):
            tasks.append(asyncio.create_task(ask()))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)

    assert statuses == [503] * 200
    retries = len(emulator.calls) - 200
    assert retries <= 0.5 * 30 + 0.2 * 200  # without a budget: 400
    assert retries > 0


async def test_two_hundred_disconnects_leave_nothing_behind(
    emulator: Emulator, transport: str
) -> None:
    # Long answers (~50 s each), of few chunks: the emulator builds each whole as it is asked.
    emulator.reset(Behaviour(chunks=100, delay_ms=500))
    app = create_app(settings_for(emulator, transport))
    async with serve(app) as url:
        baseline = len(asyncio.all_tasks())
        limits = httpx.Limits(max_connections=250)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def read_one_delta_then_leave() -> None:
                async with client.stream("POST", f"{url}/qa", json=QUERY) as response:
                    async for chunk in response.aiter_bytes():
                        if b"event: delta" in chunk:
                            return

            await asyncio.gather(*(read_one_delta_then_leave() for _ in range(200)))

        # Bounds for "eventually" on a busy machine, not timings.
        assert await wait_for(lambda: sum(c.cancelled for c in emulator.calls) == 200, 30)
        assert not any(call.completed for call in emulator.calls)
        assert await wait_for(lambda: len(asyncio.all_tasks()) <= baseline, 30)
        assert app.state.guards.active == set()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/qa", QUERY),
        (
            "/v1/chat/completions",
            {"model": "gemini", "messages": [{"role": "user", "content": "hi"}]},
        ),
    ],
    ids=["qa", "chat-completions"],
)
async def test_leaving_before_the_first_event_cancels_the_upstream_call(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator, path: str, body: Any
) -> None:
    """The wait for the first event (often the longest part of an answer) is cancelled with
    the client: the emulator would only send its first chunk after 5 s."""
    emulator.reset(Behaviour(first_delay_ms=5000))
    with pytest.raises(httpx.ReadTimeout):
        await client.post(f"{gemini_url}{path}", json=body, timeout=0.3)
    assert await wait_for(lambda: emulator.calls and emulator.calls[0].cancelled, timeout=2.0)
    assert emulator.calls[0].chunks_sent == 0


async def test_leaving_a_non_streamed_completion_cancels_the_upstream_call(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(chunks=100, delay_ms=50))
    body = {"model": "gemini", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(httpx.ReadTimeout):
        await client.post(f"{gemini_url}/v1/chat/completions", json=body, timeout=0.5)
    assert await wait_for(lambda: emulator.calls[0].cancelled, timeout=2.0)
    assert not emulator.calls[0].completed
