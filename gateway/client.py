"""The terminal client of ``qa-gateway ask``: stream one answer from a running gateway.

The answer text is written as it arrives, then its sources as a numbered list, then the
session id to continue the conversation with (``--session``). Anything that keeps the
answer from completing raises ``ClientError`` with a one-line reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TextIO

import httpx
import orjson

from backends.base import Citation, Delta, Done, Source
from gateway.events import event_from_body


class ClientError(Exception):
    """The answer could not be had, or not all of it."""


def print_answer(
    url: str,
    query: str,
    backend: str | None,
    session_id: str | None,
    out: TextIO,
    api_key: str | None = None,
) -> None:
    """Stream the answer to ``query`` from the gateway at ``url`` (``http://`` if it names
    no scheme) into ``out``, sending ``api_key`` (a key or a token) as ``Authorization:
    Bearer`` if given."""
    if "://" not in url:
        url = f"http://{url}"
    body: dict[str, Any] = {"query": query}
    if backend is not None:
        body["backend"] = backend
    if session_id is not None:
        body["session_id"] = session_id
    headers = {"Accept": "application/x-ndjson"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        with httpx.stream(
            "POST",
            f"{url.rstrip('/')}/qa",
            json=body,
            headers=headers,
            timeout=httpx.Timeout(10, read=None),  # the gateway bounds each wait itself
        ) as response:
            if response.is_error:
                response.read()
                raise ClientError(f"the gateway refused: {_problem(response)}")
            _render(response.iter_lines(), out)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise ClientError(f"cannot reach the gateway at {url}: {exc}") from None
    except httpx.TransportError as exc:
        out.write("\n")
        raise ClientError(f"lost the connection to the gateway: {exc}") from None


def _render(lines: Iterator[str], out: TextIO) -> None:
    """Write each delta as it comes, then the sources and session; raise on ``error``."""
    sources: dict[str, Source] = {}
    for line in lines:
        if not line:
            continue
        body = orjson.loads(line)
        kind = body.pop("type")
        if kind == "error":
            out.write("\n")
            raise ClientError(f"the answer failed: {body['message']} ({body['code']})")
        if kind == "meta":
            continue
        event = event_from_body(kind, body)
        if isinstance(event, Delta):
            out.write(event.text)
            out.flush()
        elif isinstance(event, Citation):
            for source in event.sources:
                sources.setdefault(source.uri, source)
        else:
            _finish(event, list(sources.values()), out)
            return
    out.write("\n")
    raise ClientError("the answer stopped before it was complete")


def _finish(done: Done, sources: list[Source], out: TextIO) -> None:
    out.write("\n")
    if done.finish_reason == "skipped":
        reasons = ", ".join(done.skip_reasons) or "none given"
        out.write(f"(no answer: the upstream skipped the question: {reasons})\n")
    elif done.finish_reason != "stop":
        out.write(f"(the answer was cut short: {done.finish_reason})\n")
    if sources:
        out.write("\nSources:\n")
        for number, source in enumerate(sources, 1):
            out.write(f"  [{number}] {source.title} <{source.uri}>\n")
    if done.session_id:
        out.write(f"\nSession: {done.session_id} (continue with --session)\n")
    out.flush()


def _problem(response: httpx.Response) -> str:
    """``message (code, HTTP status)`` from the gateway's error body, else the bare status."""
    try:
        error = response.json()["error"]
        return f"{error['message']} ({error['code']}, HTTP {response.status_code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
