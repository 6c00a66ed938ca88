"""Limits shared by every instance through Redis: one script call per check, one per end.

The scripts read Redis's clock (``TIME``), so instances need not agree on the time. Every
key of one principal shares one hash tag (the same code runs on Redis Cluster) and expires:

- ``{prefix}limits:{who}:rpm``    string: GCRA's theoretical arrival time (µs); expires then
- ``{prefix}limits:{who}:open``   sorted set: ticket -> lease end (µs); renewed while open,
  so a crashed instance's slots expire after ``lease_s``
- ``{prefix}limits:{who}:tokens`` hash: ``day`` (UTC days since 1970), ``used``; expires at
  the end of that day
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from gateway.upstream.limits import LimitOverrides, State
from gateway.upstream.stores import Breaker, is_key_problem

log = logging.getLogger("gateway.limits")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function n(x) return string.format('%.0f', x) end
"""
# Mirrors ``limits.decide``: the budget, then the rate, then the open answers; counts only
# if all three admit.
_ADMIT = (
    _NOW
    + """
local rpm, most, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat, open, used = now, 0, 0
if rpm > 0 then tat = math.max(tonumber(redis.call('GET', KEYS[1])) or 0, now) end
if most > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', n(now))
  open = redis.call('ZCARD', KEYS[2])
end
if budget > 0 then
  local spent = redis.call('HMGET', KEYS[3], 'day', 'used')
  if tonumber(spent[1]) == math.floor(now / 86400000000) then used = tonumber(spent[2]) or 0 end
end
local refused = ''
if budget > 0 and used >= budget then refused = 'tokens_per_day'
elseif rpm > 0 and tat + 60000000 / rpm - now > 60000001 then refused = 'rpm'
elseif most > 0 and open >= most then refused = 'concurrent'
else
  if rpm > 0 then
    tat = tat + 60000000 / rpm
    redis.call('SET', KEYS[1], n(tat), 'PX', n(math.ceil((tat - now) / 1000)))
  end
  if most > 0 then
    open = open + 1
    redis.call('ZADD', KEYS[2], n(now + tonumber(ARGV[4])), ARGV[5])
    redis.call('PEXPIRE', KEYS[2], n(math.ceil(tonumber(ARGV[4]) / 1000)))
  end
end
return {refused, n(now), n(tat), open, used}
"""
)
_FINISH = (
    _NOW
    + """
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[1]) end
local tokens = tonumber(ARGV[2])
if tokens > 0 then
  local day = math.floor(now / 86400000000)
  if tonumber(redis.call('HGET', KEYS[2], 'day')) ~= day then
    redis.call('HSET', KEYS[2], 'day', day, 'used', 0)
  end
  redis.call('HINCRBY', KEYS[2], 'used', tokens)
  redis.call('PEXPIREAT', KEYS[2], n((day + 1) * 86400000))
end
"""
)
_RENEW = (
    _NOW
    + """
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', n(now + lease), ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], n(math.ceil(lease / 1000)))
"""
)


@dataclass(frozen=True, slots=True)
class LimitKeys:
    """The keys of one principal's counts, all under one hash tag."""

    rpm: str
    open: str
    tokens: str

    @classmethod
    def of(cls, prefix: str, who: str) -> LimitKeys:
        base = f"{prefix}limits:{{{who}}}"
        return cls(f"{base}:rpm", f"{base}:open", f"{base}:tokens")


class RedisLimiter:
    """Counts in Redis, behind a breaker; ``on_unchecked`` hears of every request whose
    limits could not be checked."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        breaker: Breaker,
        prefix: str,
        lease_s: float,
        on_unchecked: Callable[[], object] = lambda: None,
    ) -> None:
        self.redis = redis
        self.breaker = breaker
        self.prefix = prefix
        self.lease_s = lease_s
        self.on_unchecked = on_unchecked
        self._admit = redis.register_script(_ADMIT)
        self._finish = redis.register_script(_FINISH)
        self._held: dict[str, set[str]] = {}
        """The tickets holding a ``concurrent`` slot on this instance, per principal."""
        self._renewer: asyncio.Task[None] | None = None

    async def admit(self, who: str, limits: LimitOverrides, ticket: str) -> State | None:
        keys = LimitKeys.of(self.prefix, who)
        args = [limits.rpm or 0, limits.concurrent or 0, limits.tokens_per_day or 0]
        lease_us = int(self.lease_s * 1_000_000)
        found: Any = await self._call(
            lambda: self._admit([keys.rpm, keys.open, keys.tokens], [*args, lease_us, ticket])
        )
        if found is None:
            self.on_unchecked()
            return None
        refused, now, tat, open, used = found
        state = State(refused.decode(), int(now), float(tat), int(open), int(used))
        if not state.refused and limits.concurrent is not None:
            self._held.setdefault(who, set()).add(ticket)
            if self._renewer is None:
                self._renewer = asyncio.create_task(self._renew_leases())
        return state

    async def finish(self, who: str, limits: LimitOverrides, ticket: str, tokens: int) -> None:
        held = self._held.get(who, set())
        if ticket not in held and not tokens:
            return
        held.discard(ticket)
        if not held:
            self._held.pop(who, None)
        keys = LimitKeys.of(self.prefix, who)
        member = ticket if limits.concurrent is not None else ""
        await self._call(lambda: self._finish([keys.open, keys.tokens], [member, tokens]))

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer

    async def _renew_leases(self) -> None:
        """Every third of a lease, renew the slots this instance holds (one pipeline)."""
        lease_us = int(self.lease_s * 1_000_000)
        while True:
            await asyncio.sleep(self.lease_s / 3)
            if self._held:
                await self._call(lambda: self._renew_all(lease_us))

    async def _renew_all(self, lease_us: int) -> None:
        held = [(who, list(tickets)) for who, tickets in self._held.items()]
        async with self.redis.pipeline(transaction=False) as pipe:
            for who, tickets in held:
                key = LimitKeys.of(self.prefix, who).open
                # EVAL, not EVALSHA: a cluster's pipeline refuses EVALSHA (nor would it load
                # the script on a node that lacks it).
                pipe.eval(_RENEW, 1, key, lease_us, *tickets)
            await pipe.execute()

    async def _call(self, operation: Callable[[], Any]) -> Any:
        """``operation()``; None when Redis is unavailable, or refused the call for what a
        key holds (of the wrong type, or a value the script cannot use: that principal goes
        unchecked, the others do not)."""

        async def answered() -> Any:
            try:
                return await operation()
            except ResponseError as error:
                if not is_key_problem(error) and "@user_script" not in str(error):
                    raise  # Redis's own state (CLUSTERDOWN, TRYAGAIN, READONLY): the breaker's
                log.warning("redis refused a limits call: %s", error)
                return None

        return await self.breaker.call(answered, None)
