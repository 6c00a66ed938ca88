"""A bounded in-process map (where a gateway without Redis keeps finished answer streams),
and the ``Breaker`` every Redis call goes through.

Redis trouble never fails a request: every call has short timeouts, a ``Breaker`` stops
asking a failing Redis for a while, and each failure reads as a miss. A value of the wrong
type under one key is that key's problem (``is_key_problem``, ``KeyProblem``), not an outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from redis.exceptions import RedisClusterException, RedisError, ResponseError

log = logging.getLogger("gateway.cache")
T = TypeVar("T")
V = TypeVar("V")

REDIS_ERRORS: tuple[type[Exception], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
    AttributeError,
)
"""What a call to Redis raises when Redis (or a Redis Cluster) is in trouble: down, slow,
failing over. On a cluster: ``ClusterDownError``, ``TryAgainError`` and ``MovedError`` past
its redirects are ``RedisError``s; ``SlotNotCoveredError`` and a node list nobody answers are
``RedisClusterException``s, which are not; and redis-py's asyncio cluster client raises
``AttributeError`` for a command on a connection that a concurrent reload of the slot map
closed under it (``'NoneType' object has no attribute 'writelines'``)."""


class KeyProblem(Exception):
    """What one key holds cannot be used: the breaker lets it through to the caller, who
    deals with that key (Redis itself is fine)."""


class MemoryStore(Generic[V]):
    """A least-recently-used map bounded in entries and bytes, for a gateway without Redis:
    each value is kept with its size (what it would take encoded)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[str, tuple[float, V, int]] = OrderedDict()

    async def get(self, key: str) -> V | None:
        item = self._entries.get(key)
        if item is None:
            return None
        expires, value, _ = item
        if expires <= _now():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: V, size: int, ttl_s: float) -> None:
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (_now() + ttl_s, value, size)
        self.size += size
        while len(self._entries) > self.max_entries or self.size > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, _, size = self._entries.pop(key)
        self.size -= size

    async def aclose(self) -> None:
        self._entries.clear()
        self.size = 0


class Breaker:
    """Open for ``open_s`` after a failure: callers skip Redis instead of waiting on it.

    Logs once when Redis fails and once when it answers again, naming the ``activity``.
    """

    def __init__(
        self,
        open_s: float,
        on_failure: Callable[[], object] = lambda: None,
        activity: str = "caching",
    ) -> None:
        self.open_s = open_s
        self.on_failure = on_failure
        self.activity = activity
        self.failing = False
        self._open_until = 0.0

    def allows(self) -> bool:
        return _now() >= self._open_until

    def failed(self, error: Exception) -> None:
        self.on_failure()
        self._open_until = _now() + self.open_s
        if not self.failing:
            self.failing = True
            log.warning(
                "redis unavailable (%s); %s paused for %gs at a time",
                type(error).__name__,
                self.activity,
                self.open_s,
            )

    def succeeded(self) -> None:
        if self.failing:
            self.failing = False
            log.warning("redis answers again; %s resumed", self.activity)

    async def call(
        self, operation: Callable[[], Awaitable[Any]], default: T, gated: bool = True
    ) -> Any | T:
        """``operation()``, or ``default`` when the breaker is open or Redis fails; not
        ``gated``: tried even while open (by a caller that rides out outages itself).

        Any exception but a key's problem reads as Redis trouble, not just ``REDIS_ERRORS``:
        what fails here is a cache, a shared flight or a count, never worth failing the
        request for, and a client library under load can raise what it was never meant to.
        An unexpected one is logged with its traceback (it may be a bug of ours)."""
        if gated and not self.allows():
            return default
        try:
            result = await operation()
        except KeyProblem:
            raise
        except ResponseError as error:
            if is_key_problem(error):
                raise  # one key's problem, not Redis's: the caller deals with that key
            self.failed(error)
            return default
        except REDIS_ERRORS as error:
            self.failed(error)
            return default
        except Exception as error:
            log.warning("unexpected error from a redis call", exc_info=error)
            self.failed(error)
            return default
        self.succeeded()
        return result


def is_key_problem(error: ResponseError) -> bool:
    """Whether Redis refused a command for what one key holds (not for its own state)."""
    return str(error).startswith(("WRONGTYPE", "ERR value is not", "ERR The ID specified"))


def _now() -> float:
    return asyncio.get_running_loop().time()
