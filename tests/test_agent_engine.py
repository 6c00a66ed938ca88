"""End to end: HTTP client -> gateway -> real aiplatform_v1 clients (ReasoningEngineExecution,
Session) -> the emulated ADK agent, beside the Gemini and Agent Builder backends."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from backends.emulator import Behaviour, Emulator
from backends.emulator.agent_engine import (
    INTERMEDIATE_TEXT,
    METHOD,
    SOURCE,
    TOOL,
    TOOL_RESULT,
    answer_pieces,
)
from backends.emulator.gemini import answer_chunks
from gateway.app import create_app
from gateway.settings import DEFAULT_CONFIG, load_settings
from gateway.upstream.base import Principal
from tests.redis_support import SHARED_URL, delete_prefix, new_prefix
from tests.support import gateway, parse_sse, serve, text_of, wait_for, with_agent

QUERY = "How do agents stream?"
ENGINE = "projects/emulated-project/locations/us-central1/reasoningEngines/docs-agent"
ANSWER = "".join(answer_pieces(QUERY, 8))
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
async def url(emulator: Emulator) -> AsyncIterator[str]:
    async with gateway(with_agent(emulator, user_id="docs-user")) as base:
        yield base


async def ask(client: httpx.AsyncClient, url: str, **body: Any) -> httpx.Response:
    return await client.post(f"{url}/qa", json={"query": QUERY, "backend": "agent", **body})


def session_of(emulator: Emulator) -> str:
    [created] = emulator.calls_to("CreateSession")
    assert created.session is not None
    return created.session.rsplit("/", 1)[1]


def assert_no_tool_traffic(body: bytes) -> None:
    for secret in (TOOL, TOOL_RESULT, INTERMEDIATE_TEXT.strip(), "function_call", "adk-1"):
        assert secret.encode() not in body


async def test_sse_streams_the_answer_its_source_usage_and_session(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    response = await ask(client, url)

    assert response.status_code == 200
    frames = parse_sse(response.content)
    assert [kind for _, kind, _ in frames] == ["meta"] + ["delta"] * 8 + ["citation", "done"]
    assert frames[0][2] | {"request_id": "", "stream_id": ""} == {
        "request_id": "",
        "backend": "agent",
        "model": "docs-agent",
        "emulated": False,
        "cached": False,
        "stream_id": "",
    }
    assert response.headers["x-stream-id"] == frames[0][2]["stream_id"]
    # Every piece arrives whole and in order, though the emulator cut each line across chunks.
    assert [data["text"] for _, kind, data in frames if kind == "delta"] == answer_pieces(QUERY, 8)
    citation = frames[-2][2]
    assert ANSWER[citation["start"] : citation["end"]] == answer_pieces(QUERY, 8)[-1]
    assert citation["sources"] == [SOURCE]
    assert frames[-1][2] == {
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 19, "completion_tokens": 11, "total_tokens": 30},
        "session_id": session_of(emulator),
    }
    assert_no_tool_traffic(response.content)


@pytest.mark.parametrize("format", ["ndjson", "text"])
async def test_ndjson_and_text_stream_the_same_answer(
    client: httpx.AsyncClient, url: str, format: str
) -> None:
    response = await client.post(
        f"{url}/qa?format={format}", json={"query": QUERY, "backend": "agent"}
    )

    assert response.status_code == 200
    if format == "text":
        assert response.text == ANSWER + "\n"
    else:
        lines = [orjson.loads(line) for line in response.content.splitlines()]
        assert "".join(line["text"] for line in lines if line["type"] == "delta") == ANSWER
        assert lines[-1]["type"] == "done"
    assert_no_tool_traffic(response.content)


async def test_chat_completions_stream_the_answer(client: httpx.AsyncClient, url: str) -> None:
    body = {"model": "agent", "messages": [{"role": "user", "content": QUERY}], "stream": True}
    response = await client.post(f"{url}/v1/chat/completions", json=body)

    assert response.status_code == 200
    chunks = [
        orjson.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: {")
    ]
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == ANSWER
    assert_no_tool_traffic(response.content)


async def test_intermediate_steps_stream_when_asked(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    async with gateway(with_agent(emulator, include_intermediate=True)) as base:
        frames = parse_sse((await ask(client, base)).content)
    assert text_of(frames) == INTERMEDIATE_TEXT + ANSWER
    citation = frames[-2][2]  # offsets still index the whole streamed text
    assert text_of(frames)[citation["start"] : citation["end"]] == answer_pieces(QUERY, 8)[-1]


async def test_first_turn_creates_a_session_the_second_continues(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    first = parse_sse((await ask(client, url)).content)[-1][2]
    [created] = emulator.calls_to("CreateSession")
    assert created.request.parent == ENGINE
    assert created.request.session.user_id == "docs-user"
    assert first["session_id"] == session_of(emulator)

    second = parse_sse((await ask(client, url, session_id=first["session_id"])).content)
    assert second[-1][2]["session_id"] == first["session_id"]
    assert text_of(second) == "".join(answer_pieces(QUERY, 8, turn=2))  # it saw the first turn
    one, two = emulator.calls_to(METHOD)
    assert one.session == two.session == created.session
    assert dict(two.request.input) == {
        "message": QUERY,
        "user_id": "docs-user",
        "session_id": first["session_id"],
    }
    assert (one.turn, two.turn) == (1, 2)
    assert emulator.calls_to("GetSession")[0].request.name == created.session
    assert len(emulator.calls_to("CreateSession")) == 1


async def test_unknown_session_is_a_404_that_says_to_start_over(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    response = await ask(client, url, session_id="404")

    assert response.status_code == 404
    assert response.json()["error"] == {
        "code": "session_not_found",
        "message": "no session '404' (expired or never started): ask without session_id to "
        "start a new conversation",
        "retryable": False,
    }
    assert emulator.calls_to(METHOD) == []  # refused before the agent ran


async def test_stateless_backend_creates_no_session(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    async with gateway(with_agent(emulator, stateless=True)) as base:
        done = parse_sse((await ask(client, base)).content)[-1][2]
    assert "session_id" not in done
    assert emulator.calls_to("CreateSession") == []
    assert dict(emulator.calls_to(METHOD)[0].request.input) == {
        "message": QUERY,
        "user_id": "qa-gateway",
    }


def as_principal(app: Any, name: str) -> Any:
    """``app`` behind a front door that says ``name`` asks every request."""

    async def front_door(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["principal"] = Principal(name, "default")
        await app(scope, receive, send)

    return front_door


async def test_the_principal_owns_its_sessions(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    settings = with_agent(emulator)
    async with serve(as_principal(create_app(settings), "alice")) as alice:
        first = parse_sse((await ask(client, alice)).content)[-1][2]
        async with serve(as_principal(create_app(settings), "bob")) as bob:
            taken = await ask(client, bob, session_id=first["session_id"])
        again = await ask(client, alice, session_id=first["session_id"])

    assert emulator.calls_to("CreateSession")[0].request.session.user_id == "alice"
    assert taken.status_code == 404
    assert taken.json()["error"]["code"] == "session_not_found"
    assert again.status_code == 200
    assert [call.turn for call in emulator.calls_to(METHOD)] == [1, 2]


async def test_unavailable_before_the_stream_is_retried(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(fail_first=1))
    frames = parse_sse((await ask(client, url)).content)

    assert text_of(frames) == ANSWER
    failed, answered = emulator.calls_to(METHOD)
    assert (failed.failed, answered.completed) == ("UNAVAILABLE", True)
    assert answered.session is not None
    assert frames[-1][2]["session_id"] == answered.session.rsplit("/", 1)[1]


async def test_failure_after_three_chunks_is_three_deltas_then_one_error(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(fail_after=3))
    frames = parse_sse((await ask(client, url)).content)

    assert [kind for _, kind, _ in frames] == ["meta", "delta", "delta", "delta", "error"]
    assert text_of(frames) == "".join(answer_pieces(QUERY, 8)[:3])
    assert frames[-1][2] == {
        "code": "unavailable",
        "message": "emulated UNAVAILABLE",
        "retryable": True,
    }


async def test_client_disconnect_cancels_the_agent_call(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(chunks=50, delay_ms=20))
    async with client.stream("POST", f"{url}/qa", json={"query": QUERY, "backend": "agent"}) as r:
        async for chunk in r.aiter_bytes():
            if b"event: delta" in chunk:
                break
    [call] = emulator.calls_to(METHOD)
    assert await wait_for(lambda: call.cancelled, timeout=1.0)
    assert not call.completed


async def test_cache_and_coalescing_never_share_a_session(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    """Two identical first turns at once share one run; only the asker whose call it was gets
    its session. A replay carries none; a turn with a session is never cached."""
    emulator.reset(Behaviour(first_delay_ms=300))
    async with gateway(with_agent(emulator, cache=True)) as base:
        both = await asyncio.gather(ask(client, base), ask(client, base))
        replayed = await ask(client, base)
        session = session_of(emulator)
        follow_up = await ask(client, base, session_id=session)

    assert [len(emulator.calls_to(method)) for method in (METHOD, "CreateSession")] == [2, 1]
    ends = [parse_sse(response.content)[-1][2] for response in both]
    assert sorted(end.get("session_id", "") for end in ends) == ["", session]
    assert [text_of(parse_sse(response.content)) for response in both] == [ANSWER] * 2
    assert replayed.headers["x-cache"] == "HIT"
    assert text_of(parse_sse(replayed.content)) == ANSWER
    assert "session_id" not in parse_sse(replayed.content)[-1][2]
    assert follow_up.headers["x-cache"] == "BYPASS"
    assert emulator.calls_to(METHOD)[1].turn == 2


async def test_falls_back_to_gemini_when_the_agent_is_down(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(fail_first=1))
    settings = with_agent(emulator, fallback=["gemini"], retry={"attempts": 1})
    async with gateway(settings) as base:
        frames = parse_sse((await ask(client, base)).content)

    assert frames[0][2]["backend"] == "gemini"
    assert text_of(frames) == "".join(answer_chunks(QUERY, 8))
    assert [call.method for call in emulator.calls if call.method != "CreateSession"] == [
        METHOD,
        "StreamGenerateContent",
    ]


async def test_cli_asks_the_agent_and_prints_its_source_and_session(
    url: str, emulator: Emulator
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "ask",
        QUERY,
        "--backend",
        "agent",
        "--url",
        url,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()

    assert (process.returncode, err) == (0, b"")
    assert out.decode() == (
        f"{ANSWER}\n\nSources:\n  [1] {SOURCE['title']} <{SOURCE['uri']}>\n"
        f"\nSession: {session_of(emulator)} (continue with --session)\n"
    )


async def test_the_embedded_default_serves_an_agent(client: httpx.AsyncClient) -> None:
    settings = load_settings(DEFAULT_CONFIG, emulator={"enabled": True, "first_delay_ms": 0})
    async with gateway(settings) as base:
        listed = (await client.get(f"{base}/backends")).json()["backends"]
        frames = parse_sse((await ask(client, base)).content)

    assert {"name": "agent", "type": "agent_engine", "model": "demo-agent", "emulated": True} in (
        listed
    )
    assert frames[0][2]["emulated"] is True
    assert frames[-1][1] == "done"
    assert frames[-1][2]["session_id"]


async def test_instances_sharing_a_flight_hand_its_session_to_one_asker(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    prefix = new_prefix()
    emulator.reset(Behaviour(first_delay_ms=300))
    settings = with_agent(emulator, cache=True).model_copy(update={"redis_url": SHARED_URL})
    settings.cache.prefix = prefix
    try:
        async with gateway(settings) as one, gateway(settings) as two:
            first = asyncio.create_task(ask(client, one))
            assert await wait_for(lambda: emulator.calls_to(METHOD), timeout=5)
            responses = [await ask(client, two), await first]
    finally:
        delete_prefix(SHARED_URL, prefix)

    assert len(emulator.calls_to(METHOD)) == 1
    assert [text_of(parse_sse(response.content)) for response in responses] == [ANSWER] * 2
    ends = [parse_sse(response.content)[-1][2] for response in responses]
    assert [end.get("session_id") for end in ends] == [None, session_of(emulator)]
