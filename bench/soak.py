"""``python -m bench.soak``: does the gateway give back what clients leaving mid-stream took?

Runs the emulator and the gateway as real processes (``bench.procs``; the gateway under
``bench.memprobe``, which reports its RSS and glibc's malloc in-use on ``SIGUSR1``), warms
up, then measures before and after each phase:

- as many complete misses, then hits, then hits on a new connection each (closed after the
  answer), as ``--disconnects``: to tell a disconnect from a closed connection;
- ``--disconnects`` clients leaving mid-stream on fresh questions (cache misses), then as
  many on cached ones (hits): each opens a connection, reads up to the first ``delta`` and
  closes it;
- a mixed soak of ``--requests``: 40 % misses, 40 % hits, 20 % disconnects (half on misses,
  half on hits), measured every 10k;
- and once more after a few idle seconds.

Misses ask a fresh question each; the in-memory cache holds ``CACHE_ENTRIES`` answers, so
after the warm-up it is full and stays full. Prints a Markdown table; figures in KiB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import uvloop

from bench import procs
from bench.http_client import qa_request
from bench.load import Pool, fresh_query

HERE = Path(__file__).resolve().parent
CACHE_ENTRIES = 500
HOT = [f"soak hot question {n}" for n in range(20)]
MIX = "MMMMHHHHDd"
"""Per ten requests: M miss, H hit, D disconnect on a miss, d disconnect on a hit (and in
their own phase, c: a hit on a new connection)."""
EXTRA_CONFIG = f"""
[cache]
memory_max_entries = {CACHE_ENTRIES}
"""


@dataclass
class Snapshot:
    label: str
    requests: int
    rss_kb: int
    malloc_kb: int


class Probe:
    """Asks the gateway for its memory figures (``bench.memprobe``)."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out

    async def read(self, label: str, requests: int) -> Snapshot:
        seen = len(self.out.read_text().splitlines()) if self.out.exists() else 0
        os.kill(self.pid, signal.SIGUSR1)
        for _ in range(500):
            lines = self.out.read_text().splitlines() if self.out.exists() else []
            if len(lines) > seen:
                figures = json.loads(lines[-1])
                return Snapshot(label, requests, figures["rss_kb"], figures["malloc_kb"])
            await asyncio.sleep(0.01)
        raise RuntimeError("the gateway did not report its memory")


class Soak:
    def __init__(self, port: int, concurrency: int) -> None:
        self.port = port
        self.concurrency = concurrency
        self.pool = Pool(port)
        self.outcomes: Counter[str] = Counter()

    async def run(self, kinds: list[str]) -> None:
        jobs = iter(kinds)

        async def worker(index: int) -> None:
            for kind in jobs:
                self.outcomes[await self.one(kind, index)] += 1

        await self.pool.grow(self.concurrency)
        await asyncio.gather(*(worker(index) for index in range(self.concurrency)))

    async def one(self, kind: str, worker: int) -> str:
        query = fresh_query("soak") if kind in "MD" else random.choice(HOT)
        if kind in "Ddc":
            return await self.leave(query, whole=kind == "c")
        exchange = await (await self.pool.get(worker)).send(qa_request(query))
        if not exchange.ok:
            return f"error {exchange.status} {exchange.error}"
        return "hit" if exchange.cache == b"HIT" else "miss"

    async def leave(self, query: str, whole: bool = False) -> str:
        """Ask on a new connection, read up to the first ``delta`` (``whole``: to the
        terminal event), and hang up."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(qa_request(query))
        seen, until = b"", b"event: done" if whole else b"event: delta"
        try:
            while until not in seen:
                data = await reader.read(65536)
                if not data:
                    return "error: closed before a delta"
                seen += data
        finally:
            writer.close()
            await writer.wait_closed()
        return "hit, new connection" if whole else "disconnect"


def mixed(requests: int) -> list[str]:
    kinds = list(MIX * (requests // len(MIX) + 1))[:requests]
    random.shuffle(kinds)
    return kinds


async def soak(args: argparse.Namespace) -> list[Snapshot]:
    work = Path(tempfile.mkdtemp(prefix="qa-soak-"))
    emulator = procs.EmulatorProcess(work)
    emulator.ask("reset", behaviour={"chunks": 20, "delay_ms": args.delay_ms})
    out = work / "memory.jsonl"
    gateway, port = procs.start_gateway(
        work,
        emulator,
        Path(args.gateway_root),
        "grpc",  # the leak was grpc.aio's
        extra_config=EXTRA_CONFIG,
        launcher=("bench.memprobe", str(out)),
    )
    snapshots: list[Snapshot] = []
    try:
        procs.wait_http_ready(gateway, port)
        probe, runner = Probe(gateway.pid, out), Soak(port, args.concurrency)
        done = 0

        async def phase(label: str, kinds: list[str], every: int | None = None) -> None:
            nonlocal done
            if not kinds:
                return
            step = every or len(kinds)
            for start in range(0, len(kinds), step):
                part = kinds[start : start + step]
                await runner.run(part)
                done += len(part)
                snapshots.append(await probe.read(label, done))
                log(snapshots[-1])

        log(f"warming up ({args.warmup} mixed requests)")
        await phase("warm-up", mixed(args.warmup))
        await phase("misses", ["M"] * args.disconnects)
        await phase("hits", ["H"] * args.disconnects)
        await phase("hits, a new connection each", ["c"] * args.disconnects)
        await phase("disconnects on misses", ["D"] * args.disconnects)
        await phase("disconnects on hits", ["d"] * args.disconnects)
        await phase("mixed", mixed(args.requests), every=10_000)
        await asyncio.sleep(args.idle_s)
        snapshots.append(await probe.read(f"idle {args.idle_s:g} s", done))
        runner.pool.close()
        log(f"outcomes: {dict(runner.outcomes)}")
        if set(runner.outcomes) - {"hit", "miss", "disconnect", "hit, new connection"}:
            log("some requests failed; see the outcomes above")
    finally:
        gateway.stop()
        emulator.stop()
    return snapshots


def render(snapshots: list[Snapshot]) -> str:
    lines = [
        "| after | requests | RSS KiB | Δ RSS | malloc in use KiB | Δ malloc | Δ malloc/request |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    previous = snapshots[0]
    for snap in snapshots:
        count = snap.requests - previous.requests
        grown = snap.malloc_kb - previous.malloc_kb
        per = f"{grown * 1024 / count:.0f} B" if count else ""
        lines.append(
            f"| {snap.label} | {snap.requests} | {snap.rss_kb} | {snap.rss_kb - previous.rss_kb:+} "
            f"| {snap.malloc_kb} | {grown:+} | {per} |"
        )
        previous = snap
    first, last = snapshots[0], snapshots[-1]
    lines.append(
        f"\nSince the warm-up: RSS {last.rss_kb - first.rss_kb:+} KiB, malloc in use "
        f"{last.malloc_kb - first.malloc_kb:+} KiB over {last.requests - first.requests} requests."
    )
    mixed = [i for i, snap in enumerate(snapshots) if snap.label == "mixed"]
    if mixed:
        start, end = snapshots[mixed[0] - 1], snapshots[mixed[-1]]
        lines.append(
            f"The mixed soak: RSS {end.rss_kb - start.rss_kb:+} KiB, malloc in use "
            f"{end.malloc_kb - start.malloc_kb:+} KiB over {end.requests - start.requests} "
            "requests."
        )
    return "\n".join(lines)


def log(message: object) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--disconnects", type=int, default=10_000, help="per disconnect phase")
    parser.add_argument("--requests", type=int, default=50_000, help="in the mixed soak")
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=2.0, help="emulator: between chunks")
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument(
        "--gateway-root", default=str(HERE.parent), help="run the gateway from this checkout"
    )
    args = parser.parse_args()
    procs.raise_fd_limit()
    random.seed(18)
    print(render(uvloop.run(soak(args))))


if __name__ == "__main__":
    main()
