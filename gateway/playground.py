"""``GET /``: the playground, one static page that asks ``/qa`` and shows the answer stream."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import HTMLResponse

router = APIRouter()


@cache
def page() -> str:
    """The page's HTML, read from the package once."""
    return (files("gateway") / "static" / "playground.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    return HTMLResponse(page())
