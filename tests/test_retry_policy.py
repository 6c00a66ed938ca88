"""The retry layer's pure parts: backoff with jitter, and the instance-wide retry budget."""

from __future__ import annotations

from unittest.mock import Mock

from tenacity import RetryCallState

from backends.base import TransientError
from gateway.upstream.budget import RetryBudget
from gateway.upstream.retry import Retrying, RetryPolicy


def state_after(attempt: int, error: Exception) -> RetryCallState:
    state = RetryCallState(retry_object=Mock(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(error), error, None))
    return state


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(initial_s=0.1, multiplier=2, max_s=0.5)
    retrying = Retrying(Mock(), policy, RetryBudget())
    error = TransientError("unavailable", "down")
    for attempt, backoff in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        waits = {retrying._wait(state_after(attempt, error)) for _ in range(50)}
        assert all(backoff / 2 <= wait <= backoff for wait in waits)
        assert len(waits) > 1  # jittered


def test_server_delay_wins_when_longer() -> None:
    retrying = Retrying(Mock(), RetryPolicy(initial_s=0.1), RetryBudget())
    error = TransientError("resource_exhausted", "slow down", retry_after=2.0)
    assert retrying._wait(state_after(1, error)) == 2.0


async def test_budget_allows_a_floor_plus_a_share_of_requests() -> None:
    budget = RetryBudget(ratio=0.2, min_per_s=1, window_s=5)
    assert sum(budget.try_spend() for _ in range(20)) == 5  # the floor: 1/s over 5 s
    for _ in range(50):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(20)) == 10  # plus 20% of 50 requests
