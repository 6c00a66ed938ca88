"""Errors as the client sees them: a status and ``{"error": {"code", "message"}}``.

Every refusal is an ``HTTPProblem``; ``install`` makes the app answer every other error
(unknown route, wrong method, a crash) in the same shape, never with a stack trace.
"""

from __future__ import annotations

import logging
import math

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from backends.base import BackendError

log = logging.getLogger("gateway")
_UPSTREAM_STATUS = {
    "invalid_argument": 400,
    "unsupported_parameter": 400,
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
        param: str | None = None,
    ) -> None:
        """``param``: the request field at fault, where it helps (OpenAI clients read it)."""
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retryable = retryable
        self.headers = headers or {}
        self.param = param

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
        if self.param is not None:
            body["param"] = self.param
        return Response(
            orjson.dumps({"error": body}),
            status_code=self.status,
            headers=self.headers,
            media_type="application/json",
        )


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as an ``HTTPProblem``."""

    @app.exception_handler(HTTPProblem)
    async def problem(request: Request, exc: HTTPProblem) -> Response:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        return HTTPProblem(exc.status_code, code, str(exc.detail), headers=headers).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return HTTPProblem(422, "invalid_request", f"{where}: {first['msg']}").response()

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return HTTPProblem(500, "internal", "internal error").response()
