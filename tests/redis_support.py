"""Redis for tests: a private key prefix on the shared server, or a server of our own."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import uuid

import redis

SHARED_URL = "redis://127.0.0.1:6379/0"


def new_prefix() -> str:
    return f"qa-test-{uuid.uuid4().hex[:12]}:"


def keys_under(url: str, prefix: str) -> dict[bytes, int]:
    """Every key under ``prefix`` with its remaining time to live in ms (-1: none)."""
    with redis.Redis.from_url(url) as client:
        return {key: client.pttl(key) for key in client.scan_iter(match=f"{prefix}*")}


def delete_prefix(url: str, prefix: str) -> None:
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


class RedisServer:
    """A throwaway redis-server on a free port, to stop, pause and restart at will."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed (`make test` installs it)"
        self.process = subprocess.Popen(
            [
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with redis.Redis.from_url(self.url) as client:
            for _ in range(250):
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
