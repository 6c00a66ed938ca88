"""A browser's own ``EventSource`` on ``GET /qa`` (headless Chromium): the connection is cut
mid-answer, the browser reconnects by itself with ``Last-Event-ID``, and the page ends with
the whole answer, nothing missing, nothing twice, from one upstream call."""

from __future__ import annotations

import json
from urllib.parse import urlencode, urlsplit

import httpx

from backends.emulator import Behaviour, Emulator
from tests.browser import launched, run_in_page, skip_without_chromium
from tests.cutting_proxy import CuttingProxy
from tests.support import gateway, parse_sse, text_of
from tests.test_resume import resumable

pytestmark = skip_without_chromium()

QUERY = "What does a dropped EventSource get back?"
PACED = Behaviour(chunks=20, delay_ms=50)

LISTEN = """async ({ path, timeoutMs }) => {
  const seen = [];  // [event type, lastEventId, data] of every event
  let opened = 0, errors = 0;
  return await new Promise((resolve) => {
    const source = new EventSource(path);
    const end = (timedOut) => { source.close(); resolve({ seen, opened, errors, timedOut }); };
    source.onopen = () => { opened += 1; };
    source.onerror = () => { errors += 1; };
    for (const kind of ["meta", "delta", "citations", "done", "error"]) {
      source.addEventListener(kind, (event) => {
        if (!(event instanceof MessageEvent)) return;  // a lost connection, not an event
        seen.push([kind, event.lastEventId, event.data]);
        if (kind === "done" || kind === "error") end(false);
      });
    }
    setTimeout(() => end(true), timeoutMs);
  });
}"""
"""Listen to ``path`` until the answer ends; what the page saw, and how often it (re)opened."""


async def test_an_event_source_cut_mid_answer_reconnects_and_misses_nothing(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    settings = resumable(emulator, None)  # detach_s = 10: the answer outlives the cut
    async with gateway(settings) as url:
        emulator.reset(PACED)
        reference = await client.post(
            f"{url}/qa", json={"query": QUERY}, headers={"Cache-Control": "no-cache, no-store"}
        )
        whole = text_of(parse_sse(reference.content))
        emulator.reset(PACED)
        port = urlsplit(url).port
        assert port is not None
        proxy = await CuttingProxy(port, after_events=6, then_bytes=12).start()
        try:
            async with launched() as browser:
                path = "/qa?" + urlencode({"query": QUERY, "backend": "gemini"})
                page = await run_in_page(
                    browser, f"{proxy.url}/healthz", LISTEN, {"path": path, "timeoutMs": 15_000}
                )
        finally:
            await proxy.stop()
    seen = page["seen"]
    assert not page["timedOut"] and seen[-1][0] == "done", seen
    assert [int(event_id) for _, event_id, _ in seen] == list(range(len(seen)))  # 0, 1, 2, …
    assert [kind for kind, _, _ in seen].count("meta") == 1  # one answer, resumed
    text = "".join(json.loads(data)["text"] for kind, _, data in seen if kind == "delta")
    assert text == whole
    assert (page["opened"], page["errors"]) == (2, 1)  # the browser reconnected by itself
    assert proxy.cuts == 1 and len(set(proxy.streams)) == len(proxy.streams) == 2
    [call] = emulator.calls
    assert call.completed and not call.cancelled
