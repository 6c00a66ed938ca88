"""The front door: what a request must be, and who sends it, before any route sees it.

``FrontDoor`` wraps the app. A ``POST`` whose body is not ``application/json`` is 415
``unsupported_media_type`` (which also makes browsers preflight every cross-origin POST).
Then, with ``[auth]`` configured, the request's credentials: an API key (``Authorization:
Bearer KEY`` or ``X-API-Key``) or a JWT (``Authorization: Bearer TOKEN``). None: 401 with
``WWW-Authenticate: Bearer`` when ``required``; bad or expired: 401 ``invalid_credentials``.
The principal goes in ``scope["state"]["principal"]`` (read by ``pipeline.principal_of``),
its limits in ``scope["state"]["limits"]`` and the backends it may use in
``scope["state"]["backends"]`` (``check_backend``: 403 ``backend_forbidden``).

Probes and the playground page stay open; ``/metrics`` and ``/backends`` take an admin key
when ``admin_hashes`` is set.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging

from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.http.errors import HTTPProblem
from gateway.http.keys import KeyHash, KeySettings, matching
from gateway.http.tokens import InvalidToken, JWTSettings, KeySetUnavailable, TokenVerifier
from gateway.upstream.base import Principal
from gateway.upstream.limits import LimitOverrides

log = logging.getLogger("gateway")
OPEN = frozenset({"/", "/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"})
"""Paths anyone may reach: probes, the playground page, the API documentation."""
ADMIN = frozenset({"/metrics", "/backends"})
"""Paths behind an admin key when ``admin_hashes`` is set (open otherwise)."""


class AuthSettings(BaseModel):
    """``[auth]``: API keys, a token issuer, or both; nothing configured: no authentication."""

    model_config = ConfigDict(extra="forbid")

    keys: list[KeySettings] = Field(default_factory=list)
    jwt: JWTSettings | None = None
    required: bool = True
    """With keys or a token issuer configured, refuse requests without credentials; false:
    answer them as the anonymous principal (of ``cache.tenant``)."""
    admin_hashes: list[KeyHash] = Field(default_factory=list)
    """Hashes of the keys that may read ``/metrics`` and ``/backends``."""

    @property
    def configured(self) -> bool:
        return bool(self.keys) or self.jwt is not None

    @model_validator(mode="after")
    def _distinct(self) -> AuthSettings:
        names = [key.name for key in self.keys]
        hashes = [key.hash for key in self.keys]
        if len(set(names)) < len(names) or len(set(hashes)) < len(hashes):
            raise ValueError("auth.keys: two keys have the same name or the same hash")
        return self

    def check_backends(self, configured: set[str]) -> None:
        """Refuse a key that names a backend that is not configured."""
        for key in self.keys:
            unknown = set(key.backends or ()) - configured
            if unknown:
                raise ValueError(f"auth.keys {key.name!r}: no backend {sorted(unknown)}")


class FrontDoor:
    """ASGI middleware: the content type of POSTs, then authentication (see the module)."""

    def __init__(self, app: ASGIApp, settings: AuthSettings) -> None:
        self.app = app
        self.settings = settings
        self.digests = [bytes.fromhex(key.hash) for key in settings.keys]
        self.admins = [bytes.fromhex(admin) for admin in settings.admin_hashes]
        self.grants = [_grant(key) for key in settings.keys]
        self.tokens = TokenVerifier(settings.jwt) if settings.jwt is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            if scope["method"] == "POST":
                _require_json(headers)
            await self._admit(scope, headers)
        except HTTPProblem as problem:
            await problem.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, headers: Headers) -> None:
        path: str = scope["path"]
        if path in OPEN:
            return
        if path in ADMIN:
            if self.settings.admin_hashes:
                self._admin(_credential(headers))
            return
        if not self.settings.configured:
            return
        credential = _credential(headers)
        if credential is None:
            if self.settings.required:
                raise _missing("credentials required")
            return
        state = scope.setdefault("state", {})
        index = matching(credential, self.digests)
        if index is not None:
            state["principal"], state["limits"], state["backends"] = self.grants[index]
            return
        if self.tokens is None or credential.count(".") != 2:
            raise _invalid("the key is not valid")
        try:
            state["principal"] = await self.tokens.verify(credential)
        except InvalidToken as exc:
            raise _invalid(str(exc)) from None
        except KeySetUnavailable as exc:
            retry = {"Retry-After": "5"}
            raise HTTPProblem(503, "auth_unavailable", str(exc), headers=retry) from None
        state["limits"] = state["backends"] = None

    def _admin(self, credential: str | None) -> None:
        if credential is None:
            raise _missing("an admin key is required")
        if matching(credential, self.admins) is None:
            raise _invalid("not an admin key")


def allowed_backends(request: Request) -> frozenset[str] | None:
    """The backends the request's key may use (None: all)."""
    allowed: frozenset[str] | None = request.scope.get("state", {}).get("backends")
    return allowed


def check_backend(request: Request, name: str) -> None:
    """403 ``backend_forbidden`` if the request's key may not use backend ``name``."""
    allowed = allowed_backends(request)
    if allowed is not None and name not in allowed:
        raise HTTPProblem(403, "backend_forbidden", f"this key may not use backend {name!r}")


def warn_if_open(settings: AuthSettings, host: str) -> None:
    """Log one warning when serving beyond this machine to anyone without credentials (no
    ``[auth]``, or ``required = false``)."""
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):  # a host name
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if not loopback and not (settings.configured and settings.required):
        log.warning(
            "serving on %s without authentication: anyone who reaches it can spend the "
            "backends' quota; configure [auth] (see 'Putting it on the internet')",
            host,
        )


def _grant(key: KeySettings) -> tuple[Principal, LimitOverrides, frozenset[str] | None]:
    """What a key grants: its principal, its limits, the backends it may use."""
    limits = key.model_dump(include=set(LimitOverrides.model_fields))
    backends = None if key.backends is None else frozenset(key.backends)
    return Principal(key.name, key.tenant), LimitOverrides.model_validate(limits), backends


def _require_json(headers: Headers) -> None:
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPProblem(
            415, "unsupported_media_type", "the body must be JSON (Content-Type: application/json)"
        )


def _credential(headers: Headers) -> str | None:
    """The key or token sent (``X-API-Key``, else ``Authorization: Bearer``), if any."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    authorization = headers.get("authorization")
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise _invalid("Authorization must be 'Bearer KEY_OR_TOKEN'")
    return value.strip()


def _missing(message: str) -> HTTPProblem:
    return HTTPProblem(401, "unauthenticated", message, headers={"WWW-Authenticate": "Bearer"})


def _invalid(message: str) -> HTTPProblem:
    challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    return HTTPProblem(401, "invalid_credentials", message, headers=challenge)
