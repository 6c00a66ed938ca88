"""A gateway with Gemini over REST alone, its emulator in another process, loads neither gRPC
nor a Google SDK's client library: they cost most of its start-up time.

A fresh interpreter serves the gateway as ``qa-gateway serve`` builds it, answers a question
through it, and reports what ``sys.modules`` holds.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson

from backends.emulator import Emulator
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import asyncio, sys
import httpx, orjson
from gateway.server import GatewayServer
from gateway.app import create_app
from gateway.settings import load_settings

async def main():
    settings = load_settings(sys.argv[1])
    server = GatewayServer(create_app(settings), "127.0.0.1", int(sys.argv[2]), 0, settings.server)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.005)
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.post(f"http://127.0.0.1:{sys.argv[2]}/qa", json={"query": "hi"})
    server.should_exit = True
    await serving
    print(orjson.dumps({"status": answer.status_code, "body": answer.text,
                        "modules": sorted(sys.modules)}).decode())

asyncio.run(main())
"""
HEAVY = (
    "grpc",
    "proto",
    "google.api_core",
    "google.cloud.aiplatform",
    "google.cloud.discoveryengine",
)
"""gRPC, proto-plus, the SDKs' core and their client libraries (packages and their modules)."""


async def test_rest_gemini_loads_no_grpc_and_no_sdk(emulator: Emulator, tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        'default_backend = "gemini"\n\n[backends.gemini]\ntype = "gemini"\ntransport = "rest"\n'
        f'endpoint = "{emulator.address_for("rest")}"\ninsecure = true\n'
    )
    port = str(free_port())
    child = await asyncio.create_subprocess_exec(
        *(sys.executable, "-c", SCRIPT, str(config), port),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(child.communicate(), 60)  # the emulator answers meanwhile
    assert child.returncode == 0, err.decode()
    report = orjson.loads(out.splitlines()[-1])
    assert report["status"] == 200
    assert "event: done" in report["body"]
    assert len(emulator.calls) == 1  # it was answered by the emulator, over REST
    loaded = [
        name
        for name in report["modules"]
        if any(name == heavy or name.startswith(f"{heavy}.") for heavy in HEAVY)
    ]
    assert loaded == []
