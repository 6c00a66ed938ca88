"""``GET /backends``: the configured backends, as clients may see them (never a secret)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.runtime import Runtime

router = APIRouter()


def configured(runtime: Runtime) -> list[dict[str, Any]]:
    """Name, type, model and whether it is emulated, for each backend in config order.

    Endpoints, projects and credentials stay out: they say where and as whom the gateway
    calls Google, which no client needs.
    """
    return [
        {
            "name": name,
            "type": runtime.settings.backends[name].type,
            "model": backend.model,
            "emulated": backend.emulated,
        }
        for name, backend in runtime.backends.items()
    ]


@router.get("/backends")
async def backends(request: Request) -> dict[str, Any]:
    """The backends `/qa` can use (`backend` in its body), and the one used by default."""
    runtime: Runtime = request.app.state.runtime
    return {"default": runtime.settings.default_backend, "backends": configured(runtime)}
