"""Everything a running gateway holds, built from ``Settings`` when the server starts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from backends.base import Backend
from backends.emulator import Behaviour, Emulator
from gateway.guard import Guards
from gateway.retry import Fallback, RetryBudget, Retrying
from gateway.settings import Settings
from gateway.upstream import Direct, Upstream


@dataclass
class Runtime:
    """The backends, each wrapped in the gateway's policies, and the embedded emulator."""

    settings: Settings
    backends: dict[str, Backend]
    upstreams: dict[str, Upstream]
    guards: Guards
    emulator: Emulator | None = None


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Runtime]:
    """Start the embedded emulator if configured, build the backends, close all on exit."""
    emulator = None
    if settings.emulator.enabled:
        knobs = settings.emulator
        emulator = Emulator(
            Behaviour(
                chunks=knobs.chunks,
                delay_ms=knobs.delay_ms,
                first_delay_ms=knobs.first_delay_ms,
            )
        )
        await emulator.start(knobs.host, knobs.port)
    backends: dict[str, Backend] = {}
    for name, entry in settings.backends.items():
        if entry.emulator and emulator is not None:
            entry = entry.model_copy(update={"endpoint": emulator.address, "insecure": True})
        backends[name] = entry.build(name)
    try:
        yield Runtime(settings, backends, _upstreams(settings, backends), Guards(), emulator)
    finally:
        for backend in backends.values():
            await backend.aclose()
        if emulator is not None:
            await emulator.stop()


def _upstreams(settings: Settings, backends: dict[str, Backend]) -> dict[str, Upstream]:
    """Each backend wrapped in its policies: ``Fallback([Retrying(Direct(b)), ...])``."""
    knobs = settings.retry_budget
    budget = RetryBudget(knobs.ratio, knobs.min_per_s, knobs.window_s)
    retrying = {
        name: Retrying(Direct(backend), settings.backends[name].retry, budget)
        for name, backend in backends.items()
    }
    upstreams: dict[str, Upstream] = {}
    upstream: Upstream
    for name, upstream in retrying.items():
        fallbacks = settings.backends[name].fallback
        if fallbacks:
            upstream = Fallback([upstream, *(retrying[other] for other in fallbacks)])
        upstreams[name] = upstream
    return upstreams
