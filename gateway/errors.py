"""Errors as the client sees them: a status and ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import math

import orjson
from starlette.responses import Response

from backends.base import BackendError

_UPSTREAM_STATUS = {
    "invalid_argument": 400,
    "failed_precondition": 400,
    "out_of_range": 400,
    "session_not_found": 404,
    "resource_exhausted": 429,
    "unavailable": 503,
    "deadline_exceeded": 504,
}


class HTTPProblem(Exception):
    """A request the gateway refuses, with the status and code to say so."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retryable: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        self.headers = headers or {}

    @classmethod
    def from_backend(cls, error: BackendError) -> HTTPProblem:
        """An upstream failure before the first event: 429, 503, 504, 400 or 502."""
        status = _UPSTREAM_STATUS.get(error.code, 502)
        headers = {}
        if status in (429, 503):
            headers["Retry-After"] = str(max(1, math.ceil(error.retry_after or 1)))
        return cls(status, error.code, error.message, retryable=error.retryable, headers=headers)

    def response(self) -> Response:
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.retryable is not None:
            body["retryable"] = self.retryable
        return Response(
            orjson.dumps({"error": body}),
            status_code=self.status,
            headers=self.headers,
            media_type="application/json",
        )
