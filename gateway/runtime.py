"""Everything a running gateway holds, built from ``Settings`` when the server starts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from backends.base import Backend
from backends.emulator import Behaviour, Emulator
from gateway.cache import Cached
from gateway.guard import Guards
from gateway.observe import Metrics
from gateway.retry import Fallback, RetryBudget, Retrying
from gateway.settings import Settings
from gateway.shared import SharedFlights
from gateway.stores import Breaker, MemoryStore, RedisStore, Store
from gateway.upstream import Direct, Upstream

BLOCK_MS = 500
"""How long one blocking read of a shared flight waits in Redis."""


@dataclass
class Runtime:
    """The backends, each wrapped in the gateway's policies, and the embedded emulator."""

    settings: Settings
    backends: dict[str, Backend]
    upstreams: dict[str, Upstream]
    guards: Guards
    store: Store
    emulator: Emulator | None = None


@asynccontextmanager
async def running(settings: Settings, metrics: Metrics) -> AsyncIterator[Runtime]:
    """Start the embedded emulator if configured, build the backends, close all on exit."""
    async with AsyncExitStack() as stack:
        emulator = None
        if settings.emulator.enabled:
            knobs = settings.emulator
            behaviour = Behaviour(
                chunks=knobs.chunks,
                delay_ms=knobs.delay_ms,
                first_delay_ms=knobs.first_delay_ms,
                cumulative=knobs.cumulative,
            )
            emulator = await Emulator(behaviour).start(knobs.host, knobs.port)
            stack.push_async_callback(emulator.stop)
        backends: dict[str, Backend] = {}
        for name, entry in settings.backends.items():
            if entry.emulator and emulator is not None:
                entry = entry.model_copy(update={"endpoint": emulator.address, "insecure": True})
            backends[name] = backend = entry.build(name)
            stack.push_async_callback(backend.aclose)
        store, shared = _cache(settings, metrics)
        stack.push_async_callback(store.aclose)
        if shared is not None:
            stack.push_async_callback(shared.reader.aclose)
        upstreams = _upstreams(settings, backends, store, shared)
        yield Runtime(settings, backends, upstreams, Guards(), store, emulator)


def _cache(settings: Settings, metrics: Metrics) -> tuple[Store, SharedFlights | None]:
    """Redis (store and shared flights) when ``redis_url`` is set, else an in-memory store."""
    knobs = settings.cache
    if settings.redis_url is None:
        return MemoryStore(knobs.memory_max_entries, knobs.memory_max_bytes), None
    breaker = Breaker(knobs.breaker_s, on_failure=metrics.redis_errors.inc)

    def connect(read_timeout_s: float) -> Redis:
        return Redis.from_url(
            settings.redis_url or "",
            socket_connect_timeout=knobs.connect_timeout_s,
            socket_timeout=read_timeout_s,
            # One immediate retry replaces a pooled connection Redis closed (a restart);
            # timeouts are not retried: the breaker handles a slow Redis.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )

    shared = SharedFlights(
        connect(knobs.command_timeout_s),
        connect(knobs.command_timeout_s + BLOCK_MS / 1000),
        breaker,
        lock_ttl_s=knobs.lock_ttl_s,
        block_ms=BLOCK_MS,
    )
    return RedisStore(shared.redis, breaker), shared


def _upstreams(
    settings: Settings,
    backends: dict[str, Backend],
    store: Store,
    shared: SharedFlights | None,
) -> dict[str, Upstream]:
    """Each backend in its policies: ``Cached(Fallback([Retrying(Direct(b)), ...]))``."""
    knobs = settings.retry_budget
    budget = RetryBudget(knobs.ratio, knobs.min_per_s, knobs.window_s)
    retrying = {
        name: Retrying(Direct(backend), settings.backends[name].retry, budget)
        for name, backend in backends.items()
    }
    upstreams: dict[str, Upstream] = {}
    for name, backend in backends.items():
        entry = settings.backends[name]
        upstream: Upstream = retrying[name]
        if entry.fallback:
            upstream = Fallback([upstream, *(retrying[other] for other in entry.fallback)])
        upstreams[name] = Cached(
            upstream,
            backend,
            entry,
            settings.cache,
            store,
            shared,
            backends.__getitem__,
            entry.retry.first_event_s,
        )
    return upstreams
