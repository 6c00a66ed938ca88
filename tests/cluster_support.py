"""A Redis Cluster of our own for tests: three masters on free ports, no replicas, no disk."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

MASTERS = 3
BUS_OFFSET = 10_000
"""A node on port ``p`` talks to the others on ``p + 10000`` (the cluster bus)."""
CREATE = ("--cluster-replicas", "0", "--cluster-yes")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` ports ``p`` with ``p`` and ``p + 10000`` free."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + BUS_OFFSET < 65536 and port not in ports and _free(port + BUS_OFFSET):
            ports.append(port)
    return ports


def _wait(ready: Callable[[], bool], failure: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(failure)
        time.sleep(0.05)


def _tool(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is not installed (`make test` installs it)"
    return found


class LocalCluster:
    """Three ``redis-server --cluster-enabled yes`` joined by ``redis-cli --cluster create``;
    ``node_timeout_ms``: how long a node may be silent before the others call it failed."""

    def __init__(self, node_timeout_ms: int = 15_000) -> None:
        self.node_timeout_ms = node_timeout_ms
        self.ports = _free_ports(MASTERS)
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"
        """Any node will do: a cluster client discovers the others."""
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self._dir = Path(tempfile.mkdtemp(prefix="qa-cluster-"))

    def start(self) -> LocalCluster:
        try:
            for port in self.ports:
                self._start(port)
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            subprocess.run(
                [_tool("redis-cli"), "--cluster", "create", *nodes, *CREATE],
                check=True,
                capture_output=True,
                timeout=30,
            )
            self.wait_for("ok")
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, port: int) -> None:
        """Kill the node on ``port`` (its slots go with it; no replica takes over)."""
        process = self.processes.pop(port)
        process.kill()
        process.wait()

    def restart(self, port: int) -> None:
        """Start the killed node again: it rejoins with its slots (the cluster config file
        remembers them)."""
        self._start(port)
        self.wait_for("ok")

    def wait_for(self, state: str) -> None:
        """Until every running node's ``cluster info`` says ``cluster_state:<state>``."""
        _wait(lambda: all(self._state(p) == state for p in self.processes), f"never {state}")

    def check(self) -> str:
        """``redis-cli --cluster check``'s report; fails on any error or warning."""
        done = subprocess.run(
            [_tool("redis-cli"), "--cluster", "check", f"127.0.0.1:{self.ports[0]}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        report = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # no colours
        assert done.returncode == 0 and "[ERR]" not in report and "[WARNING]" not in report, report
        return report

    def stop(self) -> None:
        for port in list(self.processes):
            self.kill(port)
        shutil.rmtree(self._dir, ignore_errors=True)

    def _start(self, port: int) -> None:
        self.processes[port] = subprocess.Popen(
            [
                _tool("redis-server"),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self._dir / f"nodes-{port}.conf"),
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--dir",
                str(self._dir),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: self._state(port) is not None, f"the node on {port} did not start")

    @staticmethod
    def _state(port: int) -> str | None:
        try:
            with redis.Redis(port=port, socket_timeout=1) as client:
                return str(client.cluster("info").get("cluster_state"))
        except redis.ConnectionError:
            return None
