"""Test helpers: serve an app on a real socket, build settings, read event streams."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from fastapi import FastAPI
from fastapi.dependencies import models as fastapi_models

from backends.emulator import Emulator
from gateway.app import create_app
from gateway.http.connection import LimitedHttp
from gateway.settings import Policies, Settings

FAST_RETRY = {"initial_s": 0.001, "max_s": 0.005}
"""Retry waits short enough for tests."""


def settings_for(emulator: Emulator, transport: str = "rest", **overrides: Any) -> Settings:
    """Settings with one Gemini backend (``gemini``) on ``emulator``, over ``transport``; a
    client that leaves cancels the upstream call at once (``detach_s = 0``) unless a test asks
    otherwise."""
    data: dict[str, Any] = {
        "default_backend": "gemini",
        "resume": {"detach_s": 0},
        "backends": {
            "gemini": {
                "type": "gemini",
                "transport": transport,
                "endpoint": emulator.address_for(transport),
                "insecure": True,
                "retry": FAST_RETRY,
                "cache": False,
            },
        },
    }
    data.update(overrides)
    return Settings(**data)


def caching(emulator: Emulator, entry: dict[str, Any] | None = None, **overrides: Any) -> Settings:
    """``settings_for`` with the ``gemini`` backend (over REST, plus ``entry``) caching, as it
    does by default."""
    gemini = {"type": "gemini", "endpoint": emulator.rest_address, "insecure": True}
    gemini |= {"retry": FAST_RETRY} | (entry or {})
    return settings_for(emulator, backends={"gemini": gemini}, **overrides)


def both(emulator: Emulator, *, default: str = "gemini", **search: Any) -> Settings:
    """A ``gemini`` and a ``search`` (Agent Builder) backend on ``emulator``, same policies."""
    gemini = settings_for(emulator).backends["gemini"]
    policies = gemini.model_dump(include=set(Policies.model_fields))
    entry = {
        "type": "agent_builder",
        "endpoint": emulator.address,
        "insecure": True,
        "engine": "docs",
        "related_questions": True,
        **policies,
        **search,
    }
    return settings_for(
        emulator, default_backend=default, backends={"gemini": gemini.model_dump(), "search": entry}
    )


def with_agent(emulator: Emulator, settings: Settings | None = None, **agent: Any) -> Settings:
    """``settings`` (default: ``both``) plus an ``agent`` (Agent Engine) backend on
    ``emulator``, with the policies of its ``gemini`` backend."""
    settings = settings or both(emulator)
    policies = settings.backends["gemini"].model_dump(include=set(Policies.model_fields))
    entry = {
        "type": "agent_engine",
        "endpoint": emulator.address,
        "insecure": True,
        "reasoning_engine": "docs-agent",
        **policies,
        **agent,
    }
    backends = {name: backend.model_dump() for name, backend in settings.backends.items()}
    data = settings.model_dump() | {"backends": backends | {"agent": entry}}
    return Settings(**data)


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn, on the gateway's own connection protocol, on a free
    loopback port; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, http=LimitedHttp, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()
        forget_endpoints()


def forget_endpoints() -> None:
    """Empty FastAPI's caches of what kind of callable each endpoint is (4,096 entries):
    they keep every app whose endpoints they saw alive, with its runtime, and the hundreds a
    session builds made each full collection pause the event loop ~0.7 s, long enough to
    fail tests on Redis timeouts. One app per process, as in production, is no leak."""
    for cache in (
        fastapi_models._is_gen_callable_cached,
        fastapi_models._is_async_gen_callable_cached,
        fastapi_models._is_coroutine_callable_cached,
    ):
        cache.cache_clear()


@asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[str]:
    """Serve a gateway built from ``settings``; yield its base URL."""
    async with serve(create_app(settings)) as url:
        yield url


def parse_sse(raw: bytes) -> list[tuple[int, str, dict[str, Any]]]:
    """``(id, event, data)`` for every SSE frame in ``raw``; asserts each frame is complete."""
    frames = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(fields) == {"id", "event", "data"}, block
        frames.append((int(fields["id"]), fields["event"], orjson.loads(fields["data"])))
    return frames


def text_of(frames: list[tuple[int, str, dict[str, Any]]]) -> str:
    return "".join(data["text"] for _, kind, data in frames if kind == "delta")


async def wait_for(predicate: Any, timeout: float = 2.0) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn_gateway(
    port: int,
    config: Path | None = None,
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = subprocess.DEVNULL,
    host: str = "127.0.0.1",
) -> subprocess.Popen[bytes]:
    """``qa-gateway serve`` as a real process on ``port`` (the embedded default if no config),
    with no ``QA_*`` variables of the caller's leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    command = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
    ]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)


def ready(url: str) -> bool:
    """Whether the gateway at ``url`` answers ``/readyz`` with 200."""
    try:
        return httpx.get(f"{url}/readyz", timeout=0.5).status_code == 200
    except httpx.TransportError:
        return False
