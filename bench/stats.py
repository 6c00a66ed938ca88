"""Percentiles of one round, medians across rounds."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.http_client import Exchange


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between closest ranks; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]
    return statistics.median(clean) if clean else float("nan")


@dataclass
class Round:
    """One measured round: who was asked, how, and what came back (times in ms)."""

    target: str
    concurrency: int
    answers: int
    errors: int
    wall_s: float
    first_p50: float
    first_p99: float
    last_p50: float
    last_p99: float
    events: int
    cpu_ms: dict[str, float] = field(default_factory=dict)
    """CPU milliseconds each process used during the round."""
    hits: int = 0
    others_cores: float = 0.0
    """CPU the rest of the machine used meanwhile (cores): noise from outside the bench."""

    @property
    def rps(self) -> float:
        return self.answers / self.wall_s if self.wall_s else 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s else 0.0

    def cpu_per_answer_ms(self, process: str) -> float:
        return self.cpu_ms.get(process, float("nan")) / max(self.answers, 1)


def summarise(
    target: str, concurrency: int, exchanges: list[Exchange], wall_s: float, events_each: int
) -> Round:
    """``events_each``: frames that are not answer events (SSE ``meta`` and ``done``: 2)."""
    good = [e for e in exchanges if e.ok]
    first = [(e.first - e.start) * 1000 for e in good]
    last = [(e.last - e.start) * 1000 for e in good]
    return Round(
        target=target,
        concurrency=concurrency,
        answers=len(good),
        errors=len(exchanges) - len(good),
        wall_s=wall_s,
        first_p50=percentile(first, 50),
        first_p99=percentile(first, 99),
        last_p50=percentile(last, 50),
        last_p99=percentile(last, 99),
        events=sum(e.frames - events_each for e in good),
        hits=sum(e.cache == b"HIT" for e in good),
    )
