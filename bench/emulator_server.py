"""The project's emulator in its own process, steerable by the bench over stdin/stdout.

``python -m bench.emulator_server`` serves ``backends.emulator.Emulator`` on free ports (as
``qa-gateway emulate`` does, on the same default asyncio loop) and prints
``{"port": N, "rest_port": M}`` (gRPC, REST).
Then it answers one JSON line per JSON command line:

- ``{"op": "reset", "behaviour": {...}, "stamp": bool}``: new ``Behaviour`` knobs, calls
  forgotten; with ``stamp``, the monotonic time each response is handed to gRPC is kept
  per query (the clock is system-wide, so the bench can compare it with its arrival times).
- ``{"op": "calls"}``: how many calls the emulator received since the last reset.
- ``{"op": "stamps"}``: ``{query: [seconds, ...]}`` for the calls stamped since the reset.

The emulator itself is unchanged; this only counts what it records and wraps ``play``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from backends.emulator import Behaviour, Call, Emulator


class StampingEmulator(Emulator):
    """An ``Emulator`` that can note when each response leaves the handler."""

    stamp: bool = False
    stamps: dict[str, list[float]]

    async def play(self, call: Call, responses: Sequence[Any]) -> AsyncGenerator[Any, None]:
        if not self.stamp:
            async for response in super().play(call, responses):
                yield response
            return
        query = " ".join(part.text for content in call.request.contents for part in content.parts)
        times = self.stamps.setdefault(query, [])
        async for response in super().play(call, responses):
            times.append(time.monotonic())
            yield response


def _answer(emulator: StampingEmulator, command: dict[str, Any]) -> dict[str, Any]:
    op = command.get("op")
    if op == "reset":
        gc.collect()  # between scenarios, never inside one (see ``serve``)
        emulator.reset(Behaviour(**command.get("behaviour", {})))
        emulator.stamp = bool(command.get("stamp", False))
        emulator.stamps = {}
        return {"ok": True}
    if op == "calls":
        return {"calls": emulator.received}
    if op == "stamps":
        return {"stamps": emulator.stamps}
    return {"error": f"unknown op {op!r}"}


async def serve() -> None:
    emulator = StampingEmulator(Behaviour(chunks=20))
    emulator.stamps = {}
    await emulator.start()
    # Google's servers do not pause to collect garbage: with 1,000 open streams a full
    # collection here took ~100 ms, delayed every event due meanwhile and, worse, lined up
    # the streams whose timers fell due in it, so their events came in one burst every second
    # after. Collect only between scenarios.
    gc.collect()
    gc.freeze()
    gc.disable()
    print(json.dumps({"port": emulator.port, "rest_port": emulator.rest_port}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            answer = _answer(emulator, json.loads(line))
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        await emulator.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
