"""``python -m bench.startup DIR [DIR ...]``: start-up of gateways from several checkouts.

Each round starts one gateway per checkout in turn, with the bench's config (Gemini over
REST on an emulator process, no gRPC backend), and times process start to ``/readyz`` 200,
as the full bench does once. Prints, per checkout, the median and spread of the rounds, the
gateway's CPU to ready, its RSS at ready and after ``--idle-s`` at rest, and the cores
other processes kept busy while it started (start-up is CPU-bound: other work moves it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench import procs
from bench.stats import median


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("roots", nargs="+", type=Path, help="checkouts to run gateways from")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--idle-s", type=float, default=1.0)
    args = parser.parse_args()
    roots = [root.resolve() for root in args.roots]
    work = Path(tempfile.mkdtemp(prefix="qa-startup-"))
    emulator = procs.EmulatorProcess(work)
    figures: dict[Path, list[tuple[float, float, int, int, float]]] = {root: [] for root in roots}
    try:
        for _ in range(args.rounds):
            for index, root in enumerate(roots):
                (work / str(index)).mkdir(exist_ok=True)
                busy = procs.machine_busy_s()
                child, port = procs.start_gateway(work / str(index), emulator, root)
                try:
                    ready_s = procs.wait_http_ready(child, port)
                    cpu_s, rss_ready = procs.cpu_s(child.pid), procs.rss_kb(child.pid)
                    others = (procs.machine_busy_s() - busy - cpu_s) / ready_s
                    time.sleep(args.idle_s)
                    rss_idle = procs.rss_kb(child.pid)
                    figures[root].append((ready_s, cpu_s, rss_ready, rss_idle, others))
                finally:
                    child.stop()
    finally:
        emulator.stop()
    print(f"{args.rounds} rounds, medians")
    for root, runs in figures.items():
        ready = sorted(run[0] for run in runs)
        print(
            f"  {root}: ready {median(ready):.3f} s (min {ready[0]:.3f}, max {ready[-1]:.3f})"
            f"  CPU to ready {median([run[1] for run in runs]):.3f} s"
            f"  RSS at ready {median([run[2] for run in runs]) / 1024:.1f} MB,"
            f" idle {median([run[3] for run in runs]) / 1024:.1f} MB"
            f"  others {median([run[4] for run in runs]):.2f} cores"
        )


if __name__ == "__main__":
    main()
