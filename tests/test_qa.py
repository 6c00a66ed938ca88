"""End to end: HTTP client -> gateway (uvicorn) -> real aiplatform_v1 client -> emulator."""

from __future__ import annotations

import httpx
import orjson
import pytest

from backends.emulator import Behaviour, Emulator
from backends.emulator.gemini import answer_chunks
from tests.support import gateway, parse_sse, settings_for, text_of, wait_for

QUERY = {"query": "What is Vertex AI?"}


async def test_sse_stream_is_meta_deltas_done(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator
) -> None:
    response = await client.post(f"{gemini_url}/qa", json=QUERY)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    frames = parse_sse(response.content)
    assert [seq for seq, _, _ in frames] == list(range(len(frames)))
    kinds = [kind for _, kind, _ in frames]
    assert kinds == ["meta"] + ["delta"] * 8 + ["done"]
    meta = frames[0][2]
    assert meta["backend"] == "gemini"
    assert meta["model"] == "gemini-2.5-flash"
    assert meta["emulated"] is False
    assert meta["request_id"] == response.headers["x-request-id"]
    assert [data["text"] for _, kind, data in frames if kind == "delta"] == answer_chunks(
        QUERY["query"], 8
    )
    assert frames[-1][2] == {
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12},
    }
    assert len(emulator.calls) == 1


async def test_ndjson_bytes(client: httpx.AsyncClient, gemini_url: str) -> None:
    emulator_chunks = answer_chunks("hi", 8)
    response = await client.post(
        f"{gemini_url}/qa", json={"query": "hi"}, headers={"Accept": "application/x-ndjson"}
    )

    assert response.headers["content-type"] == "application/x-ndjson"
    lines = response.content.split(b"\n")
    assert lines[-1] == b""
    objects = [orjson.loads(line) for line in lines[:-1]]
    assert [o["type"] for o in objects] == ["meta"] + ["delta"] * 8 + ["done"]
    assert lines[1] == b'{"type":"delta","text":"%s"}' % emulator_chunks[0].encode()


async def test_text_bytes_are_the_answer(client: httpx.AsyncClient, gemini_url: str) -> None:
    response = await client.post(f"{gemini_url}/qa?format=text", json={"query": "hi"})

    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "".join(answer_chunks("hi", 8)) + "\n"


async def test_format_parameter_beats_accept(client: httpx.AsyncClient, gemini_url: str) -> None:
    response = await client.post(
        f"{gemini_url}/qa?format=ndjson", json={"query": "hi"}, headers={"Accept": "text/plain"}
    )
    assert response.headers["content-type"] == "application/x-ndjson"


async def test_stream_arrives_incrementally(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(chunks=50, delay_ms=20))
    async with client.stream("POST", f"{gemini_url}/qa", json=QUERY) as response:
        seen = b""
        chunks = response.aiter_bytes()
        async for chunk in chunks:
            seen += chunk
            if b"event: delta" in seen:
                break
        # The first delta is here while the upstream is still generating.
        call = emulator.calls[0]
        assert not call.completed
        assert call.chunks_sent < 50
        async for chunk in chunks:
            seen += chunk
    frames = parse_sse(seen)
    assert len([f for f in frames if f[1] == "delta"]) == 50
    assert frames[-1][1] == "done"


async def test_thoughts_are_never_answer_text_and_sources_become_citations(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(chunks=4, thoughts=True, grounded=True))
    response = await client.post(f"{gemini_url}/qa", json={"query": "Where from?"})
    frames = parse_sse(response.content)
    pieces = answer_chunks("Where from?", 4)
    answer = "".join(pieces)
    source = {"title": "Emulated source", "uri": "https://source.example/answer"}
    assert [(kind, data) for _, kind, data in frames[1:-1]] == [
        ("delta", {"text": pieces[0]}),
        ("citation", {"start": 0, "end": len(pieces[0]), "sources": [source]}),
        *[("delta", {"text": piece}) for piece in pieces[1:]],
        ("citation", {"start": 0, "end": len(answer), "sources": [source]}),
    ]
    assert frames[-1][1:] == (
        "done",
        {
            "finish_reason": "stop",
            "usage": {
                "prompt_tokens": 2,
                "completion_tokens": 4,
                "total_tokens": 6,
                "reasoning_tokens": 4,  # what the thoughts cost, as Google counts them
            },
        },
    )


async def test_a_blocked_prompt_is_a_skipped_answer(
    client: httpx.AsyncClient, gemini_url: str
) -> None:
    response = await client.post(f"{gemini_url}/qa", json={"query": "Tell me [skip] this"})
    assert response.status_code == 200
    assert [(kind, data) for _, kind, data in parse_sse(response.content)[1:]] == [
        ("done", {"finish_reason": "skipped", "usage": None, "skip_reasons": ["safety"]})
    ]


async def test_the_conversation_so_far_goes_to_gemini_with_the_question(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator
) -> None:
    history = [
        {"role": "user", "text": "Which clouds stream?"},
        {"role": "model", "text": "Vertex streams."},
    ]
    body = {"query": "How fast?", "history": history}
    response = await client.post(f"{gemini_url}/qa", json=body)
    [call] = emulator.calls
    assert [(c.role, [p.text for p in c.parts]) for c in call.request.contents] == [
        ("user", ["Which clouds stream?"]),
        ("model", ["Vertex streams."]),
        ("user", ["How fast?"]),
    ]
    answer = answer_chunks("Which clouds stream? Vertex streams. How fast?", 8)
    assert text_of(parse_sse(response.content)) == "".join(answer)


async def test_unavailable_before_first_event_is_503(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(fail_first=99, fail_code="UNAVAILABLE"))
    response = await client.post(f"{gemini_url}/qa", json=QUERY)

    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["code"] == "unavailable"
    assert error["retryable"] is True


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("RESOURCE_EXHAUSTED", 429),
        ("DEADLINE_EXCEEDED", 504),
        ("PERMISSION_DENIED", 502),
        ("INVALID_ARGUMENT", 400),
    ],
)
async def test_upstream_codes_map_to_statuses(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator, code: str, status: int
) -> None:
    emulator.reset(Behaviour(fail_first=99, fail_code=code))
    response = await client.post(f"{gemini_url}/qa", json=QUERY)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code.lower()


async def test_failure_after_three_chunks_is_an_error_event(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(fail_after=3))
    response = await client.post(f"{gemini_url}/qa", json=QUERY)

    assert response.status_code == 200
    frames = parse_sse(response.content)
    assert [kind for _, kind, _ in frames] == ["meta", "delta", "delta", "delta", "error"]
    assert frames[-1][2] == {
        "code": "unavailable",
        "message": "emulated UNAVAILABLE",
        "retryable": True,
    }
    assert text_of(frames) == "".join(answer_chunks(QUERY["query"], 8)[:3])


async def test_text_format_reports_a_midstream_failure(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(fail_after=2))
    response = await client.post(f"{gemini_url}/qa?format=text", json={"query": "hi"})
    expected = "".join(answer_chunks("hi", 8)[:2])
    assert response.text == expected + "\n[error] unavailable: emulated UNAVAILABLE\n"


async def test_client_disconnect_cancels_upstream(
    client: httpx.AsyncClient, gemini_url: str, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(chunks=100, delay_ms=20))
    async with client.stream("POST", f"{gemini_url}/qa", json=QUERY) as response:
        async for chunk in response.aiter_bytes():
            if b"event: delta" in chunk:
                break
    assert await wait_for(lambda: emulator.calls[0].cancelled, timeout=1.0)
    assert not emulator.calls[0].completed


async def test_config_reaches_the_emulator(
    client: httpx.AsyncClient, emulator: Emulator, transport: str
) -> None:
    settings = settings_for(
        emulator,
        backends={
            "gemini": {
                "type": "gemini",
                "transport": transport,
                "endpoint": emulator.address_for(transport),
                "insecure": True,
                "project": "p1",
                "location": "europe-west4",
                "model": "gemini-2.5-pro",
                "system_instruction": "Answer like a pirate.",
                "generation": {
                    "max_output_tokens": 5,
                    "temperature": 0.4,
                    "top_p": 0.9,
                    "top_k": 20,
                    "stop_sequences": ["END"],
                },
                "safety": {"HARM_CATEGORY_HARASSMENT": "BLOCK_LOW_AND_ABOVE"},
            }
        },
    )
    async with gateway(settings) as url:
        first = await client.post(f"{url}/qa", json=QUERY)
        await client.post(f"{url}/qa", json={"query": "second"})

    request = emulator.calls[0].request
    assert request.model == (
        "projects/p1/locations/europe-west4/publishers/google/models/gemini-2.5-pro"
    )
    assert request.system_instruction.parts[0].text == "Answer like a pirate."
    config = request.generation_config
    assert config.max_output_tokens == 5
    assert config.temperature == pytest.approx(0.4)
    assert config.top_p == pytest.approx(0.9)
    assert config.top_k == 20
    assert list(config.stop_sequences) == ["END"]
    [safety] = request.safety_settings
    assert safety.category.name == "HARM_CATEGORY_HARASSMENT"
    assert safety.threshold.name == "BLOCK_LOW_AND_ABOVE"
    assert [p.text for c in request.contents for p in c.parts] == [QUERY["query"]]
    # The request template is not shared between calls.
    assert [p.text for c in emulator.calls[1].request.contents for p in c.parts] == ["second"]
    # max_output_tokens=5 cut the emulated answer: the finish reason says so.
    frames = parse_sse(first.content)
    assert len([f for f in frames if f[1] == "delta"]) == 5
    assert frames[-1][2]["finish_reason"] == "max_tokens"
