"""Limits at the edge: a principal's request is admitted, or refused with 429 before its
answer opens; every answer of a limited principal says where it stands (``RateLimit-*``).

A principal's limits: its own (an API key's, which the front door puts in
``scope["state"]["limits"]``), else its tenant's ``[limits.tenants.NAME]``, else ``[limits]``.
The answer counts as open until it ends, however it ends; its ``done.usage.total_tokens``
is spent then, unless it was replayed from the cache.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import quote

from starlette.requests import Request

from backends.base import Done
from gateway.formats import Outcome, Outcomes
from gateway.http.errors import HTTPProblem
from gateway.runtime import Runtime
from gateway.upstream.base import Principal
from gateway.upstream.limits import LimitOverrides, Quota

__all__ = ["LimitOverrides", "Ticket", "admitted", "limits_of"]

Stream = AsyncGenerator[Sequence[Outcome], None]
_REFUSALS = {
    "rpm": ("rate_limited", "too many requests: at most {} a minute"),
    "concurrent": ("concurrency_limited", "too many answers open at once: at most {}"),
    "tokens_per_day": ("budget_exhausted", "the daily budget of {} tokens is spent"),
}
_SHOWN = ("rpm", "tokens_per_day", "concurrent")
"""The limit an admitted answer's ``RateLimit-*`` headers describe: the first one set."""


def limits_of(request: Request, principal: Principal) -> LimitOverrides:
    """The limits ``principal`` (who sends ``request``) is held to."""
    runtime: Runtime = request.app.state.runtime
    own: LimitOverrides | None = request.scope.get("state", {}).get("limits")
    return runtime.settings.limits.resolve(principal.tenant, own)


@dataclass(slots=True)
class Ticket:
    """An admitted request: the headers its answer carries, and what the answer cost."""

    headers: dict[str, str] = field(default_factory=dict)
    metering: bool = False
    """Whether the answer's tokens count (a daily budget applies)."""
    tokens: int = 0

    def metered(self, outcomes: Stream, cache: str) -> Outcomes:
        """``outcomes``, noting the tokens of their ``done``; a cache hit costs none."""
        if not self.metering or cache == "HIT":
            return outcomes
        return self._tap(outcomes)

    async def _tap(self, outcomes: Stream) -> Stream:
        async with aclosing(outcomes):
            async for batch in outcomes:
                last = batch[-1] if batch else None
                if isinstance(last, Done) and last.usage is not None:
                    self.tokens = last.usage.total_tokens
                yield batch


@asynccontextmanager
async def admitted(request: Request, principal: Principal) -> AsyncIterator[Ticket]:
    """Admit ``principal``'s request or refuse it (429; 503 if the limits cannot be checked
    and ``limits.fail_open`` is false); inside, the answer is open. An ``HTTPProblem`` raised
    inside carries the ``RateLimit-*`` headers too."""
    limits = limits_of(request, principal)
    if not limits.limited():
        yield Ticket()
        return
    runtime: Runtime = request.app.state.runtime
    who = f"{quote(principal.tenant, safe='')}/{quote(principal.name, safe='')}"
    number = uuid.uuid4().hex
    state = await runtime.limiter.admit(who, limits, number)
    ticket = Ticket(metering=limits.tokens_per_day is not None)
    if state is None:
        if not runtime.settings.limits.fail_open:
            retry = str(max(1, math.ceil(runtime.settings.cache.breaker_s)))
            message = "the limits cannot be checked right now; try again"
            raise HTTPProblem(503, "limits_unavailable", message, headers={"Retry-After": retry})
    elif state.refused:
        quota = Quota.of(state.refused, limits, state)
        code, message = _REFUSALS[state.refused]
        headers = _headers(quota) | {"Retry-After": str(max(1, quota.retry_after_s))}
        raise HTTPProblem(429, code, message.format(quota.limit), headers=headers)
    else:
        shown = next(name for name in _SHOWN if getattr(limits, name) is not None)
        ticket.headers = _headers(Quota.of(shown, limits, state))
    try:
        yield ticket
    except HTTPProblem as problem:
        problem.headers.update(ticket.headers)
        raise
    finally:
        # Shielded: a client leaving (a cancelled task) must not leave the slot held.
        await asyncio.shield(runtime.limiter.finish(who, limits, number, ticket.tokens))


def _headers(quota: Quota) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(quota.limit),
        "RateLimit-Remaining": str(quota.remaining),
        "RateLimit-Reset": str(quota.reset_s),
    }
