"""Tenants never share answers: not from the cache, not by joining a flight in progress,
in process or through Redis. The front door hands each key's limits to the limiter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from backends.emulator import Behaviour, Emulator
from gateway.http.auth import AuthSettings, FrontDoor
from gateway.http.keys import hash_key
from gateway.http.limits import LimitOverrides
from gateway.settings import Settings
from gateway.upstream.base import Principal
from tests.redis_support import SHARED_URL, delete_prefix, new_prefix
from tests.support import gateway, parse_sse, settings_for, text_of

QUERY = "What is our refund policy?"
KEYS = {"acme": "qa_acme-key", "globex": "qa_globex-key", "acme-2": "qa_acme-second-key"}


def tenants(emulator: Emulator, **extra: Any) -> Settings:
    """A cached backend; keys of tenants acme (two keys) and globex."""
    keys = [
        {"name": name, "hash": hash_key(key), "tenant": name.split("-")[0]}
        for name, key in KEYS.items()
    ]
    settings = settings_for(emulator, auth={"keys": keys}, **extra)
    settings.backends["gemini"].cache = True
    return settings


@pytest.fixture(params=["memory", "redis"])
def settings(request: pytest.FixtureRequest, emulator: Emulator) -> Iterator[Settings]:
    if request.param == "memory":
        yield tenants(emulator)
        return
    prefix = new_prefix()
    yield tenants(emulator, redis_url=SHARED_URL, cache={"prefix": prefix})
    delete_prefix(SHARED_URL, prefix)


async def ask(client: httpx.AsyncClient, url: str, who: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEYS[who]}"}
    return await client.post(f"{url}/qa", json={"query": QUERY}, headers=headers)


async def test_tenants_do_not_replay_each_other_s_answers(
    client: httpx.AsyncClient, emulator: Emulator, settings: Settings
) -> None:
    async with gateway(settings) as url:
        first = await ask(client, url, "acme")
        other = await ask(client, url, "globex")
        same_tenant = await ask(client, url, "acme-2")
    assert [r.headers["x-cache"] for r in (first, other, same_tenant)] == ["MISS", "MISS", "HIT"]
    assert len(emulator.calls) == 2
    texts = {text_of(parse_sse(r.content)) for r in (first, other, same_tenant)}
    assert len(texts) == 1  # the same answer, asked for twice upstream


async def test_tenants_do_not_join_each_other_s_flights(
    client: httpx.AsyncClient, emulator: Emulator, settings: Settings
) -> None:
    emulator.reset(Behaviour(chunks=8, first_delay_ms=100, delay_ms=10))
    async with gateway(settings) as url:
        asked = await asyncio.gather(*(ask(client, url, who) for who in ("acme", "globex")))
    assert [r.status_code for r in asked] == [200, 200]
    assert len(emulator.calls) == 2


async def test_the_front_door_puts_the_principal_and_its_limits_in_the_scope() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(scope["state"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    keys = [{"name": "web", "hash": hash_key("k"), "tenant": "acme", "rpm": 6, "concurrent": 2}]
    door = FrontDoor(app, AuthSettings.model_validate({"keys": keys}))
    transport = httpx.ASGITransport(app=door)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.get("/qa/streams/1", headers={"X-API-Key": "k"})
    assert response.status_code == 204
    assert seen["principal"] == Principal("web", "acme")
    assert seen["limits"] == LimitOverrides(rpm=6, concurrent=2)
    assert type(seen["limits"]) is LimitOverrides  # the limits alone, not the key's hash
