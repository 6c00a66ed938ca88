"""Cache entries: the key of a question, and how long and how large a backend's entries may
be (``BackendCachePolicy``).

A key hashes the backend's identity (its name and every setting that shapes answers), the
normalized query, the tenant, the history and what the request sets (generation settings,
system instructions). It points at the question's answer stream
(``gateway.upstream.streams``): a cached answer is a finished stream kept for the cache TTL.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from backends.base import Backend, Done, Event, Turn
from gateway.upstream.base import Answer

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
    prefix: str,
    identity: bytes,
    query: str,
    tenant: str,
    history: Sequence[Turn] = (),
    parameters: dict[str, Any] | None = None,
) -> str:
    """A versioned key over everything that changes the answer: ``parameters`` are what the
    request sets (``QARequest.parameters``)."""
    digest = hashlib.sha256(identity)
    asked: list[object] = [" ".join(query.split()), tenant]
    if history or parameters:  # only then: keys of plain questions stay what they were
        asked.append([[turn.role, turn.text] for turn in history])
    if parameters:
        asked.append(parameters)
    digest.update(orjson.dumps(asked, option=orjson.OPT_SORT_KEYS))
    return f"{prefix}v{SCHEMA}:{digest.hexdigest()}"


def without_session(answer: Answer) -> Answer:
    """``answer`` as an asker who did not start it sees it (a coalesced one): no session id on
    its ``done``, as in a replay, so no two askers are handed the same session."""

    async def rest() -> AsyncGenerator[Sequence[Event], None]:
        async with aclosing(answer.rest) as batches:
            async for batch in batches:
                yield [unowned(event) for event in batch]

    first = unowned(answer.first)
    return Answer(answer.backend, first, rest(), answer.cache, answer.aclose, answer.stream_id)


def unowned(event: Event) -> Event:
    """``event`` without the asker's own session id."""
    return replace(event, session_id=None) if isinstance(event, Done) else event
