"""What happened to one request, noted by the layers it passed through, reported once at the end."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Trace:
    """One request's record: the route, the wrappers and the stream fill it in."""

    request_id: str = ""
    started: float = field(default_factory=time.perf_counter)
    backend: str | None = None
    """The backend asked for."""
    answered_by: str | None = None
    """The backend that answered (differs after a fallback)."""
    status: int = 0
    cache: str | None = None
    attempts: int = 0
    """Upstream calls made for it, fallbacks included."""
    retries: int = 0
    upstream_errors: list[str] = field(default_factory=list)
    coalesced: bool = False
    first_event_s: float | None = None
    outcome: str | None = None
    """How a started stream ended: ``done``, an error code, or ``disconnected``."""
    query: str | None = None
    user: str | None = None
    """The end-user id an OpenAI client sent (``user``)."""
