"""Cache entries: the key of a question, and how long and how large a backend's entries may
be (``BackendCachePolicy``).

A key hashes the backend's identity (its name and every setting that shapes answers), the
normalized query, the tenant and the history. It points at the question's answer stream
(``gateway.upstream.streams``): a cached answer is a finished stream kept for the cache TTL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import orjson
from pydantic import BaseModel, ConfigDict, Field

from backends.base import Backend, Turn

SCHEMA = 1
"""Bumped when stored answers change shape: old keys then read as misses."""


class BackendCachePolicy(BaseModel):
    """Per backend: ``cache = false`` turns caching off; the rest tunes it."""

    model_config = ConfigDict(extra="forbid")

    cache: bool = True
    cache_ttl_s: float = Field(3600.0, gt=0)
    """How long a stored answer is replayed."""
    cache_max_entry_bytes: int = Field(256 * 1024, gt=0)
    """Longer answers are not stored."""
    cache_skipped: bool = False
    """Also store answers the upstream skipped (``finish_reason: "skipped"``)."""


def identity_of(backend: Backend) -> bytes:
    """The backend's part of its cache keys: its name and every setting that shapes answers."""
    return orjson.dumps([backend.name, backend.cache_identity()], option=orjson.OPT_SORT_KEYS)


def cache_key(
    prefix: str, identity: bytes, query: str, tenant: str, history: Sequence[Turn] = ()
) -> str:
    """A versioned key over everything that changes the answer."""
    digest = hashlib.sha256(identity)
    asked: list[object] = [" ".join(query.split()), tenant]
    if history:  # only then: keys of questions without one stay what they were
        asked.append([[turn.role, turn.text] for turn in history])
    digest.update(orjson.dumps(asked))
    return f"{prefix}v{SCHEMA}:{digest.hexdigest()}"
