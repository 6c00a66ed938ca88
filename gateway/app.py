"""``create_app(settings)``: the ASGI application, with everything built from settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from gateway.http import errors, openai, openapi, ops, qa, resume
from gateway.http.auth import FrontDoor
from gateway.http.cors import CORS
from gateway.http.dispatch import Dispatch
from gateway.http.guard import Guards
from gateway.http.observe import Metrics, Observed
from gateway.runtime import running
from gateway.settings import Settings


def create_app(settings: Settings) -> FastAPI:
    """The gateway as an ASGI app; backends and the emulator start with its lifespan.

    ``app.state`` holds the ``runtime`` (once started), the ``metrics`` and the ``guards``
    of the open streams (which shutdown drains).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running(
            settings,
            metrics.redis_errors.inc,
            metrics.redis_bad_values.inc,
            metrics.limits_unchecked.inc,
        ) as runtime:
            app.state.runtime = runtime
            yield

    app = FastAPIOffline(  # /docs with its assets served here: it works without a network
        title="Vertex streaming gateway",
        summary="One streaming /qa endpoint in front of Gemini and Vertex AI Agent Builder.",
        lifespan=lifespan,
        redoc_url=None,
        favicon_url="/favicon.ico",
    )
    app.state.metrics = metrics = Metrics()
    app.state.guards = Guards()
    routers = (qa.router, openai.router, ops.router)
    for router in routers:
        app.include_router(router)
    app.add_middleware(Dispatch, routes=[route for router in routers for route in router.routes])
    app.add_middleware(FrontDoor, settings=settings.auth)
    app.add_middleware(CORS, settings=settings.cors)
    tenant = settings.cache.tenant
    app.add_middleware(Observed, metrics=metrics, log_queries=settings.log_queries, tenant=tenant)
    paths = {"/qa": qa.OPENAPI_PATH, "/v1/chat/completions": openai.OPENAPI_PATH}
    paths["/qa/streams/{stream_id}"] = resume.OPENAPI_PATH
    openapi.document(app, paths, qa.OPENAPI_SCHEMAS | openai.OPENAPI_SCHEMAS)
    errors.install(app)
    return app
