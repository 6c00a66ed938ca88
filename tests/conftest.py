from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from backends.emulator import Emulator
from gateway.cli import tune_collector
from tests.cluster_support import MASTERS, LocalCluster
from tests.redis_support import RedisTarget, delete_prefix, redis_named
from tests.support import gateway, settings_for

tune_collector()  # in-process gateways collect garbage as a served one does


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


@pytest.fixture(scope="session")
def local_cluster(pytestconfig: pytest.Config) -> Iterator[LocalCluster]:
    """A three-master Redis Cluster for the session, started by the first test that needs
    it; at the end (after every test on it) ``redis-cli --cluster check`` must be clean, with
    no key left behind."""
    cluster = LocalCluster().start()
    try:
        yield cluster
        report = cluster.check()
        assert f"[OK] 0 keys in {MASTERS} masters." in report, report
        capture = pytestconfig.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            clean = [line for line in report.splitlines() if line.startswith("[OK]")]
            print("\nredis-cli --cluster check:", *clean, sep="\n  ")
    finally:
        cluster.stop()


@pytest.fixture(params=["standalone", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> Iterator[RedisTarget]:
    """The shared Redis, then the session's Redis Cluster, under a prefix of the test's own
    (deleted after it), for the tests of shared answers that run on both."""
    target = redis_named(request, request.param)
    yield target
    delete_prefix(target.url, target.prefix)
