"""Gemini on Vertex AI over REST: ``:streamGenerateContent?alt=sse`` on aiohttp.

The body is the proto3 JSON form of Google's ``GenerateContentRequest`` (its descriptor from
``backends.gemini_protos``: this transport loads no SDK), built once per backend with
everything but the conversation; each ``data:`` frame is a
``GenerateContentResponse`` in that form, read with orjson into the same events as the gRPC
transport. A ``data:`` frame holding ``{"error": ...}`` ends the answer with that error.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from typing import Any

import aiohttp
import orjson
from google.protobuf import json_format
from yarl import URL

from backends import gemini_protos
from backends.base import (
    Citation,
    Delta,
    Event,
    QARequest,
    Source,
    TransientError,
    Usage,
    error_for,
)
from backends.gemini import (
    PARAMETERS,
    GeminiConfig,
    ResponseReader,
    generation_fields,
    request_template,
)
from backends.rest import BearerTokens, google_error, http_error
from backends.text import char_index

_JSON_NAMES = {
    field.name: field.json_name
    for field in gemini_protos.message_class("GenerationConfig").DESCRIPTOR.fields
}
POOL_SIZE = 10_000
"""Connections one backend keeps open at most (each streams one answer at a time)."""


class GeminiRestBackend:
    """Streams one Gemini answer per request over a pool of keep-alive HTTP connections."""

    parameters = PARAMETERS

    def __init__(self, name: str, config: GeminiConfig, credentials: Any = None) -> None:
        """``credentials``: google-auth credentials to use instead of Application Default
        Credentials (none are used for an ``insecure`` endpoint unless given)."""
        self.name = name
        self.model = config.model
        self.emulated = config.emulator
        self.config = config
        scheme = "http" if config.insecure else "https"
        path = f"/v1/{config.model_path()}:streamGenerateContent"
        self._url = URL(f"{scheme}://{config.address()}{path}?alt=sse")  # parsed once
        message = gemini_protos.message_class("GenerateContentRequest")()
        template = json_format.MessageToDict(request_template(config, message))
        del template["model"]  # it is in the URL
        self._template: dict[str, Any] = template
        self._tokens = None
        if credentials is not None or not config.insecure:
            self._tokens = BearerTokens(credentials, config.quota_project)
        self._session: aiohttp.ClientSession | None = None

    def cache_identity(self) -> dict[str, object]:
        return self.config.cache_identity()

    async def stream(self, request: QARequest) -> AsyncGenerator[Event, None]:
        body = orjson.dumps(self._body(request))
        headers = {"Content-Type": "application/json"}
        if self._tokens is not None:
            headers |= await self._tokens.headers()
        reader = JsonResponseReader()
        response = None
        try:
            response = await self._client().post(self._url, data=body, headers=headers)
            if response.status != 200:
                raise http_error(response.status, await response.read())
            frames = SSEFrames()
            async for chunk in response.content.iter_any():
                for event in reader.events(frames.feed(chunk)):
                    yield event
                if reader.blocked_reason:
                    break
            else:
                for event in reader.events(frames.end()):
                    yield event
        except aiohttp.ClientError as exc:
            message = f"the connection failed: {type(exc).__name__}"
            raise TransientError("unavailable", message) from None
        except TimeoutError:
            raise error_for("deadline_exceeded", "the upstream stream timed out") from None
        finally:
            if response is not None:
                response.close()  # a half-read connection never goes back to the pool
        yield reader.done()

    def _body(self, request: QARequest) -> dict[str, Any]:
        """The template with the conversation, and what the request sets, spliced in."""
        contents = [{"role": turn.role, "parts": [{"text": turn.text}]} for turn in request.history]
        contents.append({"role": "user", "parts": [{"text": request.query}]})
        body = self._template | {"contents": contents}
        if request.generation is not None or request.system is not None:
            requests = self.config.requests
            requests.check(request, PARAMETERS)
            overrides = generation_fields(request.generation)
            if overrides:
                renamed = {_JSON_NAMES[name]: value for name, value in overrides.items()}
                body["generationConfig"] = body.get("generationConfig", {}) | renamed
            if request.system is not None:
                text = requests.instruction(self.config.system_instruction, request.system)
                body["systemInstruction"] = {"parts": [{"text": text}]}
        return body

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # inside the running loop, which the session belongs to
            connector = aiohttp.TCPConnector(limit=POOL_SIZE, limit_per_host=POOL_SIZE)
            timeout = aiohttp.ClientTimeout(total=self.config.deadline_s)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, skip_auto_headers=("User-Agent",)
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class SSEFrames:
    """The ``data`` of each server-sent event, from the body's chunks as they arrive."""

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The ``data`` of the events ``chunk`` completes."""
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        complete = []
        for line in lines:
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                self._data.append(line[5:])
            elif not line and self._data:
                complete.append(b"\n".join(self._data))
                self._data = []
        return complete

    def end(self) -> list[bytes]:
        """The ``data`` of an event the body ended in without its blank line."""
        complete = self.feed(b"\n\n")
        self._pending = b""
        return complete


class JsonResponseReader(ResponseReader):
    """``ResponseReader`` for responses in their proto3 JSON form (camelCase, defaults left out)."""

    def events(self, frames: list[bytes]) -> Iterator[Event]:
        """The events of the responses in these ``data:`` frames."""
        for frame in frames:
            yield from self.read(orjson.loads(frame))

    def read(self, response: Any) -> Iterator[Event]:
        if "error" in response:
            raise google_error(response["error"])
        candidates = response.get("candidates")
        if candidates:
            yield from self._candidate(candidates[0])
        meta = response.get("usageMetadata")
        if meta is not None:
            self.usage = Usage(
                meta.get("promptTokenCount", 0),
                meta.get("candidatesTokenCount", 0),
                meta.get("totalTokenCount", 0),
                meta.get("cachedContentTokenCount"),
                meta.get("thoughtsTokenCount"),
            )
        blocked = response.get("promptFeedback", {}).get("blockReason")
        if blocked:
            self.blocked_reason = blocked.lower()

    def _candidate(self, candidate: Any) -> Iterator[Event]:
        for part in candidate.get("content", {}).get("parts", ()):
            text = part.get("text")
            if text and not part.get("thought"):
                self.text += text
                yield Delta(text)
        cited = candidate.get("citationMetadata")
        if cited is not None:
            for citation in cited.get("citations", ()):
                source = Source(citation.get("title", ""), citation.get("uri", ""))
                start, end = citation.get("startIndex", 0), citation.get("endIndex", 0)
                yield Citation(start, end, (source,))
        grounding = candidate.get("groundingMetadata")
        if grounding is not None:
            yield from grounding_citations(grounding, self.text)
        finish = candidate.get("finishReason")
        if finish:
            self.finish_reason = finish.lower()


def grounding_citations(metadata: Any, text: str) -> Iterator[Citation]:
    """``backends.gemini.grounding_citations``, read from the JSON form."""
    encoded = text.encode()
    chunks = metadata.get("groundingChunks", [])
    for support in metadata.get("groundingSupports", ()):
        segment = support.get("segment", {})
        indices = support.get("groundingChunkIndices", ())
        sources = (_chunk_source(chunks[i]) for i in indices if i < len(chunks))
        yield Citation(
            char_index(encoded, segment.get("startIndex", 0)),
            char_index(encoded, segment.get("endIndex", 0)),
            tuple(source for source in sources if source is not None),
        )


def _chunk_source(chunk: dict[str, Any]) -> Source | None:
    for kind, found in chunk.items():
        snippet = found.get("text") if kind != "web" else None
        return Source(found.get("title", ""), found.get("uri", ""), snippet or None)
    return None
