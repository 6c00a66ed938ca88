"""Retries before the first event, bounded per request and across the instance (``RetryBudget``).

The rule (Envoy, gRPC): retry only until the answer has started. ``Retrying`` wraps an
``Upstream``; its ``open`` returns once the first event is in hand, so a retry can never
repeat text a client has seen. After that, failures become terminal ``error`` events.
"""

from __future__ import annotations

import asyncio
import random

from pydantic import BaseModel, ConfigDict, Field
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    stop_before_delay,
)
from tenacity.stop import stop_base

from backends.base import BackendError, TransientError
from gateway.upstream.base import Answer, Ask, Upstream
from gateway.upstream.budget import RetryBudget


class RetryPolicy(BaseModel):
    """``[backends.NAME.retry]``: exponential backoff with jitter."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(3, ge=1)
    """Attempts in all, the first included."""
    initial_s: float = Field(0.5, ge=0)
    """The first backoff; each wait is drawn between half of it and all of it (jitter)."""
    max_s: float = Field(8.0, ge=0)
    """The longest backoff, however many attempts came before."""
    multiplier: float = Field(2.0, ge=1)
    """Each backoff is this many times the one before."""
    budget_s: float = Field(30.0, gt=0)
    """No retry starts later than this after the request began."""
    first_event_s: float = Field(30.0, gt=0)
    """Per attempt: time allowed for the first event before the attempt counts as failed."""


class _StopWhenBudgetSpent(stop_base):
    """Checked last, so a retry is only charged to the budget when it would happen."""

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return not self.budget.try_spend()


class Retrying:
    """Opens an answer, retrying transient failures with backoff until one starts."""

    def __init__(self, inner: Upstream, policy: RetryPolicy, budget: RetryBudget) -> None:
        self.inner = inner
        self.policy = policy
        self.budget = budget

    async def open(self, ask: Ask) -> Answer:
        self.budget.record_request()
        first_error: TransientError | None
        try:
            return await self._attempt(ask)
        except TransientError as exc:
            first_error = exc
        policy = self.policy
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda exc: isinstance(exc, BackendError) and exc.retryable),
            stop=stop_any(
                stop_after_attempt(policy.attempts),
                stop_before_delay(policy.budget_s),
                _StopWhenBudgetSpent(self.budget),
            ),
            wait=self._wait,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if first_error is not None:
                    replay, first_error = first_error, None
                    raise replay  # the first attempt's failure, so tenacity schedules a retry
                ask.trace.retries += 1
                return await self._attempt(ask)
        raise AssertionError("unreachable: tenacity returns or re-raises")

    async def _attempt(self, ask: Ask) -> Answer:
        ask.trace.attempts += 1
        seconds = self.policy.first_event_s
        try:
            async with asyncio.timeout(seconds):
                return await self.inner.open(ask)
        except TimeoutError:
            ask.trace.upstream_errors.append("deadline_exceeded")
            message = f"the answer did not start within {seconds:g} s"
            raise TransientError("deadline_exceeded", message) from None
        except BackendError as exc:
            ask.trace.upstream_errors.append(exc.code)
            raise

    def _wait(self, state: RetryCallState) -> float:
        policy = self.policy
        growth = policy.multiplier ** (state.attempt_number - 1)
        backoff = min(policy.max_s, policy.initial_s * growth)
        wait = random.uniform(backoff / 2, backoff)
        error = state.outcome.exception() if state.outcome else None
        asked = error.retry_after if isinstance(error, BackendError) else None
        return max(wait, asked or 0.0)
