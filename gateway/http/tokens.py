"""OIDC / JWT bearer tokens (Firebase Auth, Identity Platform, Auth0, Google ID tokens).

PyJWT checks the signature against the issuer's published key set (JWKS) and the ``exp``,
``nbf``, ``iss`` and ``aud`` claims. The key set is cached for ``jwks_cache_s``; a token
signed with a key id not in it makes one refetch (a key rotation), at most once every
``refetch_s``, so a stream of made-up key ids cannot make the gateway hammer the issuer.
Only asymmetric algorithms are accepted: ``none`` and HMAC (``HS*``) are refused in config,
and a token whose header names any algorithm not configured is refused before any lookup.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.upstream.base import Principal

ASYMMETRIC = tuple(f"{family}{bits}" for family in ("RS", "PS", "ES") for bits in (256, 384, 512))
ASYMMETRIC += ("EdDSA",)


class JWTSettings(BaseModel):
    """``[auth.jwt]``: who issues the tokens the gateway accepts, and for whom."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(min_length=1)
    """The ``iss`` a token must carry, e.g. ``https://securetoken.google.com/PROJECT``."""
    audience: str | list[str]
    """The ``aud`` a token must carry (one of them), e.g. the Firebase project id."""
    jwks_url: str = Field(pattern=r"^https?://")
    """Where the issuer publishes its public keys."""
    algorithms: list[str] = Field(default_factory=lambda: ["RS256"], min_length=1)
    tenant_claim: str | None = None
    """The claim naming the tenant (dots reach into objects: ``firebase.tenant``); unset:
    every token's principal is in ``tenant``."""
    tenant: str = Field("default", min_length=1)
    leeway_s: float = Field(30.0, ge=0)
    """Clock skew allowed on ``exp`` and ``nbf``."""
    jwks_cache_s: float = Field(300.0, gt=0)
    """How long the key set is used before it is fetched again."""
    refetch_s: float = Field(30.0, ge=0)
    """Least time between two fetches made for an unknown key id."""
    jwks_timeout_s: float = Field(5.0, gt=0)

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, algorithms: list[str]) -> list[str]:
        for name in algorithms:
            if name not in ASYMMETRIC:
                raise ValueError(
                    f"{name!r} is refused: only asymmetric algorithms ({', '.join(ASYMMETRIC)})"
                )
        return algorithms


class InvalidToken(Exception):
    """The token is not one the gateway accepts; the message says why (no token in it)."""


class KeySetUnavailable(Exception):
    """The issuer's key set cannot be fetched."""


class TokenVerifier:
    """Verifies tokens against ``settings``; one per app (it holds the cached key set)."""

    def __init__(self, settings: JWTSettings) -> None:
        import jwt  # here: PyJWT and cryptography cost start-up time where no JWT is taken

        self.settings = settings
        self._keys = jwt.PyJWKClient(
            settings.jwks_url,
            lifespan=settings.jwks_cache_s,
            cooldown_duration=settings.refetch_s,
            timeout=settings.jwks_timeout_s,
        )

    async def verify(self, token: str) -> Principal:
        """The principal (``sub``, tenant) of a valid token; ``InvalidToken`` otherwise."""
        import jwt

        knobs = self.settings
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in knobs.algorithms:
                raise InvalidToken(f"the token's algorithm is not one of {knobs.algorithms}")
            kid = header.get("kid")
            if not isinstance(kid, str):
                raise InvalidToken("the token names no key id (kid)")
            # The key set is fetched with blocking I/O: off the event loop.
            key = await asyncio.to_thread(self._keys.get_signing_key, kid)
            claims = jwt.decode(
                token,
                key,
                algorithms=knobs.algorithms,
                audience=knobs.audience,
                issuer=knobs.issuer,
                leeway=knobs.leeway_s,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWKClientConnectionError:
            raise KeySetUnavailable("the token issuer's keys cannot be fetched") from None
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"the token is not valid: {exc}") from None
        return Principal(str(claims["sub"]), self._tenant(claims))

    def _tenant(self, claims: dict[str, Any]) -> str:
        claim = self.settings.tenant_claim
        if claim is None:
            return self.settings.tenant
        value: Any = claims
        for part in claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, str) or not value:
            raise InvalidToken(f"the token has no {claim} claim")
        return value
