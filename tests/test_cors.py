"""Pages on other origins, in a real browser: an allowed origin streams answers and reads the
gateway's headers; any other is blocked, and costs no upstream call. POST bodies: JSON only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser

from backends.emulator import Behaviour, Emulator
from backends.emulator.gemini import answer_chunks
from gateway.http.keys import hash_key
from tests.browser import launched, page_server, run_in_page, skip_without_chromium
from tests.support import gateway, parse_sse, settings_for, text_of

QUERY = "Can a page on another origin read this?"
KEY = "qa_cors-test-key"

FETCH = """async ({ url, headers, body }) => {
  try {
    const response = await fetch(url, { method: "POST", headers, body });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const chunks = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
    }
    const header = (name) => response.headers.get(name);
    return { status: response.status, chunks, requestId: header("X-Request-ID"),
             cache: header("X-Cache"), type: header("Content-Type") };
  } catch (error) {
    return { error: String(error) };
  }
}"""
"""POST from the page; what the page could read of the response, or the error it got."""
JSON = {"Content-Type": "application/json", "Accept": "text/event-stream"}


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with launched() as browser:
        yield browser


@pytest.fixture(scope="module")
def origins() -> Iterator[tuple[str, str]]:
    with page_server() as allowed, page_server() as other:
        yield allowed, other


def post(url: str, headers: dict[str, str], body: Any) -> dict[str, Any]:
    return {"url": f"{url}/qa", "headers": headers, "body": body}


@skip_without_chromium()
async def test_an_allowed_origin_streams_and_reads_the_headers(
    browser: Browser, origins: tuple[str, str], emulator: Emulator
) -> None:
    allowed, other = origins
    emulator.reset(Behaviour(chunks=8, delay_ms=20))
    settings = settings_for(emulator, cors={"allow_origins": [allowed]})
    async with gateway(settings) as url:
        seen = await run_in_page(
            browser, allowed, FETCH, post(url, JSON, f'{{"query": "{QUERY}"}}')
        )
        assert len(emulator.calls) == 1
        blocked = await run_in_page(browser, other, FETCH, post(url, JSON, '{"query": "B"}'))
        simple = await run_in_page(browser, other, FETCH, post(url, {}, '{"query": "B"}'))

    assert seen["status"] == 200
    assert seen["type"].startswith("text/event-stream")
    assert len(seen["chunks"]) >= 2  # read while it streamed
    frames = parse_sse("".join(seen["chunks"]).encode())
    assert text_of(frames) == "".join(answer_chunks(QUERY, 8))
    assert seen["requestId"] == frames[0][2]["request_id"]
    assert seen["cache"] == "BYPASS"
    # Origin B: the preflight is refused, and a simple (text/plain) POST is refused too.
    assert "Failed to fetch" in blocked["error"]
    assert "Failed to fetch" in simple["error"]
    assert len(emulator.calls) == 1


@skip_without_chromium()
async def test_an_allowed_origin_sends_a_key_and_reads_refusals(
    browser: Browser, origins: tuple[str, str], emulator: Emulator
) -> None:
    allowed, _ = origins
    settings = settings_for(
        emulator,
        cors={"allow_origins": [allowed.replace("127.", "*.")]},  # a pattern
        auth={"keys": [{"name": "web", "hash": hash_key(KEY)}]},
    )
    body = f'{{"query": "{QUERY}"}}'
    async with gateway(settings) as url:
        keyed = await run_in_page(browser, allowed, FETCH, post(url, JSON | auth(KEY), body))
        anonymous = await run_in_page(browser, allowed, FETCH, post(url, JSON, body))
        plain = await run_in_page(browser, allowed, FETCH, post(url, auth(KEY), body))

    assert keyed["status"] == 200
    assert text_of(parse_sse("".join(keyed["chunks"]).encode())) == "".join(answer_chunks(QUERY, 8))
    assert (anonymous["status"], plain["status"]) == (401, 415)  # readable by the page
    assert len(emulator.calls) == 1


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_preflight_answers_and_exposes_the_headers(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    app = "https://app.example.com"
    settings = settings_for(emulator, cors={"allow_origins": [app, "https://*.vercel.app"]})
    async with gateway(settings) as url:
        preflight = {"Access-Control-Request-Method": "POST"}
        for origin in (app, "https://preview-git-x.vercel.app"):
            headers = preflight | {
                "Origin": origin,
                "Access-Control-Request-Headers": "authorization, content-type",
            }
            answer = await client.options(f"{url}/qa", headers=headers)
            assert answer.status_code == 200
            assert answer.headers["access-control-allow-origin"] == origin
            assert "authorization" in answer.headers["access-control-allow-headers"].lower()
        resume = await client.options(f"{url}/qa/streams/x", headers=preflight | {"Origin": app})
        assert resume.status_code == 200
        answered = await client.post(f"{url}/qa", json={"query": QUERY}, headers={"Origin": app})
        assert answered.headers["access-control-allow-origin"] == app
        exposed = answered.headers["access-control-expose-headers"].split(", ")
        for name in ("X-Request-ID", "X-Cache", "X-Stream-ID", "Retry-After", "RateLimit-Reset"):
            assert name in exposed
        for origin in ("https://evil.example", "https://a.b.vercel.app", "null"):
            refused = await client.post(
                f"{url}/qa", json={"query": QUERY}, headers={"Origin": origin}
            )
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "origin_not_allowed"
            assert "access-control-allow-origin" not in refused.headers
    assert len(emulator.calls) == 1


async def test_cors_is_off_by_default_but_the_gateway_s_own_pages_may_call(
    client: httpx.AsyncClient, gateway_url: str, emulator: Emulator
) -> None:
    own = await client.post(
        f"{gateway_url}/qa", json={"query": QUERY}, headers={"Origin": gateway_url}
    )
    assert own.status_code == 200
    assert "access-control-allow-origin" not in own.headers
    behind_a_proxy = {"Origin": "https://my-app.web.app", "X-Forwarded-Host": "my-app.web.app"}
    proxied = await client.post(f"{gateway_url}/qa", json={"query": QUERY}, headers=behind_a_proxy)
    assert proxied.status_code == 200
    other = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    assert (await client.options(f"{gateway_url}/qa", headers=other)).status_code == 403
    assert len(emulator.calls) == 2


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", '{"query": "hi"}'),
        ("text/plain;charset=UTF-8", '{"query": "hi"}'),
        ("application/x-www-form-urlencoded", "query=hi"),
        ("multipart/form-data; boundary=x", '--x\r\nContent-Disposition: form-data; name="query"'),
        (None, '{"query": "hi"}'),
    ],
)
async def test_a_body_that_is_not_json_is_415_before_any_upstream_call(
    client: httpx.AsyncClient,
    gateway_url: str,
    emulator: Emulator,
    content_type: str | None,
    body: str,
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    for path in ("/qa", "/v1/chat/completions"):
        response = await client.post(f"{gateway_url}{path}", content=body, headers=headers)
        assert response.status_code == 415
        assert response.json()["error"]["code"] == "unsupported_media_type"
    assert not emulator.calls
    charset = {"Content-Type": "application/json; charset=utf-8"}
    ok = await client.post(f"{gateway_url}/qa", content='{"query": "hi"}', headers=charset)
    assert ok.status_code == 200


EVENT_SOURCE = """(url) => new Promise((resolve) => {
  const texts = [];
  const source = new EventSource(url);
  source.addEventListener("delta", (e) => texts.push(JSON.parse(e.data).text));
  source.addEventListener("done", () => { source.close(); resolve({ text: texts.join("") }); });
  source.onerror = () => { source.close(); resolve({ error: "blocked", text: texts.join("") }); };
})"""


@skip_without_chromium()
async def test_event_source_from_an_allowed_origin_streams_and_another_is_blocked(
    browser: Browser, origins: tuple[str, str], emulator: Emulator
) -> None:
    allowed, other = origins
    settings = settings_for(emulator, cors={"allow_origins": [allowed]})
    async with gateway(settings) as url:
        seen = await run_in_page(browser, allowed, EVENT_SOURCE, f"{url}/qa?query=EventSource")
        assert len(emulator.calls) == 1
        blocked = await run_in_page(browser, other, EVENT_SOURCE, f"{url}/qa?query=B")
    assert seen == {"text": "".join(answer_chunks("EventSource", 8))}
    assert blocked == {"error": "blocked", "text": ""}
    assert len(emulator.calls) == 1  # the foreign page's GET cost no upstream call
