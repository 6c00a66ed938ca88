"""Per-principal limits: requests per minute, open answers at once, tokens per UTC day.

A limiter checks all three in one step, all or nothing (a refused request costs nothing),
and says what it found as a ``State``; ``Quota`` turns that into the figures a client is
told. ``RedisLimiter`` shares the counts among instances (one round trip per check, Redis's
clock); ``MemoryLimiter`` keeps them in process. Requests per minute follow GCRA: a
principal may send ``rpm`` at once, then one every ``60 / rpm`` seconds.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

WINDOW_US = 60_000_000
"""The minute of ``rpm``, in microseconds (the unit of every limiter clock)."""
DAY_US = 86_400_000_000


class LimitOverrides(BaseModel):
    """Limits of one principal; unset ones fall back to ``[limits]`` (none: unlimited)."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, gt=0)
    """Requests per minute."""
    concurrent: int | None = Field(None, gt=0)
    """Answers open at once."""
    tokens_per_day: int | None = Field(None, gt=0)
    """Tokens (``done.usage.total_tokens``) per UTC day."""

    def limited(self) -> bool:
        return any(value is not None for value in (self.rpm, self.concurrent, self.tokens_per_day))


_NAMES = tuple(LimitOverrides.model_fields)


class LimitSettings(LimitOverrides):
    """``[limits]``: the defaults of every principal, ``[limits.tenants.NAME]`` overrides,
    and what to do when Redis cannot be asked."""

    fail_open: bool = True
    """Redis unavailable: serve unchecked (true) or refuse with 503 ``limits_unavailable``."""
    lease_s: float = Field(30.0, gt=0)
    """An open answer holds its ``concurrent`` slot in Redis for this long unless its instance
    renews it (every third of it): a crashed instance's slots free themselves."""
    tenants: dict[str, LimitOverrides] = Field(default_factory=dict)

    @cached_property
    def _defaults(self) -> LimitOverrides:
        return LimitOverrides(**{name: getattr(self, name) for name in _NAMES})

    def resolve(self, tenant: str, own: LimitOverrides | None) -> LimitOverrides:
        """Each limit from the principal's ``own`` (an API key's), else its tenant's table,
        else these defaults."""
        if own is None and tenant not in self.tenants:
            return self._defaults  # the common case builds no model
        layers = [layer for layer in (own, self.tenants.get(tenant)) if layer is not None]
        values = {
            name: next(
                (v for layer in layers if (v := getattr(layer, name)) is not None),
                getattr(self, name),
            )
            for name in _NAMES
        }
        return LimitOverrides(**values)


@dataclass(frozen=True, slots=True)
class State:
    """What one check found (microseconds on the limiter's clock)."""

    refused: str
    """``""`` (admitted), or the limit that refused: ``rpm``, ``concurrent``, ``tokens_per_day``."""
    now: int
    tat: float
    """GCRA's theoretical arrival time, after this request if it was admitted."""
    open: int
    """Answers open, this one included if admitted."""
    used: int
    """Tokens spent today, before this answer."""


@dataclass(frozen=True, slots=True)
class Quota:
    """One limit as a client is told it (``RateLimit-*``, ``Retry-After``), in seconds."""

    name: str
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int

    @classmethod
    def of(cls, name: str, limits: LimitOverrides, state: State) -> Quota:
        if name == "rpm":
            assert limits.rpm is not None
            interval = WINDOW_US / limits.rpm
            ahead = state.tat - state.now
            wait = ahead + interval - WINDOW_US if state.refused == name else 0
            remaining = int((WINDOW_US - ahead + 1) // interval)
            return cls(name, limits.rpm, max(0, remaining), _s(ahead), _s(wait))
        if name == "tokens_per_day":
            assert limits.tokens_per_day is not None
            midnight = _s(DAY_US - state.now % DAY_US)
            left = max(0, limits.tokens_per_day - state.used)
            return cls(name, limits.tokens_per_day, left, midnight, midnight)
        assert limits.concurrent is not None
        return cls(name, limits.concurrent, max(0, limits.concurrent - state.open), 1, 1)


class Limiter(Protocol):
    """Counts what principals (``who``) do against their limits."""

    async def admit(self, who: str, limits: LimitOverrides, ticket: str) -> State | None:
        """Check and, if admitted, count a request; ``ticket`` then holds a ``concurrent``
        slot until ``finish``. None: the counts could not be reached."""
        ...

    async def finish(self, who: str, limits: LimitOverrides, ticket: str, tokens: int) -> None:
        """The answer of ``ticket`` ended having cost ``tokens``."""
        ...

    async def aclose(self) -> None: ...


def decide(limits: LimitOverrides, now: int, tat: float, open: int, used: int) -> str:
    """Which limit refuses a request (``""``: none), budget first. Mirrored in Redis's script."""
    if limits.tokens_per_day is not None and used >= limits.tokens_per_day:
        return "tokens_per_day"
    if limits.rpm is not None and tat + WINDOW_US / limits.rpm - now > WINDOW_US + 1:
        return "rpm"  # (the microsecond of slack absorbs float rounding of a full burst)
    if limits.concurrent is not None and open >= limits.concurrent:
        return "concurrent"
    return ""


class MemoryLimiter:
    """The counts of one instance, for a gateway without Redis."""

    def __init__(self) -> None:
        self._tat: dict[str, float] = {}
        self._open: dict[str, set[str]] = {}
        self._spent: dict[str, tuple[int, int]] = {}
        """Per principal: (day, tokens spent that day)."""

    async def admit(self, who: str, limits: LimitOverrides, ticket: str) -> State:
        now = _now_us()
        tat = max(self._tat.get(who, 0.0), now)
        open = self._open.setdefault(who, set())
        day, used = self._spent.get(who, (0, 0))
        used = used if day == now // DAY_US else 0
        refused = decide(limits, now, tat, len(open), used)
        if not refused:
            if limits.rpm is not None:
                tat = self._tat[who] = tat + WINDOW_US / limits.rpm
            if limits.concurrent is not None:
                open.add(ticket)
        return State(refused, now, tat, len(open), used)

    async def finish(self, who: str, limits: LimitOverrides, ticket: str, tokens: int) -> None:
        open = self._open.get(who, set())
        open.discard(ticket)
        if not open:
            self._open.pop(who, None)
        if tokens:
            today = _now_us() // DAY_US
            day, used = self._spent.get(who, (today, 0))
            self._spent[who] = (today, (used if day == today else 0) + tokens)

    async def aclose(self) -> None:
        pass


def _now_us() -> int:
    return time.time_ns() // 1000


def _s(us: float) -> int:
    """Whole seconds, rounded up."""
    return max(0, math.ceil(us / 1_000_000))
