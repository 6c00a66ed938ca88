"""Redis Cluster trouble never fails a request: a cluster of our own loses a master (its slots
gone, then the whole cluster down) and gets it back; the breaker's reading of errors."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import redis
from redis.cluster import key_slot
from redis.exceptions import ResponseError

from backends.emulator import Emulator
from gateway.upstream.redis_journal import BadValue
from gateway.upstream.stores import Breaker
from tests.cluster_support import LocalCluster
from tests.redis_support import RedisTarget
from tests.support import gateway, parse_sse
from tests.test_cache import cached, redis_errors

ANONYMOUS = "default/anonymous"
"""The principal (and the hash tag of the limit counts) of a request without credentials."""


def owner_of(cluster: LocalCluster, slot: int) -> int:
    """The port of the master holding ``slot``."""
    with redis.Redis(port=cluster.ports[0]) as client:
        for first, last, master, *_ in client.execute_command("CLUSTER SLOTS"):
            if first <= slot <= last:
                return int(master[1])
    raise AssertionError(f"slot {slot} is not covered")


async def answered(client: httpx.AsyncClient, url: str, query: str) -> httpx.Response:
    response = await client.post(f"{url}/qa", json={"query": query})
    assert response.status_code == 200, response.text
    assert parse_sse(response.content)[-1][1] == "done"
    return response


async def test_a_cluster_that_loses_a_master_never_fails_a_request(
    client: httpx.AsyncClient, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """One master of three is killed and the cluster is down (connections refused on its
    slots, ``CLUSTERDOWN`` from the others): every request is answered, caching and the limit
    checks pause; the master comes back and caching resumes."""
    cluster = LocalCluster(node_timeout_ms=500).start()  # its own: this one loses a node
    try:
        fast = {"command_timeout_s": 0.2, "connect_timeout_s": 0.2, "breaker_s": 2.0}
        target = RedisTarget(cluster.url, cluster=True)
        settings = cached(emulator, target, cache=fast, limits={"rpm": 10_000})
        async with gateway(settings) as url:
            for query in ("warm", "warm"):
                await answered(client, url, query)
            assert await redis_errors(client, url) == 0
            # Neither the master of the limit counts (they meet CLUSTERDOWN) nor slot 0's (a
            # cluster client without its first node cannot reload the map at all).
            kept = {owner_of(cluster, key_slot(ANONYMOUS.encode())), owner_of(cluster, 0)}
            lost = next(port for port in cluster.ports if port not in kept)
            cluster.kill(lost)
            cluster.wait_for("fail")
            for i in range(4):  # on the lost master's slots: refused; on the others: CLUSTERDOWN
                await answered(client, url, f"the cluster down {i}")
            assert await redis_errors(client, url) >= 1
            cluster.restart(lost)
            results = []
            for _ in range(20):  # caching resumes, once the breaker's pause is over
                await asyncio.sleep(0.2)
                results.append((await answered(client, url, "after")).headers["x-cache"])
                if results[-1] == "HIT":
                    break
            assert results[-1] == "HIT", results
    finally:
        cluster.stop()
    assert "limit checks (requests served unchecked) paused" in caplog.text
    assert "refused a limits call" not in caplog.text  # CLUSTERDOWN is no principal's problem
    assert "unexpected error" not in caplog.text


async def test_the_breaker_reads_any_failure_of_a_redis_call_as_trouble() -> None:
    """Redis's errors, and anything else a client raises (redis-py's cluster client has
    raised ``AttributeError`` under load), open the breaker and read as the default; one
    key's problem goes to the caller, who deals with that key."""
    failures: list[int] = []
    breaker = Breaker(60, on_failure=lambda: failures.append(1))

    async def raising(error: Exception) -> None:
        raise error

    for problem in (BadValue("k"), ResponseError("WRONGTYPE Operation against a key")):
        with pytest.raises(type(problem)):
            await breaker.call(lambda problem=problem: raising(problem), "default")
    assert breaker.allows() and not failures
    errors = [AttributeError("'NoneType' object has no attribute 'writelines'")]
    errors += [ResponseError("CLUSTERDOWN The cluster is down"), redis.RedisClusterException()]
    for error in errors:
        fresh = Breaker(60, on_failure=lambda: failures.append(1))
        assert await fresh.call(lambda error=error: raising(error), "default") == "default"
        assert not fresh.allows()
    assert len(failures) == len(errors)
