"""The report's sections on single scenarios: the cache, resumes, open streams, identical
requests, start-up and idle."""

from __future__ import annotations

from bench.markdown import number, table
from bench.scenarios import Identical, Idle
from bench.streams import Streams
from bench.summary import Results, best_under, med, rounds_of


def cache(results: Results) -> list[str]:
    if not results.cache:
        return [
            "## Cache hits",
            "",
            "cache: not available (no `X-Cache: HIT` on a repeated "
            "query; the hit rounds run once the gateway reports one)",
            "",
        ]
    hit = best_under(results.sweep, "gateway-hit")
    return [
        "## Cache hits",
        "",
        f"- last byte p50 at concurrency 1: "
        f"{number(med(rounds_of(results.rounds, 'gateway-hit', 1), lambda r: r.last_p50), 3)} ms",
        f"- hits/s at p99 ≤ 10 ms: {hit.rps:,.0f}" if hit else "- hits/s: none within 10 ms",
        *resume(results),
        "",
    ]


def resume(results: Results) -> list[str]:
    resumes = rounds_of(results.rounds, "gateway-resume", 1)
    if not resumes:
        return []
    p50 = med(resumes, lambda r: r.last_p50)
    return [
        f"- resume of that finished 20-event answer (`GET /qa/streams/{{id}}`), last byte "
        f"p50 at concurrency 1: {number(p50, 3)} ms"
    ]


def streams(streams: list[Streams]) -> list[str]:
    rows = [
        [
            s.path,
            str(s.streams),
            str(s.completed),
            number(s.delay_p50_ms, 3),
            number(s.delay_p99_ms, 3),
            number(s.delay_max_ms, 1),
            number(s.steady_p99_ms, 3),
            number(s.rss_per_stream_kb, 1),
            number(s.others_cores),
            "; ".join(s.errors),
        ]
        for s in streams
    ]
    return [
        "## Open streams (1 event/s; delay = arrival at the client - hand-off by the emulator)",
        "",
        "One row per path and round, rounds in order. RSS per stream counts in the first round "
        "only: later rounds reuse memory the first one freed.",
        "",
        *table(
            [
                "path",
                "streams",
                "completed",
                "delay p50 ms",
                "delay p99 ms",
                "max ms",
                "steady p99 ms",
                "RSS KB/stream (gateway; direct: bench client)",
                "others (cores)",
                "first errors",
            ],
            rows,
        ),
        "",
    ]


def identical(found: Identical) -> list[str]:
    return [
        "## Identical concurrent requests",
        "",
        f"- {found.requests} concurrent requests for one new query: "
        f"**{found.upstream_calls} upstream calls**, {found.answered} answered",
        "",
    ]


def idle(idle: Idle) -> list[str]:
    return [
        "## Start-up and idle",
        "",
        f"- start-up (process start to `/readyz` 200): **{idle.startup_s:.2f} s**",
        f"- RSS at ready: **{idle.rss_ready_kb / 1024:.1f} MB**; after the run, idle: "
        f"{idle.rss_after_kb / 1024:.1f} MB; idle CPU {idle.cpu_idle_ms_per_s:.1f} ms/s",
        f"- gateway process: {idle.modules}",
        "",
    ]
