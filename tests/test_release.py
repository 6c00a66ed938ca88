"""An answer closed before anyone read it still cancels its upstream call."""

from __future__ import annotations

import pytest

from backends.base import QARequest
from backends.emulator import Behaviour, Emulator
from gateway.app import create_app
from gateway.upstream.base import Ask
from tests.support import serve, settings_for, wait_for


@pytest.mark.parametrize("cached", [False, True], ids=["direct", "flight"])
async def test_unread_answer_cancels_the_upstream_call(emulator: Emulator, cached: bool) -> None:
    emulator.reset(Behaviour(chunks=100, delay_ms=20))
    settings = settings_for(emulator)
    settings.backends["gemini"].cache = cached
    app = create_app(settings)
    async with serve(app):
        upstream = app.state.runtime.upstreams["gemini"]
        answer = await upstream.open(Ask(QARequest("never read")))
        assert answer.cache == ("MISS" if cached else "BYPASS")
        await answer.aclose()  # as when the client leaves before the stream starts
        assert await wait_for(lambda: emulator.calls[0].cancelled)
    assert not emulator.calls[0].completed
