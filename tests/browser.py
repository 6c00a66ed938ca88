"""A real browser for tests: Debian's Chromium, headless, driven by Playwright, with pages
served from origins of their own (a page server on a free port is an origin).

``.ci/services`` installs Chromium; ``chromium()`` installs it here too when it is missing
and apt-get can (root), so a test skips only where it cannot be had at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@cache
def chromium() -> str | None:
    """Chromium's path, installing Debian's package first if needed; None if impossible."""
    if not os.path.exists(CHROMIUM) and shutil.which("apt-get") and os.geteuid() == 0:
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "chromium"],
        ):
            subprocess.run(command, env=env, capture_output=True, check=False, timeout=600)
    return CHROMIUM if os.path.exists(CHROMIUM) else None


def skip_without_chromium() -> pytest.MarkDecorator:
    return pytest.mark.skipif(chromium() is None, reason="chromium cannot be installed here")


@asynccontextmanager
async def launched() -> AsyncIterator[Browser]:
    """A headless Chromium for the duration of the block."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium(), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@contextmanager
def page_server(html: str = "<!doctype html><title>page</title>") -> Iterator[str]:
    """Serve ``html`` at every path on a free loopback port; yield the origin."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def run_in_page(browser: Browser, origin: str, script: str, arg: Any = None) -> Any:
    """Open ``origin`` in a fresh context, evaluate the JS function ``script`` with ``arg``
    there and return its result."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(origin)
        return await page.evaluate(script, arg)
    finally:
        await context.close()
