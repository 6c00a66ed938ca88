"""What the Google REST backends share: HTTP statuses and Google's error JSON as the error
tree, and bearer tokens from google-auth."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC
from typing import Any

import orjson

from backends.base import BackendError, error_for

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INTERNAL": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
"""gRPC status name -> the HTTP status Google's REST APIs answer it with."""
_CODE_OF_STATUS = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    409: "aborted",
    429: "resource_exhausted",
    499: "cancelled",
    501: "unimplemented",
    503: "unavailable",
    504: "deadline_exceeded",
}
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
REFRESH_MARGIN_S = 300.0
"""Refresh a token this long before it expires (or at half its life, if that is shorter)."""


def http_error(status: int, body: bytes) -> BackendError:
    """An HTTP error answer (Google's ``{"error": ...}`` JSON, or anything else) as an error."""
    try:
        error = orjson.loads(body)["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    return google_error(error, status)


def google_error(error: dict[str, Any], status: int | None = None) -> BackendError:
    """Google's error object (``code``, ``status``, ``message``, ``details``) as an error."""
    name = error.get("status")
    if isinstance(name, str) and name:
        code = name.lower()
    else:
        status = status or error.get("code") or 500
        code = _CODE_OF_STATUS.get(int(status), "internal" if int(status) >= 500 else "unknown")
    message = str(error.get("message") or code)
    return error_for(code, message, retry_after=_retry_delay(error.get("details")))


def _retry_delay(details: object) -> float | None:
    """The seconds a ``RetryInfo`` detail asks to wait (``"2s"``, ``"1.500s"``)."""
    if not isinstance(details, list):
        return None
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == RETRY_INFO:
            delay = str(detail.get("retryDelay", ""))
            try:
                return float(delay.removesuffix("s"))
            except ValueError:
                return None
    return None


class BearerTokens:
    """``Authorization`` (and ``x-goog-user-project``) headers from google-auth credentials.

    Application Default Credentials unless given. The token is refreshed in a thread (it is
    blocking I/O) before it expires, by one caller at a time while the others wait for it.
    """

    def __init__(self, credentials: Any = None, quota_project: str | None = None) -> None:
        self._credentials = credentials
        self._quota_project = quota_project
        self._headers: dict[str, str] = {}
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    async def headers(self) -> dict[str, str]:
        if time.time() >= self._refresh_at:
            async with self._lock:
                if time.time() >= self._refresh_at:
                    await asyncio.to_thread(self._refresh)
        return self._headers

    def _refresh(self) -> None:
        import google.auth
        from google.auth.transport.requests import Request

        if self._credentials is None:
            self._credentials, _ = google.auth.default(scopes=SCOPES)
        credentials = self._credentials
        credentials.refresh(Request())
        headers = {"Authorization": f"Bearer {credentials.token}"}
        if self._quota_project:
            headers["x-goog-user-project"] = self._quota_project
        self._headers = headers
        expiry = credentials.expiry  # naive UTC, or None for a token that does not expire
        if expiry is None:
            self._refresh_at = float("inf")
        else:
            now = time.time()
            lifetime = expiry.replace(tzinfo=UTC).timestamp() - now
            self._refresh_at = now + max(lifetime - REFRESH_MARGIN_S, lifetime / 2)
