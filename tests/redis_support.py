"""Redis for tests: a private key prefix on the shared server, or a server of our own."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from tests.cluster_support import LocalCluster

SHARED_URL = "redis://127.0.0.1:6379/0"


def new_prefix() -> str:
    return f"qa-test-{uuid.uuid4().hex[:12]}:"


@dataclass(frozen=True)
class RedisTarget:
    """Where a test keeps its keys: a Redis (``redis_url``), a Redis Cluster (any node's URL,
    ``cluster``), under a prefix of its own."""

    url: str
    cluster: bool = False
    prefix: str = field(default_factory=new_prefix)

    def settings(self) -> dict[str, Any]:
        """The gateway settings that point at it."""
        return {"redis_url": self.url, "redis_cluster": self.cluster}

    @contextmanager
    def client(self) -> Iterator[redis.Redis | redis.RedisCluster]:
        """A client for the test's own reads and writes, for the ``with`` block."""
        if not self.cluster:
            with redis.Redis.from_url(self.url) as client:
                yield client
            return
        cluster = redis.RedisCluster.from_url(self.url)
        try:
            yield cluster
        finally:
            cluster.disconnect_connection_pools()  # ``close`` leaves the nodes' connections
            cluster.close()

    def stored(self) -> dict[bytes, int]:
        """Every key under the prefix, with its time to live (``keys_under``)."""
        return keys_under(self.url, self.prefix)


def redis_named(request: pytest.FixtureRequest, name: str) -> RedisTarget:
    """``standalone``: the shared Redis server; ``cluster``: the session's Redis Cluster
    (the ``local_cluster`` fixture, started by the first test that needs it)."""
    if name == "cluster":
        cluster: LocalCluster = request.getfixturevalue("local_cluster")
        return RedisTarget(cluster.url, cluster=True)
    return RedisTarget(SHARED_URL)


def _masters(url: str) -> list[redis.Redis]:
    """A client per master behind ``url``: the server itself, or each master of its cluster."""
    client = redis.Redis.from_url(url)
    if not client.info("cluster").get("cluster_enabled"):
        return [client]
    nodes = client.cluster("nodes")
    client.close()
    return [
        redis.Redis(host=address.split(":")[0], port=int(address.split(":")[1]))
        for address, node in nodes.items()
        if "master" in node["flags"]
    ]


def keys_under(url: str, prefix: str) -> dict[bytes, int]:
    """Every key under ``prefix`` with its remaining time to live in ms (-1: none), on the
    server at ``url`` or on every master of its cluster."""
    found: dict[bytes, int] = {}
    for client in _masters(url):
        with client:
            found |= {key: client.pttl(key) for key in client.scan_iter(match=f"{prefix}*")}
    return found


def delete_prefix(url: str, prefix: str) -> None:
    for client in _masters(url):
        with client:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            for key in keys:  # one by one: on a cluster, keys of one call share a slot
                client.delete(key)


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
