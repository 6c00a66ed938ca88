"""The processes a bench run drives: emulator, gateway, trivial server; and what /proc says of them.

Each runs as its own child process so that CPU and memory are measured per process, the way
a deployment would see them. CPU time is ``utime + stime`` of ``/proc/PID/stat`` (all threads,
clock ticks), RSS is ``VmRSS`` of ``/proc/PID/status``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

TICK_S = 1 / os.sysconf("SC_CLK_TCK")
NOFILE = 65536


def raise_fd_limit(wanted: int = NOFILE) -> int:
    """Raise this process's open-file limit as far as the hard limit allows; the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used so far (every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S  # fields 14 and 15 of stat(5)


def machine_busy_s() -> float:
    """CPU seconds every core of the machine has spent busy since boot (``/proc/stat``)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) * TICK_S


def maps_mention(pid: int, name: str) -> bool:
    """Whether the process has a file whose path contains ``name`` mapped (a loaded C module)."""
    return name in Path(f"/proc/{pid}/maps").read_text()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Child:
    """A child process and the log its output goes to."""

    name: str
    process: subprocess.Popen[str]
    log: Path
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def check(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _spawn(
    name: str, argv: list[str], workdir: Path, *, cwd: Path | None = None, control: bool = False
) -> Child:
    log = workdir / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    if cwd is not None:
        env["PYTHONPATH"] = str(cwd)
    with log.open("w") as out:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            text=True,
            stdin=subprocess.PIPE if control else subprocess.DEVNULL,
            stdout=subprocess.PIPE if control else out,
            stderr=out,
            preexec_fn=raise_fd_limit,
        )
    return Child(name, process, log)


class EmulatorProcess:
    """``bench.emulator_server``: the project's ``Emulator`` in a process, driven over stdin."""

    def __init__(self, workdir: Path) -> None:
        self.child = _spawn(
            "emulator", [sys.executable, "-m", "bench.emulator_server"], workdir, control=True
        )
        first = self._read()
        self.port = int(first["port"])
        self.address = f"127.0.0.1:{self.port}"
        """gRPC."""
        self.rest_address = f"127.0.0.1:{first['rest_port']}"

    @property
    def pid(self) -> int:
        return self.child.pid

    def ask(self, op: str, **args: Any) -> dict[str, Any]:
        stdin = self.child.process.stdin
        assert stdin is not None
        stdin.write(json.dumps({"op": op, **args}) + "\n")
        stdin.flush()
        return self._read()

    def _read(self) -> dict[str, Any]:
        stdout: IO[str] | None = self.child.process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            self.child.check()
            raise RuntimeError("the emulator closed its output")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def stop(self) -> None:
        if self.child.process.stdin is not None:
            self.child.process.stdin.close()
        self.child.stop()


GATEWAY_CONFIG = """\
default_backend = "gemini"
{top}

[backends.gemini]
type = "gemini"
transport = "{transport}"
endpoint = "{address}"
insecure = true
"""


def start_gateway(
    workdir: Path,
    emulator: EmulatorProcess,
    root: Path | None,
    transport: str = "rest",
    *,
    extra_config: str = "",
    redis_url: str | None = None,
    launcher: Sequence[str] = ("gateway.cli",),
) -> tuple[Child, int]:
    """``qa-gateway serve`` on a free port, its Gemini backend on ``emulator`` over
    ``transport``; from ``root`` if given.

    ``extra_config`` (TOML tables) is appended to the config; ``redis_url``, if given, is the
    cache's Redis (every key it writes expires); ``launcher`` is the module to
    run and its arguments before ``serve`` (a wrapper of ``gateway.cli``, or that itself).
    """
    address = emulator.rest_address if transport == "rest" else emulator.address
    config = workdir / f"gateway-{transport}.toml"
    top = "" if redis_url is None else f'redis_url = "{redis_url}"'
    text = GATEWAY_CONFIG.format(address=address, transport=transport, top=top)
    config.write_text(text + extra_config)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        *launcher,
        "serve",
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    return _spawn(f"gateway-{transport}", argv, workdir, cwd=root), port


def start_floor(workdir: Path, emulator: EmulatorProcess) -> tuple[Child, int]:
    """``bench.floor``: a bare relay of the emulator's REST API on the gateway's stack."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.floor", "--port", str(port)]
    return _spawn("floor", [*argv, "--upstream", emulator.rest_address], workdir), port


def start_trivial(workdir: Path, events: int) -> tuple[Child, int]:
    """``bench.trivial``: canned answers, to measure the load generator alone."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.trivial", "--port", str(port), "--events", str(events)]
    return _spawn("trivial", argv, workdir), port


def wait_http_ready(child: Child, port: int, path: str = "/readyz", timeout: float = 60) -> float:
    """Poll ``GET path`` until it answers 200; the seconds since the child was started."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        child.check()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(request)
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return time.monotonic() - child.started_at
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{child.name} not ready after {timeout} s; see {child.log}")
