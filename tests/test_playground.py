"""The playground in a real browser: Debian's Chromium, headless, driven by Playwright."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, expect

from backends.emulator import Behaviour, Emulator, agent_engine
from backends.emulator.gemini import answer_chunks
from backends.emulator.search import DOCUMENTS, SENTENCES, answer_pieces
from tests.browser import launched, skip_without_chromium
from tests.support import both, gateway, with_agent

QUERY = "What does the playground show?"

pytestmark = skip_without_chromium()

WATCH_ANSWER = """() => {
  window.seen = [];
  new MutationObserver(() => {
    const turn = document.querySelector(".turn:last-of-type");
    if (turn) window.seen.push([turn.dataset.state, turn.querySelector(".answer").textContent]);
  }).observe(document.getElementById("transcript"),
             { subtree: true, childList: true, characterData: true, attributes: true });
}"""
"""Record the last answer's state and text at every change of the page."""


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launched() as browser:
        yield browser


@pytest.fixture(scope="module")
async def url(emulator: Emulator) -> AsyncIterator[str]:
    async with gateway(with_agent(emulator)) as base:
        yield base


@asynccontextmanager
async def opened(browser: Browser, url: str) -> AsyncIterator[Page]:
    """The playground at ``url`` in a fresh browser context, once it listed the backends."""
    context = await browser.new_context()
    page = await context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    await page.goto(url)
    await expect(page.locator("#send")).to_be_enabled()  # the backends are listed
    yield page
    await context.close()
    assert all(address.startswith(url) for address in requested), requested  # no CDN


@pytest.fixture
async def page(browser: Browser, url: str) -> AsyncIterator[Page]:
    async with opened(browser, url) as playground:
        yield playground


async def ask(page: Page, query: str, backend: str | None = None) -> Locator:
    """Ask ``query`` through the form; the new turn in the transcript."""
    if backend is not None:
        await page.select_option("#backend", backend)
    turns = page.locator(".turn")
    index = await turns.count()
    await page.fill("#query", query)
    await page.click("#send")
    return turns.nth(index)


def cited_documents(query: str) -> list[int]:
    """The emulated documents the search answer to ``query`` cites, in citation order."""
    by_sentence = dict(SENTENCES)
    return list(dict.fromkeys(by_sentence[piece.strip()] for piece in answer_pieces(query, 8)))


async def test_backend_picker_lists_the_configured_backends(page: Page) -> None:
    options = page.locator("#backend option")
    assert await options.evaluate_all("(all) => all.map((o) => o.value)") == [
        "gemini",
        "search",
        "agent",
    ]
    assert await page.input_value("#backend") == "gemini"


async def test_text_grows_while_the_answer_streams(page: Page, emulator: Emulator) -> None:
    emulator.reset(Behaviour(chunks=20, delay_ms=20))
    await page.evaluate(WATCH_ANSWER)
    turn = await ask(page, QUERY)

    await expect(turn).to_have_attribute("data-state", "done")
    answer = "".join(answer_chunks(QUERY, 20))
    await expect(turn.locator(".answer")).to_have_text(answer)
    seen: list[Any] = await page.evaluate("window.seen")
    while_streaming = {text for state, text in seen if state == "streaming" and text}
    # Two or more partial answers were on screen before the stream ended.
    assert len(while_streaming) >= 2
    assert all(answer.startswith(text) for text in while_streaming)
    await expect(turn.locator(".cached")).to_have_count(0)


async def test_search_answer_shows_citations_as_links(page: Page) -> None:
    turn = await ask(page, QUERY, backend="search")

    await expect(turn).to_have_attribute("data-state", "done")
    await expect(turn.locator(".answer")).to_have_text("".join(answer_pieces(QUERY, 8)))
    documents = [DOCUMENTS[index] for index in cited_documents(QUERY)]
    web = [(title, uri) for title, uri, _ in documents if uri.startswith("https://")]
    links = turn.locator(".citations a")
    await expect(links).to_have_text([title for title, _ in web])
    assert [await link.get_attribute("href") for link in await links.all()] == [u for _, u in web]
    # A source that is not a web address is named, not linked.
    await expect(turn.locator(".citations li")).to_have_count(len(documents))
    await expect(turn.locator(".citations")).to_contain_text("gs://emulated-docs/streaming-ko.pdf")


async def test_a_session_continues(page: Page, emulator: Emulator) -> None:
    first = await ask(page, QUERY, backend="search")
    await expect(first).to_have_attribute("data-state", "done")
    [call] = emulator.calls
    assert call.session is not None
    await expect(page.locator("#continuing code")).to_have_text(call.session.rsplit("/", 1)[1])

    second = await ask(page, "And what else?")
    await expect(second).to_have_attribute("data-state", "done")
    assert emulator.calls[1].session == call.session
    assert emulator.calls[1].turn == 2
    await expect(page.locator(".turn")).to_have_count(2)

    await page.click("#new-session")
    await expect(page.locator("#session-info")).to_be_hidden()
    third = await ask(page, "A new topic")
    await expect(third).to_have_attribute("data-state", "done")
    assert emulator.calls[2].turn == 1


async def test_an_agent_answer_and_its_session(page: Page, emulator: Emulator) -> None:
    first = await ask(page, QUERY, backend="agent")
    await expect(first).to_have_attribute("data-state", "done")
    await expect(first.locator(".answer")).to_have_text(
        "".join(agent_engine.answer_pieces(QUERY, 8))
    )
    await expect(first.locator(".citations a")).to_have_text([agent_engine.SOURCE["title"]])
    [created] = emulator.calls_to("CreateSession")
    assert created.session is not None
    await expect(page.locator("#continuing code")).to_have_text(created.session.rsplit("/", 1)[1])

    second = await ask(page, "And then?")
    await expect(second).to_have_attribute("data-state", "done")
    await expect(second.locator(".answer")).to_contain_text("(turn 2)")
    assert [call.session for call in emulator.calls_to(agent_engine.METHOD)] == [
        created.session
    ] * 2


async def test_a_gemini_conversation_continues_with_its_history(
    page: Page, emulator: Emulator
) -> None:
    first = await ask(page, QUERY, backend="gemini")
    await expect(first).to_have_attribute("data-state", "done")
    await expect(page.locator("#continuing")).to_have_text("Continuing the conversation (2 turns)")

    second = await ask(page, "And what else?")
    await expect(second).to_have_attribute("data-state", "done")
    sent = [(c.role, c.parts[0].text) for c in emulator.calls[1].request.contents]
    answer = "".join(answer_chunks(QUERY, 8))
    assert sent == [("user", QUERY), ("model", answer), ("user", "And what else?")]

    await page.click("#new-session")
    third = await ask(page, "A new topic")
    await expect(third).to_have_attribute("data-state", "done")
    assert len(emulator.calls[2].request.contents) == 1


async def test_upstream_failure_is_shown(page: Page, emulator: Emulator) -> None:
    emulator.reset(Behaviour(fail_first=99, fail_code="PERMISSION_DENIED"))
    turn = await ask(page, QUERY)

    await expect(turn).to_have_attribute("data-state", "error")
    error = turn.locator(".error")
    await expect(error).to_be_visible()
    await expect(error).to_have_text("emulated PERMISSION_DENIED (permission_denied, HTTP 502)")


async def test_failure_midway_keeps_the_text_and_shows_the_error(
    page: Page, emulator: Emulator
) -> None:
    emulator.reset(Behaviour(fail_after=2))
    turn = await ask(page, QUERY)

    await expect(turn).to_have_attribute("data-state", "error")
    await expect(turn.locator(".answer")).to_have_text("".join(answer_chunks(QUERY, 8)[:2]))
    await expect(turn.locator(".error")).to_have_text("emulated UNAVAILABLE (unavailable)")


async def test_cache_hits_are_marked(browser: Browser, emulator: Emulator) -> None:
    settings = both(emulator)
    settings.backends["gemini"].cache = True
    async with gateway(settings) as base, opened(browser, base) as page:
        first = await ask(page, QUERY)
        await expect(first).to_have_attribute("data-state", "done")
        await expect(first.locator(".cached")).to_have_count(0)
        await page.reload()  # a new conversation: the same question, asked afresh
        second = await ask(page, QUERY)
        await expect(second).to_have_attribute("data-state", "done")
        await expect(second.locator(".cached")).to_be_visible()
        await expect(second.locator(".answer")).to_have_text("".join(answer_chunks(QUERY, 8)))
    assert len(emulator.calls) == 1
