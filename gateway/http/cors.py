"""Browsers on other origins: ``[cors]``, answered by Starlette's CORS middleware.

Off by default: only pages served by the gateway itself (the playground) may call it. A
request that carries an ``Origin`` which is neither allowed nor the gateway's own is refused
with 403 ``origin_not_allowed`` before it reaches a route, preflight or not, so a page on
a foreign origin cannot make a visitor's browser spend upstream calls it will never read.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.http.errors import HTTPProblem

EXPOSED = ["X-Request-ID", "X-Cache", "X-Stream-ID", "Retry-After"]
EXPOSED += ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"]
"""Response headers a page on another origin may read."""
_ORIGIN = re.compile(r"^https?://(\*\.)?[A-Za-z0-9.-]+(:\d{1,5})?$")


class CORSSettings(BaseModel):
    """``[cors]``: which other origins' pages may call the gateway."""

    model_config = ConfigDict(extra="forbid")

    allow_origins: list[str] = Field(default_factory=list)
    """Exact origins (``https://app.example.com``), or with ``*.`` standing for any one DNS
    label (``https://*.vercel.app``); ``*`` alone allows every origin."""
    allow_headers: list[str] = Field(
        default_factory=lambda: ["Authorization", "X-API-Key", "X-Request-ID", "Last-Event-ID"]
    )
    """Request headers beyond the safelisted ones (``Content-Type: application/json`` is
    always allowed)."""
    allow_credentials: bool = False
    """Let pages send cookies; not needed for keys or tokens sent as headers."""
    max_age: int = Field(600, ge=0)
    """How long a browser may keep a preflight answer, in seconds."""

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port], no path, "
                    "a '*.' only before the host"
                )
        return origins

    @model_validator(mode="after")
    def _credentials(self) -> CORSSettings:
        if "*" in self.allow_origins and self.allow_credentials:
            raise ValueError("allow_origins '*' cannot go with allow_credentials = true")
        return self

    def pattern(self) -> str | None:
        """The wildcard origins as one regular expression (None if there are none)."""
        wild = [o for o in self.allow_origins if "*." in o]
        if not wild:
            return None
        one_label = r"[A-Za-z0-9-]+\."
        return "|".join(re.escape(o).replace(r"\*\.", one_label) for o in wild)


class CORS(CORSMiddleware):
    """Starlette's CORS middleware, refusing requests from origins it does not allow."""

    def __init__(self, app: ASGIApp, settings: CORSSettings) -> None:
        super().__init__(
            app,
            allow_origins=[o for o in settings.allow_origins if "*." not in o],
            allow_origin_regex=settings.pattern(),
            allow_methods=["*"],
            allow_headers=[*settings.allow_headers, "Content-Type"],
            allow_credentials=settings.allow_credentials,
            expose_headers=EXPOSED,
            max_age=settings.max_age,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not any(k == b"origin" for k, _ in scope["headers"]):
            await self.app(scope, receive, send)  # not from a browser page: nothing to do
            return
        headers = Headers(scope=scope)
        origin = headers["origin"]
        if not self._admits(origin, headers):
            problem = HTTPProblem(
                403, "origin_not_allowed", f"pages on {origin} may not call this gateway"
            )
            await problem.response()(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _admits(self, origin: str, headers: Headers) -> bool:
        """Allowed by ``[cors]``, or the gateway's own origin: the host (and port) the page
        asked for, as a proxy forwarding it says (Firebase Hosting, a load balancer). A page
        on another origin cannot forge ``X-Forwarded-Host``: that header needs a preflight."""
        host = origin.partition("://")[2]
        own = host in (headers.get("host"), headers.get("x-forwarded-host"))
        return own or self.is_allowed_origin(origin)
