"""Many slow streams held open at once: errors, memory per stream, delay added per event.

The emulator sends one event a second. Streams start at random moments over ``ramp_s`` so
their events spread evenly over each second (the steady state of a busy instance, not a
thundering herd). While streams still start, their starts load the gateway too: the delay
is also reported for the events sent once every stream is open ("steady").

The emulator notes when it hands each event to gRPC; the bench notes when
the event arrives. Both use the system-wide monotonic clock, so arrival minus hand-off is the
delay of each event, through the gateway and, for comparison, straight from the emulator.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass

from bench.http_client import Connection, Exchange, qa_request
from bench.load import fresh_query
from bench.procs import cpu_s, machine_busy_s, rss_kb
from bench.scenarios import FAST, Bench
from bench.stats import percentile


@dataclass
class Streams:
    path: str
    streams: int
    completed: int
    errors: list[str]
    delay_p50_ms: float
    delay_p99_ms: float
    delay_max_ms: float
    steady_p99_ms: float
    """p99 of the events handed off while every stream was open and none was starting."""
    rss_before_kb: int = 0
    rss_open_kb: int = 0
    others_cores: float = 0.0
    """CPU the rest of the machine used meanwhile (cores)."""

    @property
    def rss_per_stream_kb(self) -> float:
        return (self.rss_open_kb - self.rss_before_kb) / max(self.streams, 1)


async def open_streams(bench: Bench, via_gateway: bool) -> Streams:
    sizes = bench.sizes
    events = sizes.stream_events
    bench.emulator.ask("reset", behaviour={"chunks": events, "delay_ms": 1000}, stamp=True)
    queries = [fresh_query("open") for _ in range(sizes.streams)]
    rng = random.Random(6)
    starts = sorted(rng.uniform(0, sizes.ramp_s) for _ in queries)
    holder = bench.gateway.pid if via_gateway else os.getpid()  # who holds the streams
    rss_before = rss_kb(holder)
    origin = time.monotonic()
    ours = (bench.gateway.pid, bench.emulator.pid, os.getpid())
    busy = machine_busy_s() - sum(cpu_s(pid) for pid in ours)

    async def one(query: str, start: float) -> Exchange | str:
        await asyncio.sleep(max(0.0, origin + start - time.monotonic()))
        try:
            if not via_gateway:
                return await bench.direct.ask(query, stamps=True)
            connection = await Connection.open("127.0.0.1", bench.pool.port)
            try:
                return await connection.send(qa_request(query), stamps=True)
            finally:
                connection.close()
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"

    tasks = [asyncio.create_task(one(q, s)) for q, s in zip(queries, starts, strict=True)]
    # All are open from the end of the ramp until the first finishes (events - 1 s later).
    steady = (origin + sizes.ramp_s + 0.5, origin + events - 1.5)
    await asyncio.sleep(sizes.ramp_s + min(2.0, (events - 1) / 2))
    rss_open = rss_kb(holder)
    results = await asyncio.gather(*tasks)
    busy = machine_busy_s() - sum(cpu_s(pid) for pid in ours) - busy
    others = max(0.0, busy) / (time.monotonic() - origin)
    stamps: dict[str, list[float]] = bench.emulator.ask("stamps")["stamps"]
    bench.emulator.ask("reset", behaviour=FAST)

    errors: list[str] = []
    delays: list[float] = []
    steady_delays: list[float] = []
    skip = 1 if via_gateway else 0  # the SSE ``meta`` frame comes before the first event
    for query, result in zip(queries, results, strict=True):
        if isinstance(result, str) or not result.ok or result.frames != events + 2 * skip:
            errors.append(result if isinstance(result, str) else _describe(result))
            continue
        arrived = result.stamps or []
        sent = stamps.get(query, [])
        for a, s in zip(arrived[skip:], sent, strict=False):
            delays.append((a - s) * 1000)
            if steady[0] <= s <= steady[1]:
                steady_delays.append((a - s) * 1000)
    return Streams(
        "gateway" if via_gateway else "direct",
        len(queries),
        len(queries) - len(errors),
        errors[:5],
        percentile(delays, 50),
        percentile(delays, 99),
        max(delays, default=float("nan")),
        percentile(steady_delays, 99),
        rss_before,
        rss_open,
        others,
    )


def _describe(exchange: Exchange) -> str:
    return f"status {exchange.status}, {exchange.frames} frames, {exchange.error or 'no error'}"
