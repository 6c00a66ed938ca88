from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from backends.emulator import Emulator
from tests.support import gateway, settings_for


@pytest.fixture(scope="session")
async def emulator() -> AsyncIterator[Emulator]:
    """One emulator for the whole session; every test starts it with default knobs."""
    emulator = await Emulator().start()
    yield emulator
    await emulator.stop()


@pytest.fixture(autouse=True)
def _fresh_emulator(emulator: Emulator) -> None:
    emulator.reset()


@pytest.fixture(scope="session")
async def gateway_url(emulator: Emulator) -> AsyncIterator[str]:
    """A gateway with the default test settings, shared by the tests that need no others."""
    async with gateway(settings_for(emulator)) as url:
        yield url


@pytest.fixture(scope="session", params=["rest", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each Gemini transport in turn, for the tests that run on both."""
    return str(request.param)


@pytest.fixture(scope="session")
async def gemini_url(emulator: Emulator, transport: str) -> AsyncIterator[str]:
    """A gateway with the default test settings over one Gemini transport."""
    async with gateway(settings_for(emulator, transport)) as url:
        yield url


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client
