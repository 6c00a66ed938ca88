"""``python -m bench``: emulator, gateway and load generator side by side, in one run.

Starts ``bench.trivial`` to measure the load generator alone, then the emulator (20 chunks,
no delay) and the gateway as real server processes, and measures direct vs gateway (cache
miss, cache hit when available) in interleaved rounds; then throughput by concurrency,
identical concurrent requests, open slow streams, start-up and idle cost. Prints the figures
as Markdown and writes them to ``--out`` (full runs: ``bench/RESULTS.md`` by default).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import uvloop

from bench import procs, scenarios, streams
from bench.direct import RawRest, RawStub, ThroughSdk
from bench.load import Pool
from bench.report import render
from bench.summary import Results

HERE = Path(__file__).resolve().parent


def machine(root: Path, quick: bool) -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    versions = ", ".join(
        f"{name} {metadata.version(name)}"
        for name in ("grpcio", "protobuf", "uvicorn", "uvloop", "httptools", "starlette")
    )
    commit = (
        subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        or "(not a git checkout)"
    )
    return [
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- machine: {os.cpu_count()} cores ({cpu}), {int(memory) / 1024**2:.0f} GiB, "
        f"Linux {platform.release()}; all processes share it",
        f"- Python {platform.python_version()}; {versions}",
        f"- gateway code: {root}, {commit}",
        f"- command: `python -m bench {' '.join(sys.argv[1:])}`"
        + (" (quick smoke run: figures are not meaningful)" if quick else ""),
        "- direct baselines: `direct`, one aiohttp session on the emulator's REST API "
        "(`alt=sse`, orjson per chunk); `direct-grpc`, a raw `grpc.aio` channel with the "
        "protobuf classes behind the SDK's messages; `sdk`: the gateway's gRPC Gemini backend "
        "(the SDK's async client) in the bench process, no HTTP",
        "- `gateway` answers over REST (the default transport), `gateway-grpc` is the same "
        'gateway with `transport = "grpc"`, both on the same emulator',
        "- load generator: `bench.http_client`, raw asyncio HTTP/1.1 over keep-alive connections, "
        "on uvloop",
    ]


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> Results:
    sizes = scenarios.Sizes.for_run(args.quick)
    if args.rounds:
        sizes.rounds = args.rounds
    if args.streams:
        sizes.streams = args.streams
    work = Path(tempfile.mkdtemp(prefix="qa-bench-"))
    root = Path(args.gateway_root).resolve()

    log("load generator alone")
    trivial, port = procs.start_trivial(work, 20)
    pool = Pool(port)
    try:
        procs.wait_http_ready(trivial, port)
        ceiling = await scenarios.ceiling(pool, sizes, trivial.pid)
    finally:
        pool.close()
        trivial.stop()

    busy_before, mine_before = procs.machine_busy_s(), procs.cpu_s(os.getpid())
    emulator = procs.EmulatorProcess(work)
    gateway, port = procs.start_gateway(work, emulator, root)
    try:  # alone: the target is one gateway's start-up, not two sharing the machine's cores
        startup = procs.wait_http_ready(gateway, port)
    except BaseException:
        gateway.stop()
        emulator.stop()
        raise
    idle = scenarios.Idle(startup, procs.rss_kb(gateway.pid))
    gateway_grpc, port_grpc = procs.start_gateway(work, emulator, root, "grpc")
    direct, direct_grpc = RawRest(emulator.rest_address), RawStub(emulator.address)
    sdk = ThroughSdk(emulator.address)
    bench = scenarios.Bench(
        emulator,
        gateway,
        Pool(port),
        gateway_grpc,
        Pool(port_grpc),
        direct,
        direct_grpc,
        sdk,
        sizes,
    )
    try:
        procs.wait_http_ready(gateway_grpc, port_grpc)
        log(f"gateway ready in {startup:.2f} s; warming up")
        await scenarios.warm_up(bench)
        hit = await scenarios.cache_probe(bench)
        hit_query = hit[0] if hit is not None else None
        log(f"cache: {'available' if hit else 'not available'}")
        log(f"{sizes.rounds} interleaved rounds")
        rounds = await scenarios.interleaved(bench, hit)
        log("throughput by concurrency")
        sweep = await scenarios.sweep(bench, hit_query)
        log("identical concurrent requests")
        identical = await scenarios.identical(bench)
        held = []
        for round_ in range(1, sizes.stream_rounds + 1):
            log(f"{sizes.streams} open streams, round {round_}: gateway, then direct")
            held.append(await streams.open_streams(bench, via_gateway=True))
            held.append(await streams.open_streams(bench, via_gateway=False))
        await scenarios.idle_cost(bench, idle)
        pids = (gateway.pid, gateway_grpc.pid, emulator.pid, os.getpid())
        ours = sum(procs.cpu_s(pid) for pid in pids)
        others = procs.machine_busy_s() - busy_before - (ours - mine_before)
        others_cores = max(0.0, others) / (time.monotonic() - gateway.started_at)
    finally:
        bench.pool.close()
        bench.pool_grpc.close()
        await direct.close()
        await direct_grpc.close()
        await sdk.close()
        gateway.stop()
        gateway_grpc.stop()
        emulator.stop()
    notes = [
        *machine(root, args.quick),
        f"- other processes on the machine used {others_cores:.2f} cores on average during the "
        f"run (load average at the end: {os.getloadavg()[0]:.1f})",
    ]
    return Results(notes, ceiling, rounds, sweep, hit_query is not None, held, identical, idle)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke run (CI)")
    parser.add_argument("--out", help="write the Markdown here (full run: bench/RESULTS.md)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (full: 7)")
    parser.add_argument("--streams", type=int, help="open streams to hold (full: 1000)")
    parser.add_argument(
        "--gateway-root",
        default=str(HERE.parent),
        help="run the gateway from this checkout (to compare a change)",
    )
    args = parser.parse_args()
    procs.raise_fd_limit()
    results = uvloop.run(run(args))  # uvloop comes with uvicorn[standard]
    text = render(results)
    print(text)
    out = args.out or (None if args.quick else str(HERE / "RESULTS.md"))
    if out:
        Path(out).write_text(text)
        print(f"bench: wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
