"""The figures of a run as Markdown: medians across rounds, then the targets met or missed."""

from __future__ import annotations

from bench.scenarios import Identical, Idle
from bench.stats import Round
from bench.streams import Streams
from bench.summary import Results, added, best_under, med, med_cpu, med_of, rounds_of
from bench.targets import targets

METRICS = ("first_p50", "first_p99", "last_p50", "last_p99")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _f(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def render(results: Results) -> str:
    out = ["# Benchmark results", "", *results.machine, ""]
    out += _ceiling(results.ceiling) + _latency(results.rounds) + _cpu(results.rounds)
    out += _throughput(results.sweep) + _cache(results)
    out += _streams(results.streams) + _identical(results.identical) + _idle(results.idle)
    out += targets(results)
    out += [
        "Where the CPU goes, what is left, and the changes proposed with their measured "
        "effect: [PROFILE.md](PROFILE.md).",
        "",
    ]
    return "\n".join(out) + "\n"


def _ceiling(rounds: list[Round]) -> list[str]:
    rows = [
        [
            str(r.concurrency),
            f"{r.rps:,.0f}",
            f"{r.events_per_s:,.0f}",
            _f(r.last_p50, 3),
            _f(r.last_p99, 3),
            _f(r.cpu_per_answer_ms("bench"), 3),
            str(r.errors),
        ]
        for r in rounds
    ]
    return [
        "## Load generator alone (canned 20-event SSE answers from `bench.trivial`)",
        "",
        *_table(
            [
                "concurrency",
                "answers/s",
                "events/s",
                "p50 ms",
                "p99 ms",
                "client CPU ms/answer",
                "errors",
            ],
            rows,
        ),
        "",
    ]


def _latency(rounds: list[Round]) -> list[str]:
    paths = list(dict.fromkeys(r.target for r in rounds))
    count = len(rounds_of(rounds, "direct", 1))
    rows = []
    for concurrency in (1, 32):
        for target in paths:
            series = rounds_of(rounds, target, concurrency)
            rows.append(
                [str(concurrency), target]
                + [_f(med_of(series, m)) for m in METRICS]
                + [
                    f"{med(series, lambda r: r.rps):,.0f}",
                    str(sum(r.errors for r in series)),
                    _f(med(series, lambda r: r.others_cores)),
                ]
            )
        for target in paths:
            if target.startswith("direct"):
                continue
            rows.append(
                [str(concurrency), f"**added by {target}**"]
                + [f"**{_f(added(rounds, m, concurrency, target))}**" for m in METRICS]
                + ["", "", ""]
            )
    return [
        f"## Latency, ms (medians of {count} interleaved rounds; p50/p99 within each round)",
        "",
        "First = time to the first answer event, last = to the last byte. "
        "Added = the path minus its direct baseline (`direct` for REST paths, `direct-grpc` "
        "for gRPC ones), paired round by round. At concurrency 32 every path "
        "runs the 2 cores at saturation (see the emulator's CPU below), so those rows show "
        "queueing more than added work.",
        "",
        *_table(
            [
                "conc.",
                "path",
                "first p50",
                "first p99",
                "last p50",
                "last p99",
                "answers/s",
                "errors",
                "others (cores)",
            ],
            rows,
        ),
        "",
        "Others = CPU used meanwhile by processes outside the bench, in cores "
        "(of 2): a round that shares the machine is slower for reasons of its own.",
        "",
    ]


def _cpu(rounds: list[Round]) -> list[str]:
    rows = []
    for concurrency in (1, 32):
        for target in dict.fromkeys(r.target for r in rounds):
            series = rounds_of(rounds, target, concurrency)
            rows.append(
                [str(concurrency), target]
                + [_f(med_cpu(series, p), 3) for p in ("gateway", "emulator", "bench")]
            )
    return [
        "## CPU time per answer, ms (process CPU / answers; medians of rounds)",
        "",
        "For `direct`, `direct-grpc` and `sdk` the bench column is the client itself: raw "
        "aiohttp on the REST API, a raw gRPC channel, "
        "and the gateway's Gemini backend on the SDK without HTTP.",
        "",
        *_table(["conc.", "path", "gateway", "emulator", "bench (load generator)"], rows),
        "",
    ]


def _throughput(sweep: list[Round]) -> list[str]:
    rows = [
        [
            r.target,
            str(r.concurrency),
            f"{r.rps:,.0f}",
            f"{r.events_per_s:,.0f}",
            _f(r.last_p50),
            _f(r.last_p99),
            _f(r.cpu_per_answer_ms("gateway"), 3),
            str(r.errors),
            _f(r.others_cores),
        ]
        for r in sweep
    ]
    lines = [
        "## Throughput by concurrency (20-event answers; events = answer events)",
        "",
        *_table(
            [
                "path",
                "conc.",
                "answers/s",
                "events/s",
                "last p50",
                "last p99",
                "gateway CPU ms/answer",
                "errors",
                "others (cores)",
            ],
            rows,
        ),
        "",
    ]
    for target in dict.fromkeys(r.target for r in sweep):
        best = best_under(sweep, target)
        lines.append(
            f"- {target}: best at p99 ≤ 10 ms: "
            + (
                f"**{best.rps:,.0f} answers/s, {best.events_per_s:,.0f} events/s** "
                f"(concurrency {best.concurrency})"
                if best
                else "none within 10 ms"
            )
        )
    return [*lines, ""]


def _cache(results: Results) -> list[str]:
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
        f"{_f(med(rounds_of(results.rounds, 'gateway-hit', 1), lambda r: r.last_p50), 3)} ms",
        f"- hits/s at p99 ≤ 10 ms: {hit.rps:,.0f}" if hit else "- hits/s: none within 10 ms",
        *_resume(results),
        "",
    ]


def _resume(results: Results) -> list[str]:
    resumes = rounds_of(results.rounds, "gateway-resume", 1)
    if not resumes:
        return []
    p50 = med(resumes, lambda r: r.last_p50)
    return [
        f"- resume of that finished 20-event answer (`GET /qa/streams/{{id}}`), last byte "
        f"p50 at concurrency 1: {_f(p50, 3)} ms"
    ]


def _streams(streams: list[Streams]) -> list[str]:
    rows = [
        [
            s.path,
            str(s.streams),
            str(s.completed),
            _f(s.delay_p50_ms, 3),
            _f(s.delay_p99_ms, 3),
            _f(s.delay_max_ms, 1),
            _f(s.steady_p99_ms, 3),
            _f(s.rss_per_stream_kb, 1),
            _f(s.others_cores),
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
        *_table(
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


def _identical(found: Identical) -> list[str]:
    return [
        "## Identical concurrent requests",
        "",
        f"- {found.requests} concurrent requests for one new query: "
        f"**{found.upstream_calls} upstream calls**, {found.answered} answered",
        "",
    ]


def _idle(idle: Idle) -> list[str]:
    return [
        "## Start-up and idle",
        "",
        f"- start-up (process start to `/readyz` 200): **{idle.startup_s:.2f} s**",
        f"- RSS at ready: **{idle.rss_ready_kb / 1024:.1f} MB**; after the run, idle: "
        f"{idle.rss_after_kb / 1024:.1f} MB; idle CPU {idle.cpu_idle_ms_per_s:.1f} ms/s",
        f"- gateway process: {idle.modules}",
        "",
    ]
