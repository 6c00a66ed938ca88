"""The figures of a run as Markdown: medians across rounds, then the targets met or missed."""

from __future__ import annotations

from bench import report_scenarios as sections
from bench.markdown import number, table
from bench.stats import Round
from bench.summary import Results, added, best_under, med, med_cpu, med_of, rounds_of
from bench.targets import targets

METRICS = ("first_p50", "first_p99", "last_p50", "last_p99")


def render(results: Results) -> str:
    out = ["# Benchmark results", "", *results.machine, ""]
    out += _ceiling(results.ceiling) + _latency(results.rounds) + _cpu(results.rounds)
    out += _throughput(results.sweep) + sections.cache(results)
    out += sections.streams(results.streams) + sections.identical(results.identical)
    out += sections.idle(results.idle)
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
            number(r.last_p50, 3),
            number(r.last_p99, 3),
            number(r.cpu_per_answer_ms("bench"), 3),
            str(r.errors),
        ]
        for r in rounds
    ]
    return [
        "## Load generator alone (canned 20-event SSE answers from `bench.trivial`)",
        "",
        *table(
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
                + [number(med_of(series, m)) for m in METRICS]
                + [
                    f"{med(series, lambda r: r.rps):,.0f}",
                    str(sum(r.errors for r in series)),
                    number(med(series, lambda r: r.others_cores)),
                ]
            )
        for target in paths:
            if target.startswith("direct"):
                continue
            rows.append(
                [str(concurrency), f"**added by {target}**"]
                + [f"**{number(added(rounds, m, concurrency, target))}**" for m in METRICS]
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
        *table(
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
                + [number(med_cpu(series, p), 3) for p in ("gateway", "emulator", "bench")]
            )
    return [
        "## CPU time per answer, ms (process CPU / answers; medians of rounds)",
        "",
        "For `direct`, `direct-grpc` and `sdk` the bench column is the client itself: raw "
        "aiohttp on the REST API, a raw gRPC channel, "
        "and the gateway's Gemini backend on the SDK without HTTP.",
        "",
        *table(["conc.", "path", "gateway", "emulator", "bench (load generator)"], rows),
        "",
    ]


def _throughput(sweep: list[Round]) -> list[str]:
    rows = [
        [
            r.target,
            str(r.concurrency),
            f"{r.rps:,.0f}",
            f"{r.events_per_s:,.0f}",
            number(r.last_p50),
            number(r.last_p99),
            number(r.cpu_per_answer_ms("gateway"), 3),
            str(r.errors),
            number(r.others_cores),
        ]
        for r in sweep
    ]
    lines = [
        "## Throughput by concurrency (20-event answers; events = answer events)",
        "",
        *table(
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
