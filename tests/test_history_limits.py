"""A conversation too long to send is refused before the upstream is asked; the emulator's
record of its calls stays bounded however many it serves."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from backends.emulator import Emulator
from tests.support import gateway, settings_for

TURNS = 38_123
"""What fits in the 1 MiB body as the shortest turns: the history the issue saw accepted."""


def qa_body(turns: int, text: str = "x") -> bytes:
    turn = b'{"role":"user","text":"%s"}' % text.encode()
    return b'{"query":"hi","history":[%s]}' % b",".join([turn] * turns)


def chat_body(turns: int) -> bytes:
    message = b'{"role":"user","content":"x"}'
    return b'{"model":"gemini","messages":[%s]}' % b",".join([message] * turns)


@pytest.mark.parametrize(("path", "body"), [("/qa", qa_body), ("/v1/chat/completions", chat_body)])
async def test_too_many_turns_are_refused_before_any_upstream_call(
    client: httpx.AsyncClient, emulator: Emulator, path: str, body: Callable[[int], bytes]
) -> None:
    content = body(TURNS)
    settings = settings_for(emulator, max_body_bytes=2 * 1024 * 1024)  # only history refuses
    async with gateway(settings) as url:
        response = await client.post(
            f"{url}{path}", content=content, headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "history_too_long"
    assert "200 turns" in error["message"]
    assert emulator.received == 0


async def test_the_limits_are_the_configured_ones(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    settings = settings_for(emulator, max_history_turns=3, max_history_bytes=10)
    headers = {"content-type": "application/json"}
    async with gateway(settings) as url:
        too_long = await client.post(f"{url}/qa", content=qa_body(2, "x" * 6), headers=headers)
        too_many = await client.post(f"{url}/qa", content=qa_body(4), headers=headers)
        chat = await client.post(
            f"{url}/v1/chat/completions", content=chat_body(5), headers=headers
        )
        assert emulator.received == 0
        at_limit = await client.post(f"{url}/qa", content=qa_body(3, "xx"), headers=headers)
    assert too_long.status_code == too_many.status_code == chat.status_code == 413
    assert "10 bytes" in too_long.json()["error"]["message"]
    assert too_many.json()["error"]["message"] == "history: the conversation exceeds 3 turns"
    assert chat.json()["error"]["message"] == "messages: the conversation exceeds 3 turns"
    assert at_limit.status_code == 200
    assert emulator.received == 1
    assert [turn.parts[0].text for turn in emulator.calls[0].request.contents] == ["xx"] * 3 + [
        "hi"
    ]


async def test_the_emulator_keeps_only_its_latest_calls(client: httpx.AsyncClient) -> None:
    emulator = await Emulator(keep_calls=5).start()
    try:
        async with gateway(settings_for(emulator)) as url:
            for number in range(12):
                response = await client.post(f"{url}/qa", json={"query": f"question {number}"})
                assert response.status_code == 200
    finally:
        await emulator.stop()
    assert emulator.received == 12
    assert [call.request.contents[-1].parts[0].text for call in emulator.calls] == [
        f"question {number}" for number in range(7, 12)
    ]
    emulator.reset()
    assert emulator.received == 0
    assert not emulator.calls
