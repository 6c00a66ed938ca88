"""``python -m bench.memprobe OUT qa-gateway-args...``: the gateway, telling its memory on SIGUSR1.

On ``SIGUSR1`` the process collects garbage, then writes one JSON line to ``OUT``: ``rss_kb``
(``VmRSS``) and glibc's ``mallinfo2`` in-use bytes (``uordblks`` + ``hblkhd``, every arena:
what native code holds, which ``tracemalloc`` does not see). Everything else is
``qa-gateway`` unchanged.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from bench.procs import rss_kb


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def malloc_in_use() -> int:
    """Bytes glibc's allocator has handed out and not yet been given back (all arenas)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def snapshot() -> dict[str, int]:
    gc.collect()
    return {"rss_kb": rss_kb(os.getpid()), "malloc_kb": malloc_in_use() // 1024}


def main() -> int:
    out = Path(sys.argv[1])

    def report(_sig: int, _frame: FrameType | None) -> None:
        with out.open("a") as handle:
            handle.write(json.dumps(snapshot()) + "\n")

    signal.signal(signal.SIGUSR1, report)
    from gateway.cli import main as gateway_main

    return gateway_main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
