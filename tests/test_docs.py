"""``/docs`` renders with no network: every asset comes from the gateway (headless Chromium)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Request

from tests.browser import launched, skip_without_chromium

pytestmark = skip_without_chromium()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def test_docs_render_offline_with_the_qa_operation(gateway_url: str) -> None:
    elsewhere: list[str] = []

    def note(request: Request) -> None:
        if not request.url.startswith(gateway_url):
            elsewhere.append(request.url)

    async with launched() as browser:
        page = await browser.new_page()
        page.on("request", note)
        await page.route(  # nothing but the gateway answers: as without a network
            "**/*",
            lambda route: (
                route.continue_() if route.request.url.startswith(gateway_url) else route.abort()
            ),
        )
        await page.goto(f"{gateway_url}/docs")
        operation = page.locator("#operations-default-qa")
        await operation.wait_for(timeout=10_000)
        text = await operation.inner_text()
    assert "/qa" in text
    assert elsewhere == []


async def test_favicon_answers(http: httpx.AsyncClient, gateway_url: str) -> None:
    response = await http.get(f"{gateway_url}/favicon.ico")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/svg+xml"
