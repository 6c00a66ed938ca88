"""Everything a running gateway holds, built from ``Settings`` when the server starts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from backends.base import Backend
from gateway.settings import Settings
from gateway.upstream.answers import AnswerStreams
from gateway.upstream.base import Direct, Upstream
from gateway.upstream.budget import RetryBudget
from gateway.upstream.cache import Cached
from gateway.upstream.fallback import Fallback
from gateway.upstream.flights import Flights
from gateway.upstream.limits import Limiter, MemoryLimiter
from gateway.upstream.memory_journal import Kept, MemoryJournal
from gateway.upstream.redis_journal import RedisJournal
from gateway.upstream.redis_limits import RedisLimiter
from gateway.upstream.retry import Retrying
from gateway.upstream.stores import REDIS_ERRORS, Breaker, MemoryStore
from gateway.upstream.streams import Journal

log = logging.getLogger("gateway.cache")

BLOCK_MS = 500
"""How long one blocking read of an answer stream waits in Redis."""


@dataclass
class Runtime:
    """The backends, and each wrapped in the gateway's policies (what the routes ask)."""

    settings: Settings
    backends: dict[str, Backend]
    upstreams: dict[str, Cached]
    streams: AnswerStreams
    """Answer streams by id, for a resume."""
    limiter: Limiter = field(default_factory=MemoryLimiter)
    """Counts what each principal does against its limits."""

    def catalog(self) -> list[dict[str, Any]]:
        """Name, type, model and whether it is emulated, for each backend in config order.

        Endpoints, projects and credentials stay out: they say where and as whom the gateway
        calls Google, which no client needs.
        """
        return [
            {
                "name": name,
                "type": self.settings.backends[name].type,
                "model": backend.model,
                "emulated": backend.emulated,
            }
            for name, backend in self.backends.items()
        ]


@asynccontextmanager
async def running(
    settings: Settings,
    on_redis_error: Callable[[], object] = lambda: None,
    on_bad_value: Callable[[], object] = lambda: None,
    on_limits_unchecked: Callable[[], object] = lambda: None,
) -> AsyncIterator[Runtime]:
    """Start the embedded emulator if configured, build the backends, close all on exit.

    ``on_redis_error`` hears of every failed Redis call, ``on_bad_value`` of every key found
    holding a wrong value, ``on_limits_unchecked`` of every request whose limits Redis could
    not check."""
    async with AsyncExitStack() as stack:
        emulator = None
        if settings.emulator.enabled:
            # Imported only then: the emulator loads the SDKs and gRPC.
            from backends.emulator import Behaviour, Emulator

            knobs = settings.emulator
            behaviour = Behaviour(
                chunks=knobs.chunks,
                delay_ms=knobs.delay_ms,
                first_delay_ms=knobs.first_delay_ms,
                cumulative=knobs.cumulative,
            )
            emulator = await Emulator(behaviour).start(knobs.host, knobs.port, knobs.rest_port)
            stack.push_async_callback(emulator.stop)
        backends: dict[str, Backend] = {}
        for name, entry in settings.backends.items():
            config = entry.backend_config()
            if config.emulator and emulator is not None:
                endpoint = emulator.address_for(config.protocol())
                config = config.model_copy(update={"endpoint": endpoint, "insecure": True})
            backends[name] = backend = config.build(name)
            stack.push_async_callback(backend.aclose)
        journal = _journal(settings, on_redis_error, on_bad_value)
        stack.push_async_callback(journal.aclose)
        if isinstance(journal, RedisJournal) and settings.redis_cluster:
            await _discover(journal.redis, journal.blocking)
        limiter: Limiter = MemoryLimiter()
        if isinstance(journal, RedisJournal):
            limiter = _shared_limiter(settings, journal.redis, on_redis_error, on_limits_unchecked)
        stack.push_async_callback(limiter.aclose)
        flights = Flights()
        upstreams = _upstreams(settings, backends, journal, flights)
        streams = AnswerStreams(flights, journal, backends)
        yield Runtime(settings, backends, upstreams, streams, limiter)


def _journal(
    settings: Settings, on_redis_error: Callable[[], object], on_bad_value: Callable[[], object]
) -> Journal:
    """Answer streams in Redis when ``redis_url`` is set, else in process."""
    knobs = settings.cache
    if settings.redis_url is None:
        store: MemoryStore[Kept | str] = MemoryStore(
            knobs.memory_max_entries, knobs.memory_max_bytes
        )
        return MemoryJournal(store, knobs.prefix)
    breaker = Breaker(knobs.breaker_s, on_failure=on_redis_error)

    def connect(read_timeout_s: float) -> Redis | RedisCluster:
        url, connect_s = settings.redis_url or "", knobs.connect_timeout_s
        # One immediate retry replaces a pooled connection Redis closed (a restart); timeouts
        # are not retried: the breaker handles a slow Redis.
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        if not settings.redis_cluster:
            return Redis.from_url(
                url, socket_connect_timeout=connect_s, socket_timeout=read_timeout_s, retry=retry
            )
        # A cluster client retries once too, after reloading the slot map (a failover), on
        # its own list of errors (timeouts included). A MOVED reply only moves that slot:
        # reloading the map every few (``reinitialize_steps``) drops every connection,
        # those in use too, which fails the commands on them.
        return RedisCluster.from_url(
            url,
            socket_connect_timeout=connect_s,
            socket_timeout=read_timeout_s,
            retry=retry,
            reinitialize_steps=0,
        )

    return RedisJournal(
        connect(knobs.command_timeout_s),
        connect(knobs.command_timeout_s + BLOCK_MS / 1000),
        breaker,
        knobs.prefix,
        settings.resume,
        heartbeat_s=knobs.heartbeat_s,
        recover_s=knobs.recover_s,
        block_ms=BLOCK_MS,
        on_bad_value=on_bad_value,
    )


async def _discover(*clusters: RedisCluster) -> None:
    """Learn the cluster's slot map before the first request. redis-py's cluster client
    sends a command it is given before it knows the map to a random node: the first
    requests, all at once, would be answered MOVED."""
    for cluster in clusters:
        try:
            await cluster.initialize()
        except REDIS_ERRORS as error:
            log.warning("redis cluster unreachable at start (%s): mapped on first use", error)


def _shared_limiter(
    settings: Settings,
    redis: Redis | RedisCluster,
    on_redis_error: Callable[[], object],
    on_unchecked: Callable[[], object],
) -> RedisLimiter:
    """Limits counted in the cache's Redis, behind a breaker of their own."""
    knobs = settings.limits
    unchecked = "served unchecked" if knobs.fail_open else "refused"
    activity = f"limit checks (requests {unchecked})"
    breaker = Breaker(settings.cache.breaker_s, on_redis_error, activity)
    prefix = settings.cache.prefix
    return RedisLimiter(redis, breaker, prefix, knobs.lease_s, on_unchecked)


def _upstreams(
    settings: Settings, backends: dict[str, Backend], journal: Journal, flights: Flights
) -> dict[str, Cached]:
    """Each backend in its policies: ``Cached(Fallback([Retrying(Direct(b)), ...]))``."""
    knobs = settings.retry_budget
    budget = RetryBudget(knobs.ratio, knobs.min_per_s, knobs.window_s)
    retrying = {
        name: Retrying(Direct(backend), settings.backends[name].retry, budget)
        for name, backend in backends.items()
    }
    upstreams: dict[str, Cached] = {}
    for name, backend in backends.items():
        entry = settings.backends[name]
        upstream: Upstream = retrying[name]
        if entry.fallback:
            upstream = Fallback([upstream, *(retrying[other] for other in entry.fallback)])
        answerers = [backend, *(backends[other] for other in entry.fallback)]
        upstreams[name] = Cached(
            upstream,
            answerers,
            entry,
            settings.cache,
            journal,
            flights,
            settings.resume,
            entry.retry.first_event_s,
        )
    return upstreams
