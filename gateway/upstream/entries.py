"""Cache entries: the key of a question, a complete answer's stored form, and how long and
how large a backend's entries may be (``BackendCachePolicy``).

A key hashes the backend's identity (its name and every setting that shapes answers), the
normalized query, the tenant, the history and what the request sets (generation settings,
system instructions). An entry is the answer's event sequence, with
its original batch boundaries lost but every event kept, as ``{"v": SCHEMA, "events"}``.
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
from gateway.events import event_body, event_from_body
from gateway.upstream.base import Answer
from gateway.upstream.stores import Store

SCHEMA = 1
"""Bumped when stored entries change shape: old entries then read as misses."""


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


def encode_entry(events: Sequence[Event]) -> bytes:
    """Stored form of a complete answer. The session id is left out: it is the asker's own."""
    bodies = []
    for event in events:
        body = event_body(event)
        if isinstance(event, Done):
            body.pop("session_id", None)
        bodies.append([event.type, body])
    return orjson.dumps({"v": SCHEMA, "events": bodies})


def without_session(answer: Answer) -> Answer:
    """``answer`` as an asker who did not start it sees it (a coalesced one): no session id on
    its ``done``, as in a replay, so no two askers are handed the same session."""

    async def rest() -> AsyncGenerator[Sequence[Event], None]:
        async with aclosing(answer.rest) as batches:
            async for batch in batches:
                yield [_unowned(event) for event in batch]

    return Answer(answer.backend, _unowned(answer.first), rest(), answer.cache, answer.aclose)


def _unowned(event: Event) -> Event:
    return replace(event, session_id=None) if isinstance(event, Done) else event


def decode_entry(value: bytes) -> list[Event] | None:
    """The events of a stored answer; None for anything corrupt or of another schema."""
    try:
        entry = orjson.loads(value)
        if entry["v"] != SCHEMA:
            return None
        events = [event_from_body(kind, body) for kind, body in entry["events"]]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return events if events and isinstance(events[-1], Done) else None


async def lookup(store: Store, key: str) -> list[Event] | None:
    """The stored answer under ``key``; None if there is none (or none usable)."""
    value = await store.get(key)
    return decode_entry(value) if value is not None else None


def replay(backend: Backend, events: list[Event]) -> Answer:
    """A stored answer as a started one (``HIT``): the rest comes in one batch."""

    async def rest() -> AsyncGenerator[Sequence[Event], None]:
        if len(events) > 1:
            yield events[1:]

    return Answer(backend, events[0], rest(), "HIT")
