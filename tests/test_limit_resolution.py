"""Which limits a principal is held to, and what a client is told of them (pure functions)."""

from __future__ import annotations

from gateway.upstream.limits import WINDOW_US, LimitOverrides, LimitSettings, Quota, State, decide

SETTINGS = LimitSettings(
    rpm=60,
    concurrent=4,
    tenants={"acme": LimitOverrides(rpm=10, tokens_per_day=5000)},
)


def test_own_limits_then_the_tenants_then_the_defaults() -> None:
    key = LimitOverrides(rpm=600)

    assert SETTINGS.resolve("other", None) == LimitOverrides(rpm=60, concurrent=4)
    assert SETTINGS.resolve("acme", None) == LimitOverrides(
        rpm=10, concurrent=4, tokens_per_day=5000
    )
    assert SETTINGS.resolve("acme", key) == LimitOverrides(
        rpm=600, concurrent=4, tokens_per_day=5000
    )
    assert SETTINGS.resolve("other", key) == LimitOverrides(rpm=600, concurrent=4)
    assert not LimitSettings().resolve("any", None).limited()


def test_the_budget_refuses_first_then_the_rate_then_the_open_answers() -> None:
    limits = LimitOverrides(rpm=6, concurrent=1, tokens_per_day=10)
    full = 0 + 6 * WINDOW_US / 6  # six requests just made

    assert decide(limits, 0, 0, 0, 0) == ""
    assert decide(limits, 0, full, 1, 10) == "tokens_per_day"
    assert decide(limits, 0, full, 1, 9) == "rpm"
    assert decide(limits, 0, full - WINDOW_US / 6, 1, 9) == "concurrent"


def test_what_a_refused_rate_tells() -> None:
    limits = LimitOverrides(rpm=6)
    quota = Quota.of("rpm", limits, State("rpm", 0, WINDOW_US, 0, 0))

    assert quota == Quota("rpm", 6, 0, 60, 10)
