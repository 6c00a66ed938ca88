"""Closed-loop load: ``concurrency`` workers, each sending its next request when the last ends.

A ``Target`` is what a round asks: the emulator directly, or the gateway over HTTP with a
fresh query each time (cache miss) or one query again and again (cache hit). ``measure``
runs one round and notes the CPU time of every watched process around it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.direct import RawRest, RawStub, ThroughSdk
from bench.http_client import Connection, Exchange, qa_request, resume_request
from bench.procs import cpu_s, machine_busy_s
from bench.stats import Round, summarise

Send = Callable[[int, int], Awaitable[Exchange]]
"""``send(request_number, worker)``."""

_nonce = itertools.count()


def fresh_query(tag: str) -> str:
    """A query no earlier request asked (the emulator's answer depends on it)."""
    return f"bench {tag} {time.monotonic_ns()} {next(_nonce)}"


@dataclass
class Target:
    name: str
    send: Send
    overhead_frames: int
    """Frames per answer that are not answer events (SSE ``meta`` and ``done``)."""
    server_pid: int | None = None
    """The gateway process serving this target: its CPU is noted as ``gateway``."""


class Pool:
    """Keep-alive connections to one HTTP server, one per worker.

    A connection idle for ``fresh_s`` is replaced before use: servers close idle ones
    (uvicorn after 5 s), and a request must not race that close.
    """

    def __init__(self, port: int, fresh_s: float = 3.0) -> None:
        self.port = port
        self.fresh_s = fresh_s
        self.connections: list[Connection] = []
        self.used: list[float] = []

    async def grow(self, size: int) -> None:
        while len(self.connections) < size:
            self.connections.append(await Connection.open("127.0.0.1", self.port))
            self.used.append(time.monotonic())

    async def get(self, worker: int) -> Connection:
        """Worker ``worker``'s connection, reopened first if it was idle too long or closed."""
        connection, now = self.connections[worker], time.monotonic()
        if connection.transport is None or now - self.used[worker] > self.fresh_s:
            connection.close()
            connection = self.connections[worker] = await Connection.open("127.0.0.1", self.port)
        self.used[worker] = now
        return connection

    def close(self) -> None:
        for connection in self.connections:
            connection.close()
        self.connections.clear()
        self.used.clear()


def direct_target(direct: RawRest | RawStub) -> Target:
    """``direct`` (REST) or ``direct-grpc``."""

    async def send(number: int, worker: int) -> Exchange:
        return await direct.ask(fresh_query("direct"))

    return Target("direct" if isinstance(direct, RawRest) else "direct-grpc", send, 0)


def sdk_target(sdk: ThroughSdk) -> Target:
    async def send(number: int, worker: int) -> Exchange:
        return await sdk.ask(fresh_query("sdk"))

    return Target("sdk", send, 1)


def gateway_target(
    pool: Pool, *, repeat: str | None = None, name: str = "gateway", pid: int | None = None
) -> Target:
    """Fresh queries (miss), or ``repeat`` every time (hit once cached); ``pid`` serves it."""
    fixed = qa_request(repeat) if repeat is not None else None

    async def send(number: int, worker: int) -> Exchange:
        request = fixed if fixed is not None else qa_request(fresh_query("miss"))
        connection = await pool.get(worker)
        return await connection.send(request)

    return Target(name, send, 2, pid)


def resume_target(pool: Pool, stream_id: bytes, pid: int | None = None) -> Target:
    """The resume of a finished answer from after its ``meta`` (its events and ``done``)."""
    request = resume_request(stream_id, 0)

    async def send(number: int, worker: int) -> Exchange:
        connection = await pool.get(worker)
        return await connection.send(request)

    return Target("gateway-resume", send, 1, pid)


async def closed_loop(send: Send, requests: int, concurrency: int) -> tuple[list[Exchange], float]:
    """Send ``requests`` requests over ``concurrency`` workers; results and wall seconds."""
    numbers = iter(range(requests))
    results: list[Exchange] = []

    async def worker(index: int) -> None:
        for number in numbers:
            results.append(await send(number, index))

    started = time.monotonic()
    await asyncio.gather(*(worker(index) for index in range(concurrency)))
    return results, time.monotonic() - started


async def measure(target: Target, requests: int, concurrency: int, watch: dict[str, int]) -> Round:
    """One round against ``target``; ``watch`` names the pids whose CPU time is noted."""
    if target.server_pid is not None:
        watch = watch | {"gateway": target.server_pid}
    before = {name: cpu_s(pid) for name, pid in watch.items()}
    busy = machine_busy_s()
    exchanges, wall_s = await closed_loop(target.send, requests, concurrency)
    busy = machine_busy_s() - busy
    after = {name: cpu_s(pid) for name, pid in watch.items()}
    result = summarise(target.name, concurrency, exchanges, wall_s, target.overhead_frames)
    result.cpu_ms = {name: (after[name] - before[name]) * 1000 for name in watch}
    result.others_cores = max(0.0, busy - sum(result.cpu_ms.values()) / 1000) / wall_s
    return result
