"""``python -m bench.compare DIR [DIR ...]``: gateways from several checkouts, side by side.

One emulator, one gateway process per checkout (each ``DIR`` holds ``gateway/`` and
``backends/``), and interleaved rounds at concurrency 1 and 32: direct and each gateway
(cache miss), in the opposite order every other round (the first of a round was seen to run
~10 % cheaper, whichever it was). Prints, per gateway, the medians of latency added over
direct and of gateway CPU per answer. Made for trying a hot-path change on a copy:
interleaving cancels most of the noise other work on the machine adds. ``--floor`` adds
``bench.floor``, a bare relay on the gateway's server and client libraries: the least any
gateway on this stack adds; ``--redis-url`` puts every gateway's cache (answer streams,
coalescing) in that Redis.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import uvloop

from bench import procs
from bench.direct import RawRest
from bench.load import Pool, Target, direct_target, gateway_target, measure
from bench.stats import Round, median


async def compare(
    roots: list[Path],
    rounds: int,
    requests: dict[int, int],
    floor: bool = False,
    redis_url: str | None = None,
) -> None:
    work = Path(tempfile.mkdtemp(prefix="qa-compare-"))
    emulator = procs.EmulatorProcess(work)
    gateways, pools = [], []
    direct = RawRest(emulator.rest_address)
    try:
        targets: list[tuple[Target, int]] = [(direct_target(direct), os.getpid())]
        if floor:
            child, port = procs.start_floor(work, emulator)
            gateways.append(child)
            procs.wait_http_ready(child, port)
            pools.append(pool := Pool(port))
            await pool.grow(32)
            targets.append((gateway_target(pool, name="floor"), child.pid))
        for index, root in enumerate(roots):
            (work / str(index)).mkdir()
            child, port = procs.start_gateway(
                work / str(index), emulator, root, redis_url=redis_url
            )
            gateways.append(child)
            procs.wait_http_ready(child, port)
            pools.append(pool := Pool(port))
            await pool.grow(32)
            targets.append((gateway_target(pool, name=f"{index}:{root.name}"), child.pid))
        for target, _ in targets:  # warm-up
            await measure(target, 200, 32, {})
        results: dict[tuple[int, str], list[Round]] = {}
        for round_ in range(rounds):
            order = targets if round_ % 2 == 0 else targets[::-1]  # no target always first
            for concurrency, count in requests.items():
                for target, pid in order:
                    watch = {"process": pid, "emulator": emulator.pid}
                    found = await measure(target, count, concurrency, watch)
                    results.setdefault((concurrency, target.name), []).append(found)
        _print(results, [target.name for target, _ in targets], requests)
    finally:
        for pool in pools:
            pool.close()
        await direct.close()
        for child in gateways:
            child.stop()
        emulator.stop()


def _print(
    results: dict[tuple[int, str], list[Round]], names: list[str], requests: dict[int, int]
) -> None:
    for concurrency in requests:
        base = results[(concurrency, "direct")]
        print(f"concurrency {concurrency}: medians (ms); added = minus direct, round by round")
        for name in names:
            series = results[(concurrency, name)]

            def added(metric: str, series: list[Round] = series, base: list[Round] = base) -> float:
                return median(
                    [
                        getattr(g, metric) - getattr(d, metric)
                        for g, d in zip(series, base, strict=True)
                    ]
                )

            cpu = median([r.cpu_per_answer_ms("process") for r in series])
            print(
                f"  {name:24s} last p50 {median([r.last_p50 for r in series]):7.2f}"
                f"  added: first p50 {added('first_p50'):6.2f}  last p50 "
                f"{added('last_p50'):6.2f}  last p99 {added('last_p99'):6.2f}"
                f"  | {median([r.rps for r in series]):5.0f}/s  CPU/answer {cpu:.3f}"
                f"  errors {sum(r.errors for r in series)}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    parser.add_argument("roots", nargs="+", type=Path, help="checkouts to run gateways from")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--c1", type=int, default=200, help="requests per round at conc. 1")
    parser.add_argument("--c32", type=int, default=800, help="requests per round at conc. 32")
    parser.add_argument(
        "--floor", action="store_true", help="also a bare relay on the same stack (bench.floor)"
    )
    parser.add_argument(
        "--redis-url",
        help="the gateways' cache in this Redis (every key expires: use a Redis of your own)",
    )
    args = parser.parse_args()
    procs.raise_fd_limit()
    requests = {1: args.c1, 32: args.c32}
    roots = [root.resolve() for root in args.roots]
    uvloop.run(compare(roots, args.rounds, requests, args.floor, args.redis_url))


if __name__ == "__main__":
    main()
