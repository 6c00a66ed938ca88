"""The playground on a gateway that takes keys: the key typed in the page is sent, and kept
in the page only."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, expect

from backends.emulator import Emulator
from backends.emulator.gemini import answer_chunks
from gateway.http.keys import hash_key
from gateway.settings import Settings
from tests.browser import launched, skip_without_chromium
from tests.support import both, gateway

KEY, ADMIN = "qa_playground-key", "qa_playground-admin"
QUERY = "Does the playground send my key?"

pytestmark = skip_without_chromium()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launched() as browser:
        yield browser


def keyed(emulator: Emulator, **auth: object) -> Settings:
    keys = [{"name": "playground", "hash": hash_key(KEY)}]
    return Settings.model_validate(both(emulator).model_dump() | {"auth": {"keys": keys, **auth}})


async def ask(page: Page, query: str) -> None:
    await page.fill("#query", query)
    await page.click("#send")


async def test_the_key_typed_in_is_sent(browser: Browser, emulator: Emulator) -> None:
    async with gateway(keyed(emulator)) as url:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(url)
        await expect(page.locator("#send")).to_be_enabled()
        await ask(page, QUERY)
        turn = page.locator(".turn").last
        await expect(turn.locator(".error")).to_have_text(
            "credentials required (unauthenticated, HTTP 401)"
        )
        await page.fill("#api-key", KEY)
        await ask(page, QUERY)
        turn = page.locator(".turn").last
        await expect(turn).to_have_attribute("data-state", "done")
        await expect(turn.locator(".answer")).to_have_text("".join(answer_chunks(QUERY, 8)))
        stored = await page.evaluate(
            "[localStorage.length, sessionStorage.length, document.cookie]"
        )
        await context.close()
    assert stored == [0, 0, ""]
    assert len(emulator.calls) == 1


async def test_backends_are_listed_with_a_user_key_when_backends_needs_an_admin_key(
    browser: Browser, emulator: Emulator
) -> None:
    async with gateway(keyed(emulator, admin_hashes=[hash_key(ADMIN)])) as url:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(url)
        await expect(page.locator("#error")).to_contain_text("Cannot list the backends")
        await page.fill("#api-key", KEY)
        await page.press("#api-key", "Tab")  # the key is used once it is typed in
        await expect(page.locator("#send")).to_be_enabled()
        await expect(page.locator("#error")).to_be_hidden()
        options = page.locator("#backend option")
        assert await options.evaluate_all("(all) => all.map((o) => o.value)") == [
            "gemini",
            "search",
        ]
        await ask(page, QUERY)
        await expect(page.locator(".turn").last).to_have_attribute("data-state", "done")
        await context.close()
