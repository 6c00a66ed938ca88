"""What a bench run measures, scenario by scenario, against processes it is handed.

Every scenario returns plain data (``Round``s, numbers); ``bench.report`` turns it into text.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from bench.direct import RawRest, RawStub, ThroughSdk
from bench.http_client import Connection, qa_request
from bench.load import (
    Pool,
    Target,
    direct_target,
    fresh_query,
    gateway_target,
    measure,
    resume_target,
    sdk_target,
)
from bench.procs import Child, EmulatorProcess, cpu_s, maps_mention, rss_kb
from bench.stats import Round

FAST = {"chunks": 20}
"""The emulator for latency and throughput: 20 chunks, no delay."""


@dataclass
class Sizes:
    """How much a run does: ``quick`` is a seconds-long smoke run."""

    rounds: int
    c1_requests: int
    c32_requests: int
    sweep: tuple[int, ...]
    sweep_requests: int
    identical: int
    streams: int
    stream_events: int
    ramp_s: float
    stream_rounds: int
    """Open-stream runs, each through the gateway then direct: the delay is noisy."""

    @classmethod
    def for_run(cls, quick: bool) -> Sizes:
        if quick:
            return cls(2, 20, 64, (1, 8), 64, 20, 20, 4, 0.5, 1)
        return cls(7, 300, 1200, (1, 2, 4, 8, 16, 32), 1000, 100, 1000, 20, 8.0, 3)


@dataclass
class Bench:
    """The processes under test and the clients that talk to them."""

    emulator: EmulatorProcess
    gateway: Child
    """Gemini over REST (the default transport)."""
    pool: Pool
    gateway_grpc: Child
    """The same gateway with ``transport = "grpc"``."""
    pool_grpc: Pool
    direct: RawRest
    direct_grpc: RawStub
    sdk: ThroughSdk
    sizes: Sizes
    watch: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.watch = {
            "gateway": self.gateway.pid,
            "emulator": self.emulator.pid,
            "bench": os.getpid(),
        }


async def ceiling(pool: Pool, sizes: Sizes, pid: int) -> list[Round]:
    """The load generator alone, against a server that does nothing but answer."""
    await pool.grow(32)
    watch = {"bench": os.getpid(), "server": pid}
    target = gateway_target(pool, repeat="ceiling", name="trivial")
    await measure(target, sizes.c1_requests, 1, watch)  # warm-up
    return [
        await measure(target, sizes.c1_requests * 5, 1, watch),
        await measure(target, sizes.c32_requests * 5, 32, watch),
    ]


async def cache_probe(bench: Bench) -> tuple[str, bytes] | None:
    """A query the gateway answers from its cache (``X-Cache: HIT``) and the id of that
    finished answer stream, or None if it can't."""
    query = fresh_query("hit")
    for _ in range(3):
        connection = await bench.pool.get(0)
        exchange = await connection.send(qa_request(query))
        if exchange.ok and exchange.cache == b"HIT":
            return query, exchange.stream_id
        await asyncio.sleep(0.05)  # a cache may store the answer just after the stream
    return None


def paths(bench: Bench) -> list[Target]:
    """Every path a miss can take: direct and through the gateway, over REST and gRPC."""
    grpc_pid = bench.gateway_grpc.pid
    return [
        direct_target(bench.direct),
        direct_target(bench.direct_grpc),
        sdk_target(bench.sdk),
        gateway_target(bench.pool, pid=bench.gateway.pid),
        gateway_target(bench.pool_grpc, name="gateway-grpc", pid=grpc_pid),
    ]


async def warm_up(bench: Bench) -> None:
    await bench.pool.grow(32)
    await bench.pool_grpc.grow(32)
    for target in paths(bench):
        await measure(target, 100, 1, bench.watch)
        await measure(target, 200, 32, bench.watch)


async def interleaved(bench: Bench, hit: tuple[str, bytes] | None) -> list[Round]:
    """``rounds`` times: direct (REST, gRPC), SDK alone, gateway miss (REST, gRPC), gateway
    hit, resume of the hit's finished stream, in the opposite order every other round; at
    concurrency 1, then 32."""
    targets = paths(bench)
    if hit is not None:
        pid = bench.gateway.pid
        targets.append(gateway_target(bench.pool, repeat=hit[0], name="gateway-hit", pid=pid))
        if hit[1]:
            targets.append(resume_target(bench.pool, hit[1], pid))
    sizes = bench.sizes
    rounds: list[Round] = []
    for round_ in range(sizes.rounds):
        order = targets if round_ % 2 == 0 else targets[::-1]  # no path always first
        for concurrency, requests in ((1, sizes.c1_requests), (32, sizes.c32_requests)):
            for target in order:
                rounds.append(await measure(target, requests, concurrency, bench.watch))
    return rounds


async def sweep(bench: Bench, hit_query: str | None) -> list[Round]:
    """Gateway throughput by concurrency, for the best rate whose p99 stays within 10 ms."""
    targets = [gateway_target(bench.pool)]
    if hit_query is not None:
        targets.append(gateway_target(bench.pool, repeat=hit_query, name="gateway-hit"))
    await bench.pool.grow(max(bench.sizes.sweep))
    rounds = []
    for target in targets:
        for concurrency in bench.sizes.sweep:
            requests = max(bench.sizes.sweep_requests, concurrency * 20)
            rounds.append(await measure(target, requests, concurrency, bench.watch))
    return rounds


@dataclass
class Identical:
    requests: int
    answered: int
    upstream_calls: int


async def identical(bench: Bench) -> Identical:
    """``n`` concurrent requests for one new query; how many calls reach the emulator.

    The emulator waits 200 ms before the first chunk so that every request is in flight
    while the first is still waiting: without coalescing, each one calls upstream.
    """
    count = bench.sizes.identical
    bench.emulator.ask("reset", behaviour=FAST | {"first_delay_ms": 200})
    request = qa_request(fresh_query("identical"))
    connections = [await Connection.open("127.0.0.1", bench.pool.port) for _ in range(count)]
    try:
        results = await asyncio.gather(*(c.send(request) for c in connections))
    finally:
        for connection in connections:
            connection.close()
    calls = int(bench.emulator.ask("calls")["calls"])
    bench.emulator.ask("reset", behaviour=FAST)
    return Identical(count, sum(r.ok for r in results), calls)


@dataclass
class Idle:
    startup_s: float
    rss_ready_kb: int
    rss_after_kb: int = 0
    cpu_idle_ms_per_s: float = 0.0
    modules: str = ""
    """Which fast paths the gateway process has loaded (uvloop, httptools, orjson)."""


async def idle_cost(bench: Bench, idle: Idle, seconds: float = 2.0) -> None:
    """RSS and CPU of the gateway at rest, once the load is over."""
    await asyncio.sleep(0.5)
    before = cpu_s(bench.gateway.pid)
    await asyncio.sleep(seconds)
    idle.cpu_idle_ms_per_s = (cpu_s(bench.gateway.pid) - before) * 1000 / seconds
    idle.rss_after_kb = rss_kb(bench.gateway.pid)
    idle.modules = ", ".join(
        f"{name} {'loaded' if maps_mention(bench.gateway.pid, name) else 'NOT loaded'}"
        for name in ("uvloop", "httptools", "orjson")
    )
