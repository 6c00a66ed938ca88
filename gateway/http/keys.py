"""API keys: ``[[auth.keys]]`` holds each key's SHA-256 hash, never the key itself.

A key is looked up by hashing what the client sent and comparing it, in constant time, with
every configured hash (no early exit, so timing tells nothing of which or how much matched).
``qa-gateway keys new`` makes a key and its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints

from gateway.upstream.limits import LimitOverrides

KeyHash = Annotated[
    str, StringConstraints(pattern=r"^[0-9a-f]{64}$", strip_whitespace=True, to_lower=True)
]
"""The SHA-256 of a key, as 64 hex digits (what ``qa-gateway keys new`` prints)."""


class KeySettings(LimitOverrides):
    """``[[auth.keys]]``: one client's key (by hash), its tenant, backends and limits."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    """Who the key belongs to: the principal in logs (never the key)."""
    hash: KeyHash
    tenant: str = Field("default", min_length=1)
    """Whose answers (cache entries, streams) this key shares."""
    backends: list[str] | None = None
    """The backends this key may ask (all if unset)."""


def hash_key(key: str) -> str:
    """The hash to configure for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random key (256 bits)."""
    return "qa_" + secrets.token_urlsafe(32)


def matching(key: str, digests: Iterable[bytes]) -> int | None:
    """The index of the SHA-256 of ``key`` among ``digests`` (``bytes.fromhex(hash)``),
    compared with every one in constant time."""
    digest = hashlib.sha256(key.encode()).digest()
    found = None
    for index, known in enumerate(digests):
        if hmac.compare_digest(digest, known) and found is None:
            found = index
    return found


def key_table(name: str, tenant: str, key_hash: str) -> str:
    """The ``[[auth.keys]]`` table to paste into the config for a new key."""
    quoted = json.dumps  # a JSON string is a TOML basic string
    fields = {"name": name, "hash": key_hash, "tenant": tenant}
    return "[[auth.keys]]\n" + "".join(f"{k} = {quoted(v)}\n" for k, v in fields.items())
