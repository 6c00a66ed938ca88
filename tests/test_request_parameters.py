"""Request parameters that reach the model: /qa ``generation`` and ``system``, and the OpenAI
fields mapped onto them, against the emulator (on both Gemini transports where Gemini)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from google.protobuf import json_format
from langchain_openai import ChatOpenAI

from backends.emulator import Emulator
from backends.emulator.gemini import answer_chunks
from tests.support import both, gateway, parse_sse, settings_for, text_of

QUERY = "Which parameters reach the model?"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
EVERY_FIELD: dict[str, Any] = {
    "temperature": 0.3,
    "top_p": 0.8,
    "top_k": 7,
    "max_output_tokens": 4,
    "stop_sequences": ["THE END"],
    "seed": 42,
    "presence_penalty": 0.5,
    "frequency_penalty": -0.5,
    "response_mime_type": "application/json",
    "response_schema": SCHEMA,
}


def gemini_settings(emulator: Emulator, transport: str, **entry: Any) -> Any:
    settings = settings_for(emulator, transport)
    base = settings.backends["gemini"].model_dump(exclude_defaults=True)
    return settings_for(emulator, transport, backends={"gemini": base | entry})


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def test_every_generation_field_reaches_google(
    http: httpx.AsyncClient, emulator: Emulator, transport: str
) -> None:
    settings = gemini_settings(emulator, transport, generation={"temperature": 1.0, "top_k": 3})
    async with gateway(settings) as url:
        response = await http.post(f"{url}/qa", json={"query": QUERY, "generation": EVERY_FIELD})

    assert response.status_code == 200
    [call] = emulator.calls
    sent = json_format.MessageToDict(type(call.request).pb(call.request))["generationConfig"]
    assert sent == {
        "temperature": 0.3,  # the request's value over the configured 1.0
        "topP": 0.8,
        "topK": 7.0,
        "maxOutputTokens": 4,
        "stopSequences": ["THE END"],
        "seed": 42,
        "presencePenalty": 0.5,
        "frequencyPenalty": -0.5,
        "responseMimeType": "application/json",
        "responseJsonSchema": SCHEMA,
    }
    frames = parse_sse(response.content)
    assert text_of(frames) == "".join(answer_chunks(QUERY, 8)[:4])
    assert frames[-1][2]["finish_reason"] == "max_tokens"


async def test_a_request_leaves_the_configured_settings_it_does_not_set(
    http: httpx.AsyncClient, emulator: Emulator, transport: str
) -> None:
    settings = gemini_settings(
        emulator, transport, generation={"temperature": 1.0, "stop_sequences": ["X"]}
    )
    async with gateway(settings) as url:
        await http.post(f"{url}/qa", json={"query": QUERY, "generation": {"top_k": 5}})
    sent = emulator.calls[0].request.generation_config
    assert (sent.temperature, sent.top_k, list(sent.stop_sequences)) == (1.0, 5, ["X"])


async def test_over_the_ceiling_is_400_naming_it(
    http: httpx.AsyncClient, emulator: Emulator, transport: str
) -> None:
    settings = gemini_settings(emulator, transport, requests={"max_output_tokens": 100})
    async with gateway(settings) as url:
        body = {"query": QUERY, "generation": {"max_output_tokens": 500}}
        response = await http.post(f"{url}/qa", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_argument"
    assert response.json()["error"]["message"] == "generation.max_output_tokens: at most 100 here"
    assert not emulator.calls


async def test_a_field_not_allowed_is_unsupported_parameter(
    http: httpx.AsyncClient, emulator: Emulator, transport: str
) -> None:
    settings = gemini_settings(emulator, transport, requests={"allow": ["temperature"]})
    async with gateway(settings) as url:
        allowed = await http.post(
            f"{url}/qa", json={"query": QUERY, "generation": {"temperature": 0.1}}
        )
        refused = await http.post(f"{url}/qa", json={"query": QUERY, "generation": {"top_k": 2}})
    assert allowed.status_code == 200
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "unsupported_parameter"
    assert "generation.top_k" in refused.json()["error"]["message"]
    assert len(emulator.calls) == 1


async def test_agent_builder_refuses_sampling_and_takes_system_as_its_preamble(
    http: httpx.AsyncClient, emulator: Emulator
) -> None:
    async with gateway(both(emulator, answer={"preamble": "Cite everything."})) as url:
        refused = await http.post(
            f"{url}/qa",
            json={"query": QUERY, "backend": "search", "generation": {"temperature": 0.5}},
        )
        answered = await http.post(
            f"{url}/qa", json={"query": QUERY, "backend": "search", "system": "Be brief."}
        )
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "unsupported_parameter"
    assert answered.status_code == 200
    [call] = emulator.calls_to("StreamAnswerQuery")
    assert call.request.answer_generation_spec.prompt_spec.preamble == (
        "Cite everything.\n\nBe brief."
    )


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("append", ["Answer like a pirate.\n\nUse one sentence."]),
        ("replace", ["Use one sentence."]),
    ],
)
async def test_system_is_appended_to_or_replaces_the_configured_instruction(
    http: httpx.AsyncClient, emulator: Emulator, transport: str, mode: str, expected: list[str]
) -> None:
    settings = gemini_settings(
        emulator,
        transport,
        system_instruction="Answer like a pirate.",
        requests={"system": mode},
    )
    async with gateway(settings) as url:
        await http.post(f"{url}/qa", json={"query": QUERY, "system": "Use one sentence."})
    assert [p.text for p in emulator.calls[0].request.system_instruction.parts] == expected


async def test_system_can_be_denied(http: httpx.AsyncClient, emulator: Emulator) -> None:
    settings = gemini_settings(emulator, "rest", requests={"system": "deny"})
    async with gateway(settings) as url:
        response = await http.post(f"{url}/qa", json={"query": QUERY, "system": "Be rude."})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported_parameter"
    assert not emulator.calls


async def test_requests_differing_in_a_parameter_never_share_an_answer(
    http: httpx.AsyncClient, emulator: Emulator
) -> None:
    settings = gemini_settings(emulator, "rest", cache=True)
    async with gateway(settings) as url:
        answers = [
            await http.post(f"{url}/qa", json={"query": QUERY, **extra})
            for extra in (
                {"generation": {"temperature": 0.1}},
                {"generation": {"temperature": 0.2}},
                {"generation": {"temperature": 0.1}},
                {"system": "Be brief."},
                {},
            )
        ]
    assert [a.headers["x-cache"] for a in answers] == ["MISS", "MISS", "HIT", "MISS", "MISS"]
    assert len(emulator.calls) == 4


@pytest.fixture
async def openai_url(emulator: Emulator) -> AsyncIterator[str]:
    async with gateway(both(emulator)) as url:
        yield url


@pytest.fixture
async def sdk(openai_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    base = f"{openai_url}/v1"
    async with openai.AsyncOpenAI(base_url=base, api_key="unused", max_retries=0) as client:
        yield client


USER: Any = [{"role": "user", "content": QUERY}]


async def test_openai_max_tokens_and_response_format_reach_google(
    sdk: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    completion = await sdk.chat.completions.create(
        model="gemini", messages=USER, max_tokens=5, response_format={"type": "json_object"}
    )
    sent = emulator.calls[0].request.generation_config
    assert (sent.max_output_tokens, sent.response_mime_type) == (5, "application/json")
    assert completion.choices[0].finish_reason == "length"


async def test_openai_json_schema_is_the_response_schema(
    sdk: openai.AsyncOpenAI, emulator: Emulator
) -> None:
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    await sdk.chat.completions.create(
        model="gemini", messages=USER, response_format=response_format
    )
    request = emulator.calls[0].request
    sent = json_format.MessageToDict(type(request).pb(request))["generationConfig"]
    assert sent["responseJsonSchema"] == SCHEMA
    assert sent["responseMimeType"] == "application/json"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),
        ({"modalities": ["text", "audio"]}, "modalities"),
    ],
)
async def test_what_the_gateway_cannot_do_is_refused_not_ignored(
    sdk: openai.AsyncOpenAI, emulator: Emulator, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk.chat.completions.create(model="gemini", messages=USER, **fields)
    assert param in raised.value.message
    assert isinstance(raised.value.body, dict) and raised.value.body["param"] == param
    assert raised.value.code == "unsupported_parameter"
    assert not emulator.calls


async def test_an_image_part_is_refused(sdk: openai.AsyncOpenAI, emulator: Emulator) -> None:
    image: Any = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    with pytest.raises(openai.BadRequestError) as raised:
        await sdk.chat.completions.create(model="gemini", messages=image)
    assert "image_url" in raised.value.message
    assert not emulator.calls


async def test_a_safety_block_ends_with_content_filter(sdk: openai.AsyncOpenAI) -> None:
    blocked: Any = [{"role": "user", "content": "something [skip]"}]
    completion = await sdk.chat.completions.create(model="gemini", messages=blocked)
    assert completion.choices[0].message.content == ""
    assert completion.choices[0].finish_reason == "content_filter"


async def test_langchain_streams_with_max_tokens_honoured(
    openai_url: str, emulator: Emulator
) -> None:
    chat = ChatOpenAI(
        model="gemini", base_url=f"{openai_url}/v1", api_key="unused", max_tokens=3, max_retries=0
    )
    pieces = [chunk.content async for chunk in chat.astream(QUERY)]
    assert "".join(str(piece) for piece in pieces) == "".join(answer_chunks(QUERY, 8)[:3])
    assert emulator.calls[0].request.generation_config.max_output_tokens == 3
