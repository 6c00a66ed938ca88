"""The policies the wrappers take, as config models: ``settings`` composes them per backend
(``[backends.NAME]``, ``[backends.NAME.retry]``) and for the instance (``[cache]``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RetryPolicy(BaseModel):
    """``[backends.NAME.retry]``: exponential backoff with jitter."""

    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(3, ge=1)
    """Attempts in all, the first included."""
    initial_s: float = Field(0.5, ge=0)
    max_s: float = Field(8.0, ge=0)
    multiplier: float = Field(2.0, ge=1)
    budget_s: float = Field(30.0, gt=0)
    """No retry starts later than this after the request began."""
    first_event_s: float = Field(30.0, gt=0)
    """Per attempt: time allowed for the first event before the attempt counts as failed."""


class CacheSettings(BaseModel):
    """``[cache]``: where and how answers are cached (Redis itself: ``redis_url``)."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = "qa:"
    """Every Redis key starts with this."""
    tenant: str = "default"
    """Namespace of this gateway's entries; answers never cross tenants."""
    memory_max_entries: int = Field(10_000, gt=0)
    memory_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    connect_timeout_s: float = Field(0.5, gt=0)
    command_timeout_s: float = Field(0.1, gt=0)
    breaker_s: float = Field(5.0, gt=0)
    """After a Redis failure, skip Redis for this long."""
    lock_ttl_s: float = Field(10.0, gt=0)
    """A flight's lock outlives a crashed instance by at most this."""


class BackendCachePolicy(BaseModel):
    """Per backend: ``cache = false`` turns caching off; the rest tunes it."""

    model_config = ConfigDict(extra="forbid")

    cache: bool = True
    cache_ttl_s: float = Field(3600.0, gt=0)
    cache_max_entry_bytes: int = Field(256 * 1024, gt=0)
    cache_skipped: bool = False
    """Also store answers the upstream skipped (``finish_reason: "skipped"``)."""
