"""SIGTERM on a real server process: short streams finish, long ones end with `shutting_down`."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from backends.emulator import Behaviour, Emulator
from tests.support import free_port, parse_sse, ready, spawn_gateway, wait_for

GRACE_S = 1.5


async def test_sigterm_drains_then_ends_open_streams(emulator: Emulator, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
default_backend = "gemini"
shutdown_grace_s = {GRACE_S}
[backends.gemini]
type = "gemini"
endpoint = "{emulator.rest_address}"
insecure = true
"""
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = spawn_gateway(port, config)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            assert await wait_for(lambda: process.poll() is not None or ready(url), 30)
            started = asyncio.Event()
            opened = 0

            async def ask(query: str) -> bytes:
                nonlocal opened
                body = b""
                async with client.stream("POST", f"{url}/qa", json={"query": query}) as response:
                    async for chunk in response.aiter_bytes():
                        if not body:
                            opened += 1
                            if opened == 20:
                                started.set()
                        body += chunk
                return body

            # Behaviour is read when a call starts: 10 long answers, then 10 short ones.
            emulator.reset(Behaviour(chunks=1000, delay_ms=100))
            long = [asyncio.create_task(ask(f"long {i}")) for i in range(10)]
            assert await wait_for(lambda: len(emulator.calls) == 10)
            emulator.behaviour = Behaviour(chunks=5, delay_ms=100)
            short = [asyncio.create_task(ask(f"short {i}")) for i in range(10)]
            await asyncio.wait_for(started.wait(), 10)

            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            for task in short:
                frames = parse_sse(await task)
                assert frames[-1][1] == "done"
                assert len([f for f in frames if f[1] == "delta"]) == 5
            for task in long:
                frames = parse_sse(await task)
                assert [kind for _, kind, _ in frames].count("error") == 1
                assert frames[-1][1] == "error"
                assert frames[-1][2]["code"] == "shutting_down"
                assert frames[-1][2]["retryable"] is True
            returncode = await asyncio.to_thread(process.wait, GRACE_S + 5)
            # uvicorn re-raises the signal it handled once it has shut down cleanly.
            assert returncode in (0, -signal.SIGTERM)
            assert time.monotonic() - signalled < GRACE_S + 5
        assert await wait_for(lambda: sum(c.cancelled for c in emulator.calls) == 10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
