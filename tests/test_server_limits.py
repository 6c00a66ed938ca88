"""``[server]`` limits, seen from a client of a real ``qa-gateway serve`` process: a huge or
crowded request head gets 431, a connection that sends nothing (or a head too slowly) is
closed, and a request beyond the open-connection limit gets a clear 503."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from bench.procs import rss_kb
from tests.support import free_port

CONFIG = """\
default_backend = "gemini"

[emulator]
enabled = true
chunks = 2
first_delay_ms = 0
delay_ms = 0

[backends.gemini]
type = "gemini"
emulator = true

[server]
max_connections = 4
head_timeout_s = 2
keep_alive_s = 1
max_headers = 20
"""
QA = b"POST /qa HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
BODY = b'{"query": "hi"}'


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """(port, pid) of a gateway serving ``CONFIG``."""
    work = tmp_path_factory.mktemp("limits")
    (work / "gateway.toml").write_text(CONFIG)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(work / "gateway.toml")]
    with (work / "out.log").open("w") as out:
        process = subprocess.Popen(
            [*argv, "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    try:
        for _ in range(400):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, Path(work / "out.log").read_text()
            time.sleep(0.05)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(15)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def response_of(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one response the server sends before closing."""
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def request(headers: bytes = b"") -> bytes:
    return QA + headers + b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


def test_a_normal_request_is_answered(served: tuple[int, int]) -> None:
    with connect(served[0]) as sock:
        sock.sendall(request(b"".join(b"X-Pad-%d: x\r\n" % n for n in range(15))))
        assert sock.recv(12) == b"HTTP/1.1 200"


def test_64_mib_of_headers_get_431_before_the_server_holds_them(served: tuple[int, int]) -> None:
    port, pid = served
    before = rss_kb(pid)
    piece = b"X-Big: " + b"x" * (64 * 1024 - 9) + b"\r\n"
    with connect(port) as sock:
        sock.sendall(QA)
        try:
            for _ in range(1024):  # 64 MiB in 64 KiB header lines, until the server answers
                sock.sendall(piece)
                if select.select([sock], [], [], 0)[0]:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = response_of(sock)
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert orjson.loads(body)["error"]["code"] == "headers_too_large"
    assert rss_kb(pid) - before < 16 * 1024


def test_too_many_headers_get_431(served: tuple[int, int]) -> None:
    with connect(served[0]) as sock:
        sock.sendall(request(b"".join(b"X-Pad-%d: x\r\n" % n for n in range(20))))
        status, _, body = response_of(sock)
    assert status == 431
    assert orjson.loads(body)["error"] == {
        "code": "too_many_headers",
        "message": "the request has more than 20 headers",
    }


def test_a_connection_that_sends_nothing_is_closed(served: tuple[int, int]) -> None:
    with connect(served[0]) as sock:
        assert sock.recv(1024) == b""  # closed after head_timeout_s (2 s), long before 10 s


def test_a_slow_request_head_gets_408(served: tuple[int, int]) -> None:
    with connect(served[0]) as sock:
        sock.sendall(QA)  # and never the rest of the head
        status, _, body = response_of(sock)
    assert status == 408
    assert orjson.loads(body)["error"]["code"] == "request_timeout"


def test_beyond_the_connection_limit_a_request_gets_503(served: tuple[int, int]) -> None:
    port = served[0]
    held = [connect(port) for _ in range(4)]  # max_connections, idle
    try:
        with connect(port) as sock:
            sock.sendall(request())
            status, headers, body = response_of(sock)
    finally:
        for sock in held:
            sock.close()
    assert status == 503
    assert headers["retry-after"] == "1"
    assert orjson.loads(body)["error"] == {
        "code": "too_many_connections",
        "message": "the gateway has 4 connections open; retry soon",
    }
