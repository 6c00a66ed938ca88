"""End to end: the official openai SDK -> gateway ``/v1`` -> real Google clients -> emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from backends.emulator import Behaviour, Emulator
from backends.emulator.gemini import answer_chunks
from backends.emulator.search import DOCUMENTS, SENTENCES, answer_pieces
from tests.support import both, gateway

QUERY = "What does the OpenAI API stream?"
USER = [{"role": "user", "content": QUERY}]
ANSWERS = {"gemini": answer_chunks(QUERY, 8), "search": answer_pieces(QUERY, 8)}
GEMINI_USAGE = {"prompt_tokens": 6, "completion_tokens": 8, "total_tokens": 14}
"""What the emulator counts for QUERY: a token a word, a token a piece."""


@pytest.fixture(scope="module")
async def url(emulator: Emulator) -> AsyncIterator[str]:
    async with gateway(both(emulator)) as base:
        yield base


@pytest.fixture
async def client(url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def extra(model: Any, name: str) -> Any:
    """An extension field the SDK kept on ``model``."""
    return (model.model_extra or {}).get(name)


def usage_of(model: Any) -> dict[str, int] | None:
    return None if model.usage is None else model.usage.model_dump(exclude_none=True)


def session_of(emulator: Emulator) -> str:
    [call] = emulator.calls_to("StreamAnswerQuery")
    assert call.session is not None
    return call.session.rsplit("/", 1)[1]


@pytest.mark.parametrize("backend", ["gemini", "search"])
async def test_streams_an_answer_with_usage_from_each_backend(
    client: openai.AsyncOpenAI, emulator: Emulator, backend: str
) -> None:
    stream = await client.chat.completions.create(
        model=backend, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    assert {(c.object, c.model, c.id) for c in chunks} == {
        ("chat.completion.chunk", backend, chunks[0].id)
    }
    assert chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content for c in chunks[1:] if c.choices]
    assert [d for d in deltas if d] == ANSWERS[backend]
    *answer, end, usage = chunks
    assert [c.choices[0].finish_reason for c in answer] == [None] * len(answer)
    assert end.choices[0].finish_reason == "stop"
    assert usage.choices == []
    assert usage_of(usage) == (GEMINI_USAGE if backend == "gemini" else None)
    if backend == "search":
        assert extra(end, "session_id") == session_of(emulator)


async def test_citations_ride_in_an_extension_field(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="search", messages=USER, stream=True)
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    cited = [c for c in chunks if extra(c, "citations")]
    assert len(cited) == 8
    assert all(c.choices[0].delta.content is None for c in cited)
    documents = dict(SENTENCES)
    for chunk in cited:
        [citation] = extra(chunk, "citations")
        title, uri, _ = DOCUMENTS[documents[text[citation["start"] : citation["end"]]]]
        assert [(s["title"], s["uri"]) for s in citation["sources"]] == [(title, uri)]
    assert all(c.usage is None for c in chunks)  # usage was not asked for


@pytest.mark.parametrize("backend", ["gemini", "search"])
async def test_non_streaming_completion(
    client: openai.AsyncOpenAI, emulator: Emulator, backend: str
) -> None:
    completion = await client.chat.completions.create(model=backend, messages=USER)

    assert completion.object == "chat.completion"
    assert completion.model == backend
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "".join(ANSWERS[backend])
    assert choice.finish_reason == "stop"
    citations = extra(completion, "citations")
    if backend == "gemini":
        assert usage_of(completion) == GEMINI_USAGE
        assert citations == []
        assert extra(completion, "session_id") is None
    else:
        assert completion.usage is None
        assert len(citations) == 8
        assert extra(completion, "session_id") == session_of(emulator)
        assert extra(completion, "related_questions")


async def test_session_id_round_trips_through_extra_body(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    first = await client.chat.completions.create(model="search", messages=USER)
    session_id = extra(first, "session_id")
    stream = await client.chat.completions.create(
        model="search",
        messages=[*USER, {"role": "assistant", "content": "..."}, *USER],
        stream=True,
        extra_body={"session_id": session_id},
    )
    ends = [extra(chunk, "session_id") async for chunk in stream]

    one, two = emulator.calls_to("StreamAnswerQuery")
    assert one.session == two.session
    assert (one.turn, two.turn) == (1, 2)
    assert ends[-1] == session_id


async def test_the_last_user_message_is_the_query_after_the_conversation(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    messages: Any = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "An earlier question"},
        {"role": "assistant", "content": "An earlier answer"},
        {"role": "user", "content": [{"type": "text", "text": QUERY}]},
    ]
    completion = await client.chat.completions.create(
        model="gemini", messages=messages, temperature=0.1, max_tokens=3, user="u-1", top_p=0.5
    )

    [call] = emulator.calls
    assert [(c.role, [p.text for p in c.parts]) for c in call.request.contents] == [
        ("user", ["An earlier question"]),
        ("model", ["An earlier answer"]),
        ("user", [QUERY]),
    ]
    assert [p.text for p in call.request.system_instruction.parts] == ["Be terse."]
    sent = call.request.generation_config
    assert (sent.max_output_tokens, sent.top_p) == (3, pytest.approx(0.5))
    assert sent.temperature == pytest.approx(0.1)
    answer = answer_chunks(f"An earlier question An earlier answer {QUERY}", 8)[:3]
    assert completion.choices[0].message.content == "".join(answer)
    assert completion.choices[0].finish_reason == "length"


async def test_failure_midstream_raises_api_error(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(fail_after=2))
    stream = await client.chat.completions.create(model="gemini", messages=USER, stream=True)
    text = ""
    with pytest.raises(openai.APIError) as raised:
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""

    assert text == "".join(ANSWERS["gemini"][:2])
    assert raised.value.message == "emulated UNAVAILABLE"
    assert raised.value.code == "unavailable"
    assert raised.value.body == {
        "code": "unavailable",
        "message": "emulated UNAVAILABLE",
        "retryable": True,
    }


async def test_failure_midstream_bytes(url: str, emulator: Emulator) -> None:
    emulator.reset(Behaviour(fail_after=1))
    body = {"model": "gemini", "messages": USER, "stream": True}
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{url}/v1/chat/completions", json=body)

    assert response.headers["content-type"].startswith("text/event-stream")
    lines = response.content.split(b"\n\n")
    assert lines[-1] == b""
    assert all(line.startswith(b"data: {") for line in lines[:-1])
    assert orjson.loads(lines[-2][6:]) == {
        "error": {"code": "unavailable", "message": "emulated UNAVAILABLE", "retryable": True}
    }
    assert b"[DONE]" not in response.content


async def test_stream_ends_in_done(url: str) -> None:
    body = {"model": "gemini", "messages": USER, "stream": True}
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{url}/v1/chat/completions", json=body)
    assert response.content.endswith(b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')


async def test_failure_midway_without_streaming_is_an_error_status(
    client: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(fail_after=2))
    with pytest.raises(openai.InternalServerError) as raised:
        await client.chat.completions.create(model="gemini", messages=USER)
    assert raised.value.status_code == 503
    assert raised.value.code == "unavailable"


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("UNAVAILABLE", 503, openai.InternalServerError),
        ("RESOURCE_EXHAUSTED", 429, openai.RateLimitError),
        ("INVALID_ARGUMENT", 400, openai.BadRequestError),
        ("PERMISSION_DENIED", 502, openai.InternalServerError),
    ],
)
async def test_failure_before_the_first_chunk_is_the_sdk_error(
    client: openai.AsyncOpenAI,
    emulator: Emulator,
    code: str,
    status: int,
    error: type[openai.APIStatusError],
) -> None:
    emulator.reset(Behaviour(fail_first=99, fail_code=code))
    with pytest.raises(error) as raised:
        await client.chat.completions.create(model="search", messages=USER, stream=True)
    assert raised.value.status_code == status
    assert raised.value.code == code.lower()
    assert raised.value.body == {
        "code": code.lower(),
        "message": f"emulated {code}",
        "retryable": code in ("UNAVAILABLE", "RESOURCE_EXHAUSTED"),
    }


async def test_unknown_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        await client.chat.completions.create(model="gpt-4o", messages=USER)
    assert raised.value.code == "unknown_backend"
    assert raised.value.message.endswith("no backend 'gpt-4o'; configured: gemini, search")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n": 0}, "n: Input should be greater than or equal to 1"),
        ({"messages": []}, "messages: List should have at least 1 item"),
        ({"messages": [{"role": "system", "content": "hi"}]}, "messages: there is no user message"),
        ({"messages": [{"role": "user", "content": " "}]}, "messages: must not be empty or blank"),
    ],
)
async def test_requests_the_gateway_cannot_answer_are_422(
    client: openai.AsyncOpenAI, emulator: Emulator, fields: dict[str, Any], message: str
) -> None:
    body = {"model": "gemini", "messages": USER, **fields}
    with pytest.raises(openai.UnprocessableEntityError) as raised:
        await client.post("/chat/completions", cast_to=object, body=body)
    assert raised.value.code == "invalid_request"
    assert isinstance(raised.value.body, dict)
    assert str(raised.value.body["message"]).startswith(message)
    assert not emulator.calls


async def test_models_are_the_configured_backends(client: openai.AsyncOpenAI) -> None:
    models = [model async for model in client.models.list()]

    assert [(m.id, m.object, m.owned_by) for m in models] == [
        ("gemini", "model", "google"),
        ("search", "model", "google"),
    ]
    assert [(extra(m, "backend_type"), extra(m, "upstream_model")) for m in models] == [
        ("gemini", "gemini-2.5-flash"),
        ("agent_builder", "docs/default_serving_config"),
    ]


async def test_skipped_answer_is_an_empty_content_filter_with_reasons(
    client: openai.AsyncOpenAI,
) -> None:
    completion = await client.chat.completions.create(
        model="search", messages=[{"role": "user", "content": "hello [skip]"}]
    )
    assert completion.choices[0].message.content == ""
    assert completion.choices[0].finish_reason == "content_filter"
    assert extra(completion, "skip_reasons") == [
        "non_answer_seeking_query_ignored",
        "no_relevant_content",
    ]


async def test_max_tokens_is_length(emulator: Emulator) -> None:
    settings = both(emulator)
    settings.backends["gemini"].generation.max_output_tokens = 5
    async with (
        gateway(settings) as base,
        openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as sdk,
    ):
        completion = await sdk.chat.completions.create(model="gemini", messages=USER)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "".join(ANSWERS["gemini"][:5])


async def test_answers_share_the_cache_with_qa(emulator: Emulator) -> None:
    settings = both(emulator)
    settings.backends["gemini"].cache = True
    body = {"model": "gemini", "messages": USER}
    async with gateway(settings) as base, httpx.AsyncClient() as http:
        first = await http.post(f"{base}/v1/chat/completions", json=body)
        second = await http.post(f"{base}/v1/chat/completions", json=body | {"stream": True})
        qa = await http.post(f"{base}/qa", json={"query": QUERY})

    assert [r.headers["x-cache"] for r in (first, second, qa)] == ["MISS", "HIT", "HIT"]
    assert len(emulator.calls) == 1
    assert first.json()["choices"][0]["message"]["content"] == "".join(ANSWERS["gemini"])
