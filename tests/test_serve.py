"""The README's first command: `qa-gateway serve` on the embedded default, as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support import free_port, parse_sse


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve") / "stdout.log"


@pytest.fixture(scope="module")
def served(log_file: Path) -> Iterator[str]:
    port = free_port()
    # No --port: the README's command, listening on $PORT.
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")} | {"PORT": str(port)}
    stdout = log_file.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1"],
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.communicate(timeout=15)
        stdout.close()


def test_embedded_default_answers_from_the_emulator(served: str) -> None:
    response = httpx.post(f"{served}/qa", json={"query": "hello"}, timeout=10)
    assert response.status_code == 200
    frames = parse_sse(response.content)
    assert frames[0][1] == "meta"
    assert frames[0][2]["emulated"] is True
    assert frames[0][2]["backend"] == "gemini"
    assert [kind for _, kind, _ in frames][-1] == "done"
    assert len([f for f in frames if f[1] == "delta"]) == 12


def test_embedded_default_caches_in_memory(served: str) -> None:
    ask = {"query": "Does the default cache?"}
    first = httpx.post(f"{served}/qa", json=ask, timeout=10)
    second = httpx.post(f"{served}/qa", json=ask, timeout=10)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert parse_sse(second.content)[0][2]["cached"] is True
    assert parse_sse(first.content)[1:] == parse_sse(second.content)[1:]


def test_embedded_default_serves_agent_builder(served: str) -> None:
    response = httpx.post(f"{served}/qa", json={"query": "hi", "backend": "search"}, timeout=10)
    kinds = [kind for _, kind, _ in parse_sse(response.content)]
    assert kinds[0] == "meta"
    assert "citation" in kinds
    assert kinds[-1] == "done"


def test_logs_are_json_lines_without_queries(served: str, log_file: Path) -> None:
    secret = "a question nobody should read in the logs"
    httpx.post(f"{served}/qa", json={"query": secret}, timeout=10)
    lines = log_file.read_text().splitlines()
    entries = [orjson.loads(line) for line in lines]  # every line is JSON
    assert any(entry.get("path") == "/qa" and entry["status"] == 200 for entry in entries)
    assert all(secret not in line for line in lines)
