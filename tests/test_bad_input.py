"""Every bad request gets a clear JSON error with the right status, and the gateway serves on."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from backends.emulator import Emulator


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"query": ""}', 422, "invalid_request"),
        (b'{"query": "  \\n\\t "}', 422, "invalid_request"),
        (b"not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b'{"query": 42}', 422, "invalid_request"),
        (b'["query"]', 422, "invalid_request"),
        (b'{"query": "hi", "colour": "blue"}', 422, "invalid_request"),
        (b'{"question": "hi"}', 422, "invalid_request"),
        (b'{"query": "hi", "session_id": 7}', 422, "invalid_request"),
        (b'{"query": "hi", "history": [{"role": "system", "text": "x"}]}', 422, "invalid_request"),
        (b'{"query": "hi", "history": [{"role": "user", "text": ""}]}', 422, "invalid_request"),
        (b'{"query": "hi", "history": [{"role": "user"}]}', 422, "invalid_request"),
        (b'{"query": "hi", "history": {"role": "user", "text": "x"}}', 422, "invalid_request"),
        (b'{"query": "%s"}' % (b"x" * (32 * 1024 + 1)), 413, "query_too_long"),
        (b'{"query": "hi", "pad": "%s"}' % (b"x" * (1024 * 1024)), 413, "payload_too_large"),
        (b'{"query": "hi", "backend": "nope"}', 404, "unknown_backend"),
    ],
)
async def test_bad_input(
    client: httpx.AsyncClient,
    gateway_url: str,
    emulator: Emulator,
    body: bytes,
    status: int,
    code: str,
) -> None:
    response = await client.post(
        f"{gateway_url}/qa", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in response.text
    assert not emulator.calls
    # The gateway keeps serving.
    assert (await client.post(f"{gateway_url}/qa", json={"query": "hi"})).status_code == 200


async def test_unknown_backend_lists_the_configured_ones(
    client: httpx.AsyncClient, gateway_url: str
) -> None:
    response = await client.post(f"{gateway_url}/qa", json={"query": "hi", "backend": "x"})
    assert "configured: gemini" in response.json()["error"]["message"]


async def test_body_over_limit_without_content_length(
    client: httpx.AsyncClient, gateway_url: str
) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"query": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    json = {"content-type": "application/json"}
    response = await client.post(f"{gateway_url}/qa", content=chunks(), headers=json)
    assert response.status_code == 413


async def test_unknown_format(client: httpx.AsyncClient, gateway_url: str) -> None:
    response = await client.post(f"{gateway_url}/qa?format=xml", json={"query": "hi"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported_format"


async def test_unknown_route_and_method(client: httpx.AsyncClient, gateway_url: str) -> None:
    missing = await client.get(f"{gateway_url}/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await client.delete(f"{gateway_url}/qa")  # GET /qa is EventSource's (issue 13)
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


async def test_health_ready_and_docs(client: httpx.AsyncClient, gateway_url: str) -> None:
    assert (await client.get(f"{gateway_url}/healthz")).json() == {"status": "ok"}
    assert (await client.get(f"{gateway_url}/readyz")).json() == {"status": "ready"}
    assert (await client.get(f"{gateway_url}/docs")).status_code == 200
    spec = (await client.get(f"{gateway_url}/openapi.json")).json()

    def schema(path: str) -> Any:
        content = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        return resolve(spec, content["schema"])

    assert set(schema("/qa")["properties"]) == {
        "query",
        "backend",
        "session_id",
        "history",
        "generation",
        "system",
    }
    assert {"model", "messages", "stream"} <= set(schema("/v1/chat/completions")["properties"])
    unresolved = [ref for ref in refs(spec) if not resolve(spec, {"$ref": ref})]
    assert unresolved == []


def resolve(spec: Any, schema: Any) -> Any:
    """The schema a ``$ref`` names in ``spec`` (None if it names nothing)."""
    if "$ref" not in schema:
        return schema
    found = spec
    for key in schema["$ref"].removeprefix("#/").split("/"):
        found = found.get(key) if isinstance(found, dict) else None
    return found


def refs(node: Any) -> list[str]:
    """Every ``$ref`` in the document."""
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []
