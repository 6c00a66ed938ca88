"""The routes around the answers: the playground page, ``/backends``, probes and metrics."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import HTMLResponse, Response

from gateway.http.errors import HTTPProblem
from gateway.http.guard import Guards
from gateway.http.observe import Metrics
from gateway.runtime import Runtime

router = APIRouter()


@cache
def _static(name: str) -> str:
    """A file of ``gateway/static``, read from the package once."""
    return (files("gateway") / "static" / name).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    """One static page that asks ``/qa`` and shows the answer stream."""
    return HTMLResponse(_static("playground.html"))


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    return Response(_static("favicon.svg"), media_type="image/svg+xml")


@router.get("/backends", response_model=None)
async def backends(request: Request) -> dict[str, Any]:
    """The backends `/qa` can use (`backend` in its body), and the one used by default."""
    runtime: Runtime = request.app.state.runtime
    return {"default": runtime.settings.default_backend, "backends": runtime.catalog()}


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", include_in_schema=False, response_model=None)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> Response:
    """200 while serving; 503 before start-up has finished and once draining."""
    guards: Guards = request.app.state.guards
    if getattr(request.app.state, "runtime", None) is None or guards.draining:
        return HTTPProblem(503, "not_ready", "the gateway is not serving").response()
    return Response(b'{"status":"ready"}', media_type="application/json")
