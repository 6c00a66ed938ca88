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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import quote

from starlette.requests import Request

from backends.base import Done
from gateway.formats import Failure, Outcome, Outcomes
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
    """An admitted request: the headers its answer carries; ``end`` counts its ending."""

    headers: dict[str, str] = field(default_factory=dict)
    _end: Callable[[int], Awaitable[None]] | None = None
    """Frees the slot and spends the tokens; None once done (or nothing to count)."""
    _metering: bool = False
    """Whether the answer's tokens count (a daily budget applies)."""

    def metered(self, outcomes: Stream, cache: str) -> Outcomes:
        """``outcomes``, ending the ticket as the terminal one goes by (before the client
        sees it: a client that asks again at once finds the slot free and the tokens spent);
        a cache hit costs no tokens."""
        if self._end is None:
            return outcomes
        return self._tap(outcomes, self._metering and cache != "HIT")

    async def end(self, tokens: int = 0) -> None:
        end, self._end = self._end, None
        if end is not None:
            # Shielded: a client leaving (a cancelled task) must not leave the slot held.
            await asyncio.shield(end(tokens))

    async def _tap(self, outcomes: Stream, metering: bool) -> Stream:
        async with aclosing(outcomes):
            async for batch in outcomes:
                last = batch[-1] if batch else None
                if isinstance(last, Done):
                    usage = last.usage
                    await self.end(usage.total_tokens if usage and metering else 0)
                elif isinstance(last, Failure):
                    await self.end()
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
    if state is None:
        if not runtime.settings.limits.fail_open:
            retry = str(max(1, math.ceil(runtime.settings.cache.breaker_s)))
            message = "the limits cannot be checked right now; try again"
            raise HTTPProblem(503, "limits_unavailable", message, headers={"Retry-After": retry})
        headers = {}
    elif state.refused:
        quota = Quota.of(state.refused, limits, state)
        code, message = _REFUSALS[state.refused]
        headers = _headers(quota) | {"Retry-After": str(max(1, quota.retry_after_s))}
        raise HTTPProblem(429, code, message.format(quota.limit), headers=headers)
    else:
        shown = next(name for name in _SHOWN if getattr(limits, name) is not None)
        headers = _headers(Quota.of(shown, limits, state))
    ticket = Ticket(
        headers,
        partial(runtime.limiter.finish, who, limits, number),
        limits.tokens_per_day is not None,
    )
    try:
        yield ticket
    except HTTPProblem as problem:
        problem.headers.update(ticket.headers)
        raise
    finally:
        await ticket.end()  # if the answer ended without a terminal event (or never opened)


def _headers(quota: Quota) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(quota.limit),
        "RateLimit-Remaining": str(quota.remaining),
        "RateLimit-Reset": str(quota.reset_s),
    }
