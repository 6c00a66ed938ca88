"""``qa-gateway ask`` as a user runs it: a subprocess against a served gateway."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from backends.emulator import Behaviour, Emulator
from backends.emulator.gemini import answer_chunks
from backends.emulator.search import DOCUMENTS, SENTENCES, answer_pieces
from tests.support import both, gateway

QUERY = "What does the terminal show?"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
async def url(emulator: Emulator) -> AsyncIterator[str]:
    async with gateway(both(emulator)) as base:
        yield base


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.cli",
        "ask",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run(*args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``qa-gateway ask ARGS``."""
    process = await start(*args)
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_prints_the_answer(url: str) -> None:
    code, out, err = await run(QUERY, "--url", url)

    assert (code, err) == (0, "")
    assert out == "".join(answer_chunks(QUERY, 8)) + "\n"


async def test_an_address_without_a_scheme_is_http(url: str) -> None:
    code, out, err = await run(QUERY, "--url", url.removeprefix("http://"))

    assert (code, err) == (0, "")
    assert out == "".join(answer_chunks(QUERY, 8)) + "\n"


async def test_lists_sources_and_the_session(url: str, emulator: Emulator) -> None:
    code, out, err = await run(QUERY, "--backend", "search", "--url", url)

    assert (code, err) == (0, "")
    pieces = answer_pieces(QUERY, 8)
    cited = dict.fromkeys(dict(SENTENCES)[piece.strip()] for piece in pieces)
    sources = [f"  [{n}] {DOCUMENTS[d][0]} <{DOCUMENTS[d][1]}>\n" for n, d in enumerate(cited, 1)]
    [call] = emulator.calls
    assert call.session is not None
    session = call.session.rsplit("/", 1)[1]
    assert out == (
        "".join(pieces)
        + "\n\nSources:\n"
        + "".join(sources)
        + f"\nSession: {session} (continue with --session)\n"
    )


async def test_session_continues_the_conversation(url: str, emulator: Emulator) -> None:
    await run(QUERY, "--backend", "search", "--url", url)
    [first] = emulator.calls
    assert first.session is not None
    session = first.session.rsplit("/", 1)[1]
    code, out, _ = await run("And then?", "--backend", "search", "--session", session, "--url", url)

    assert code == 0
    assert f"Session: {session} " in out
    assert emulator.calls[1].session == first.session
    assert emulator.calls[1].turn == 2


async def test_text_is_printed_as_it_arrives(url: str, emulator: Emulator) -> None:
    emulator.reset(Behaviour(chunks=100, delay_ms=20))
    pieces = answer_chunks(QUERY, 100)
    process = await start(QUERY, "--url", url)
    assert process.stdout is not None
    seen = await process.stdout.readexactly(len(pieces[0].encode()))

    assert seen.decode() == pieces[0]
    # The first piece is on the terminal while the upstream is still generating.
    assert not emulator.calls[0].completed
    rest, _ = await process.communicate()
    assert (seen + rest).decode() == "".join(pieces) + "\n"
    assert process.returncode == 0


async def test_failure_midway_keeps_the_text_and_says_why(url: str, emulator: Emulator) -> None:
    emulator.reset(Behaviour(fail_after=2))
    code, out, err = await run(QUERY, "--url", url)

    assert code == 1
    assert out == "".join(answer_chunks(QUERY, 8)[:2]) + "\n"
    assert err == "qa-gateway: the answer failed: emulated UNAVAILABLE (unavailable)\n"


async def test_an_error_status_is_one_line(url: str) -> None:
    code, out, err = await run(QUERY, "--backend", "nope", "--url", url)

    assert (code, out) == (1, "")
    assert err == (
        "qa-gateway: the gateway refused: no backend 'nope'; configured: gemini, search "
        "(unknown_backend, HTTP 404)\n"
    )


async def test_gateway_down_is_a_clear_message() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the CLI connects: refused
    code, out, err = await run(QUERY, "--url", f"http://127.0.0.1:{port}")

    assert (code, out) == (1, "")
    assert err.startswith(f"qa-gateway: cannot reach the gateway at http://127.0.0.1:{port}: ")
    assert err.count("\n") == 1
