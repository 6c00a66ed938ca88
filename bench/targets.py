"""The issue's targets, each met or missed, and by how much."""

from __future__ import annotations

from bench.markdown import number, table
from bench.stats import median
from bench.summary import Results, added, best_under, med, rounds_of


def targets(results: Results) -> list[str]:
    rounds, checks = results.rounds, []

    def check(name: str, value: float, limit: float, unit: str, higher: bool = False) -> None:
        met = value >= limit if higher else value <= limit
        gap = "" if met or value != value else f" (missed by {abs(value - limit):.3g} {unit})"
        checks.append(
            [
                name,
                f"{number(value, 3)} {unit}",
                f"{'≥' if higher else '≤'} {limit:g}",
                ("met" if met else "**missed**") + gap,
            ]
        )

    check("added, c=1, miss, last byte p50", added(rounds, "last_p50", 1), 0.5, "ms")
    check("added, c=1, miss, last byte p99", added(rounds, "last_p99", 1), 2.0, "ms")
    for concurrency in (1, 32):
        check(
            f"gateway CPU per answer, c={concurrency}, miss",
            med(
                rounds_of(rounds, "gateway", concurrency), lambda r: r.cpu_per_answer_ms("gateway")
            ),
            1.2,
            "ms",
        )
    if results.cache:
        check(
            "gateway CPU per cache hit, c=1",
            med(rounds_of(rounds, "gateway-hit", 1), lambda r: r.cpu_per_answer_ms("gateway")),
            0.35,
            "ms",
        )
        check(
            "cache hit, c=1, last byte p50",
            med(rounds_of(rounds, "gateway-hit", 1), lambda r: r.last_p50),
            0.5,
            "ms",
        )
        hit = best_under(results.sweep, "gateway-hit")
        check("cache hits/s", hit.rps if hit else 0.0, 2000, "/s", higher=True)
    through = [s for s in results.streams if s.path == "gateway"]
    direct = [s for s in results.streams if s.path == "direct"]
    if through:
        every = f"of {through[0].streams}, every round"
        check(
            f"open streams without error ({every})",
            min(s.completed for s in through),
            1000,
            "",
            higher=True,
        )
        # The first round only: later ones reuse memory the first one freed.
        check("RSS per open stream (first round)", through[0].rss_per_stream_kb, 50, "KB")
    if through and direct:
        pairs = list(zip(through, direct, strict=False))
        check(
            "added delay per event, p99, all streams open (median of rounds)",
            median([g.steady_p99_ms - d.steady_p99_ms for g, d in pairs]),
            1.0,
            "ms",
        )
        check(
            "added delay per event, p99, while streams start (median of rounds)",
            median([g.delay_p99_ms - d.delay_p99_ms for g, d in pairs]),
            1.0,
            "ms",
        )
    check("upstream calls for identical requests", results.identical.upstream_calls, 1, "")
    check("start-up to ready (REST, no gRPC backend)", results.idle.startup_s, 1.0, "s")
    return ["## Targets", "", *table(["target", "measured", "goal", ""], checks), ""]
