"""End to end: HTTP client -> gateway -> real discoveryengine_v1 client -> emulator, with the
Gemini backend beside it in the same gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends.emulator import Behaviour, Emulator
from backends.emulator.search import (
    DOCUMENTS,
    FALLBACK_TEXT,
    RELATED_QUESTIONS,
    SENTENCES,
    answer_pieces,
)
from gateway.settings import ConfigError, load_settings
from tests.support import both, gateway, parse_sse, text_of, wait_for

QUERY = "What does the gateway stream?"
ENGINE = "projects/emulated-project/locations/global/collections/default_collection/engines/docs"


@pytest.fixture(scope="module")
async def url(emulator: Emulator) -> AsyncIterator[str]:
    async with gateway(both(emulator)) as base:
        yield base


async def ask(client: httpx.AsyncClient, url: str, **body: Any) -> httpx.Response:
    return await client.post(f"{url}/qa", json={"query": QUERY, "backend": "search", **body})


@pytest.mark.parametrize("cumulative", [False, True])
async def test_answer_streams_deltas_then_citations_then_done(
    client: httpx.AsyncClient, url: str, emulator: Emulator, cumulative: bool
) -> None:
    emulator.reset(Behaviour(cumulative=cumulative))
    response = await ask(client, url)

    assert response.status_code == 200
    frames = parse_sse(response.content)
    assert [kind for _, kind, _ in frames] == ["meta"] + ["delta"] * 8 + ["citation"] * 8 + ["done"]
    assert frames[0][2]["backend"] == "search"
    assert frames[0][2]["model"] == "docs/default_serving_config"
    pieces = answer_pieces(QUERY, 8)
    assert [data["text"] for _, kind, data in frames if kind == "delta"] == pieces
    assert text_of(frames) == "".join(pieces)
    [call] = emulator.calls_to("StreamAnswerQuery")
    assert frames[-1][2] == {
        "finish_reason": "stop",
        "usage": None,
        "session_id": call.session.rsplit("/", 1)[1] if call.session else None,
        "related_questions": list(RELATED_QUESTIONS),
    }


async def test_citation_offsets_index_multibyte_text(client: httpx.AsyncClient, url: str) -> None:
    frames = parse_sse((await ask(client, url)).content)
    text = text_of(frames)
    citations = [data for _, kind, data in frames if kind == "citation"]

    assert len(text.encode()) > len(text)  # Korean and French sentences
    by_sentence = dict(SENTENCES)
    for citation in citations:
        cited = text[citation["start"] : citation["end"]]
        title, uri, snippet = DOCUMENTS[by_sentence[cited]]
        source = {"title": title, "uri": uri} | ({"snippet": snippet} if snippet else {})
        assert citation["sources"] == [source]
    assert {text[c["start"] : c["end"]] for c in citations} == set(by_sentence)
    # The emulator sent byte offsets: past the first multi-byte sentence they differ.
    assert any(len(text[: c["start"]].encode()) != c["start"] for c in citations)


async def test_session_id_continues_the_conversation(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    first = parse_sse((await ask(client, url)).content)[-1][2]
    second = parse_sse((await ask(client, url, session_id=first["session_id"])).content)[-1][2]

    one, two = emulator.calls_to("StreamAnswerQuery")
    assert one.request.session == f"{ENGINE}/sessions/-"
    assert one.session == f"{ENGINE}/sessions/{first['session_id']}"
    assert two.request.session == one.session == two.session
    assert (one.turn, two.turn) == (1, 2)
    assert emulator.sessions == {one.session: 2}
    assert second["session_id"] == first["session_id"]


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
    assert emulator.calls[0].failed == "NOT_FOUND"
    assert len(emulator.calls) == 1  # not retried


async def test_malformed_session_id_is_refused_before_calling_google(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    response = await ask(client, url, session_id="../../engines/other/sessions/1")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_argument"
    assert not emulator.calls


async def test_skipped_answer_is_done_with_reasons_and_no_text(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    response = await ask(client, url, query="hello [skip]")

    frames = parse_sse(response.content)
    assert [kind for _, kind, _ in frames] == ["meta", "done"]
    [call] = emulator.calls
    assert call.turn == 1
    assert frames[-1][2] == {
        "finish_reason": "skipped",
        "usage": None,
        "session_id": call.session.rsplit("/", 1)[1] if call.session else None,
        "skip_reasons": ["non_answer_seeking_query_ignored", "no_relevant_content"],
    }
    assert FALLBACK_TEXT.encode() not in response.content


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("UNAVAILABLE", 503),
        ("RESOURCE_EXHAUSTED", 429),
        ("DEADLINE_EXCEEDED", 504),
        ("PERMISSION_DENIED", 502),
        ("INVALID_ARGUMENT", 400),
    ],
)
async def test_failure_before_the_first_event_matches_gemini(
    client: httpx.AsyncClient, url: str, emulator: Emulator, code: str, status: int
) -> None:
    seen = []
    for backend in ("gemini", "search"):
        emulator.reset(Behaviour(fail_first=99, fail_code=code))
        response = await ask(client, url, backend=backend)
        seen.append((response.status_code, response.headers.get("retry-after"), response.json()))
    assert seen[0] == seen[1]
    assert seen[1][0] == status
    assert seen[1][2]["error"]["code"] == code.lower()


async def test_failure_midstream_matches_gemini(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    ends = []
    for backend in ("gemini", "search"):
        emulator.reset(Behaviour(fail_after=3))
        frames = parse_sse((await ask(client, url, backend=backend)).content)
        assert [kind for _, kind, _ in frames] == ["meta", "delta", "delta", "delta", "error"]
        ends.append(frames[-1][2])
    assert (
        ends[0]
        == ends[1]
        == {"code": "unavailable", "message": "emulated UNAVAILABLE", "retryable": True}
    )
    assert text_of(frames) == "".join(answer_pieces(QUERY, 8)[:3])


async def test_client_disconnect_cancels_the_search_call(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(chunks=100, delay_ms=20))
    async with client.stream(
        "POST", f"{url}/qa", json={"query": QUERY, "backend": "search"}
    ) as response:
        async for chunk in response.aiter_bytes():
            if b"event: delta" in chunk:
                break
    assert await wait_for(lambda: emulator.calls[0].cancelled, timeout=1.0)
    assert not emulator.calls[0].completed


async def test_deadline_ends_a_hung_stream_with_an_error(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(hang_after=2))
    async with gateway(both(emulator, deadline_s=0.5)) as base:
        frames = parse_sse((await ask(client, base)).content)
    assert [kind for _, kind, _ in frames] == ["meta", "delta", "delta", "error"]
    assert frames[-1][2]["code"] == "deadline_exceeded"
    assert emulator.calls[0].cancelled


async def test_both_backends_answer_through_one_gateway(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    gemini = parse_sse((await client.post(f"{url}/qa", json={"query": QUERY})).content)
    search = parse_sse((await ask(client, url)).content)

    assert [gemini[0][2]["backend"], search[0][2]["backend"]] == ["gemini", "search"]
    assert [call.method for call in emulator.calls] == [
        "StreamGenerateContent",
        "StreamAnswerQuery",
    ]
    assert "citation" not in {kind for _, kind, _ in gemini}
    assert text_of(search) == "".join(answer_pieces(QUERY, 8))


async def test_default_backend_picks_agent_builder_for_all(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    async with gateway(both(emulator, default="search")) as base:
        frames = parse_sse((await client.post(f"{base}/qa", json={"query": QUERY})).content)
    assert frames[0][2]["backend"] == "search"
    assert [call.method for call in emulator.calls] == ["StreamAnswerQuery"]


async def test_config_reaches_the_emulator(client: httpx.AsyncClient, emulator: Emulator) -> None:
    settings = both(
        emulator,
        project="p1",
        location="eu",
        collection="c1",
        engine=None,
        data_store="ds1",
        serving_config="sc1",
        related_questions=False,
        user_pseudo_id="visitor-7",
        answer={
            "model_version": "preview",
            "preamble": "Be brief.",
            "include_citations": False,
            "answer_language_code": "ko",
            "ignore_adversarial_query": True,
            "ignore_non_answer_seeking_query": True,
            "ignore_low_relevant_content": False,
        },
    )
    async with gateway(settings) as base:
        frames = parse_sse((await ask(client, base)).content)

    request = emulator.calls[0].request
    parent = "projects/p1/locations/eu/collections/c1/dataStores/ds1"
    assert request.serving_config == f"{parent}/servingConfigs/sc1"
    assert request.session == f"{parent}/sessions/-"
    assert request.query.text == QUERY
    assert request.user_pseudo_id == "visitor-7"
    assert not request.related_questions_spec.enable
    spec = request.answer_generation_spec
    assert spec.model_spec.model_version == "preview"
    assert spec.prompt_spec.preamble == "Be brief."
    assert not spec.include_citations
    assert spec.answer_language_code == "ko"
    assert spec.ignore_adversarial_query and spec.ignore_non_answer_seeking_query
    assert "ignore_low_relevant_content" in spec and not spec.ignore_low_relevant_content
    # Without citations or related questions asked for, none come back.
    assert [kind for _, kind, _ in frames] == ["meta"] + ["delta"] * 8 + ["done"]
    assert "related_questions" not in frames[-1][2]
    assert frames[0][2]["model"] == "ds1/sc1"


def test_default_config_names_every_backend_type() -> None:
    settings = load_settings()
    types = {entry.type for entry in settings.backends.values()}
    assert types == {"gemini", "agent_builder", "agent_engine"}


def test_bad_agent_builder_config_fails_the_boot(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('default_backend = "s"\n[backends.s]\ntype = "agent_builder"\n')
    with pytest.raises(ConfigError, match=r"backends\.s \(.*\): Value error, set exactly one"):
        load_settings(path)
