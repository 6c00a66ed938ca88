"""A run's results, and the medians and pairings every part of the report reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.scenarios import Identical, Idle
from bench.stats import Round, median
from bench.streams import Streams


@dataclass
class Results:
    machine: list[str]
    ceiling: list[Round]
    rounds: list[Round]
    sweep: list[Round]
    cache: bool
    streams: list[Streams]
    identical: Identical
    idle: Idle


def rounds_of(rounds: list[Round], target: str, concurrency: int) -> list[Round]:
    return [r for r in rounds if r.target == target and r.concurrency == concurrency]


def med(rounds: list[Round], value: Callable[[Round], float]) -> float:
    return median([value(r) for r in rounds])


def med_of(rounds: list[Round], metric: str) -> float:
    return median([getattr(r, metric) for r in rounds])


def med_cpu(rounds: list[Round], process: str) -> float:
    return median([r.cpu_per_answer_ms(process) for r in rounds])


def baseline(target: str) -> str:
    """The direct path a target is compared with: the gRPC one for gRPC paths."""
    return "direct-grpc" if target.endswith("-grpc") or target == "sdk" else "direct"


def added(rounds: list[Round], metric: str, concurrency: int, target: str = "gateway") -> float:
    """Median over rounds of (target - its direct baseline) for ``metric``, paired in order."""
    pairs = zip(
        rounds_of(rounds, target, concurrency),
        rounds_of(rounds, baseline(target), concurrency),
        strict=False,
    )
    return median([getattr(g, metric) - getattr(d, metric) for g, d in pairs])


def best_under(sweep: list[Round], target: str, p99_ms: float = 10.0) -> Round | None:
    fitting = [r for r in sweep if r.target == target and r.last_p99 <= p99_ms and not r.errors]
    return max(fitting, key=lambda r: r.rps, default=None)
