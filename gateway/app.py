"""``create_app(settings)``: the ASGI application, with everything built from settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway import catalog, openai_api, playground, qa
from gateway.errors import HTTPProblem
from gateway.observe import Metrics, Observed
from gateway.runtime import Runtime, running
from gateway.settings import Settings

log = logging.getLogger("gateway")


def create_app(settings: Settings) -> FastAPI:
    """The gateway as an ASGI app; backends and the emulator start with its lifespan."""

    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(settings, metrics) as runtime:
            app.state.runtime = runtime
            yield

    app = FastAPI(
        title="Vertex streaming gateway",
        summary="One streaming /qa endpoint in front of Gemini and Vertex AI Agent Builder.",
        lifespan=lifespan,
    )
    app.include_router(qa.router)
    app.include_router(openai_api.router)
    app.include_router(catalog.router)
    app.include_router(playground.router)
    app.add_middleware(Observed, metrics=metrics, log_queries=settings.log_queries)
    openapi = app.openapi

    def openapi_with_answering_routes() -> dict[str, Any]:  # plain ASGI routes have none
        if app.openapi_schema is None:
            document = openapi()
            document["paths"]["/qa"] = qa.OPENAPI_PATH
            document["paths"]["/v1/chat/completions"] = openai_api.OPENAPI_PATH
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(qa.OPENAPI_SCHEMAS | openai_api.OPENAPI_SCHEMAS)
        return app.openapi_schema or {}

    app.openapi = openapi_with_answering_routes  # type: ignore[method-assign]

    @app.get("/metrics", include_in_schema=False)
    async def scrape() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        runtime: Runtime | None = getattr(request.app.state, "runtime", None)
        if runtime is None or runtime.guards.draining:
            return HTTPProblem(503, "not_ready", "the gateway is not serving").response()
        return Response(b'{"status":"ready"}', media_type="application/json")

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

    return app
