"""``GET /backends``: what a client may know about the configured backends, and no more."""

from __future__ import annotations

import httpx

from backends.emulator import Emulator
from tests.support import both, gateway


async def test_lists_name_type_model_and_nothing_else(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    async with gateway(both(emulator, default="search", project="secret-project")) as url:
        response = await client.get(f"{url}/backends")

    assert response.status_code == 200
    assert response.json() == {
        "default": "search",
        "backends": [
            {"name": "gemini", "type": "gemini", "model": "gemini-2.5-flash", "emulated": False},
            {
                "name": "search",
                "type": "agent_builder",
                "model": "docs/default_serving_config",
                "emulated": False,
            },
        ],
    }
    assert emulator.rest_address.encode() not in response.content
    assert b"secret-project" not in response.content
