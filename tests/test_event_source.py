"""A browser's own ``EventSource`` on ``GET /qa`` (headless Chromium), running the README's
snippet: the connection is cut mid-answer, the browser reconnects by itself with
``Last-Event-ID``, and the page ends with the whole answer, nothing missing, nothing twice,
from one upstream call."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from backends.emulator import Behaviour, Emulator
from tests.browser import launched, skip_without_chromium
from tests.cutting_proxy import CuttingProxy
from tests.support import gateway, parse_sse, text_of
from tests.test_resume import resumable

pytestmark = skip_without_chromium()

README = Path(__file__).resolve().parent.parent / "README.md"
PACED = Behaviour(chunks=20, delay_ms=50)

WATCH = """
window.seen = [];  // [event type, lastEventId, data] of every event the answer sent
window.opened = 0;
window.lost = 0;
for (const kind of ["meta", "delta", "citations", "done", "error"]) {
  source.addEventListener(kind, (event) => {
    if (event instanceof MessageEvent) seen.push([kind, event.lastEventId, event.data]);
  });
}
source.addEventListener("open", () => { opened += 1; });
source.addEventListener("error", (event) => { if (!(event instanceof MessageEvent)) lost += 1; });
"""
"""Run in the same script as the snippet, so that it sees every event of ``source``."""


def readme_snippet() -> str:
    """The README's browser snippet (the ``js`` block with ``new EventSource``)."""
    [snippet] = [
        block
        for block in re.findall(r"```js\n(.*?)```", README.read_text(), re.DOTALL)
        if "new EventSource" in block
    ]
    return snippet


async def test_an_event_source_cut_mid_answer_reconnects_and_misses_nothing(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    snippet = readme_snippet()
    [query] = re.findall(r'query: "([^"]+)"', snippet)
    settings = resumable(emulator, None)  # detach_s = 10: the answer outlives the cut
    async with gateway(settings) as url:
        emulator.reset(PACED)
        reference = await client.post(
            f"{url}/qa", json={"query": query}, headers={"Cache-Control": "no-cache, no-store"}
        )
        emulator.reset(PACED)
        port = urlsplit(url).port
        assert port is not None
        proxy = await CuttingProxy(port, after_events=6, then_bytes=12).start()
        try:
            async with launched() as browser:
                page = await browser.new_page()
                await page.goto(f"{proxy.url}/healthz")  # the gateway's origin, through the proxy
                await page.evaluate("document.body.innerHTML = '<p id=\"answer\"></p>'")
                await page.add_script_tag(content=snippet + WATCH)
                await page.wait_for_function("source.readyState === EventSource.CLOSED")
                seen = await page.evaluate("seen")
                shown = await page.locator("#answer").text_content()
                connections = await page.evaluate("[opened, lost]")
        finally:
            await proxy.stop()
    assert seen[-1][0] == "done", seen
    assert [int(event_id) for _, event_id, _ in seen] == list(range(len(seen)))  # 0, 1, 2, …
    assert [kind for kind, _, _ in seen].count("meta") == 1  # one answer, resumed
    whole = text_of(parse_sse(reference.content))
    assert "".join(json.loads(data)["text"] for kind, _, data in seen if kind == "delta") == whole
    assert shown == whole
    assert connections == [2, 1]  # the browser reconnected by itself, once
    assert proxy.cuts == 1 and len(set(proxy.streams)) == len(proxy.streams) == 2
    [call] = emulator.calls
    assert call.completed and not call.cancelled
