"""Agents deployed on Vertex AI Agent Engine (ADK apps), streamed through
``ReasoningEngineExecutionServiceAsyncClient.stream_query_reasoning_engine``, with their
sessions kept by ``SessionServiceAsyncClient``; their config is ``backends.agent_engine``."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import orjson
from google.cloud.aiplatform_v1 import (
    CreateSessionRequest,
    GetSessionRequest,
    GroundingMetadata,
    ReasoningEngineExecutionServiceAsyncClient,
    Session,
    SessionServiceAsyncClient,
    StreamQueryReasoningEngineRequest,
)
from google.cloud.aiplatform_v1.services.reasoning_engine_execution_service.transports.grpc_asyncio import (  # noqa: E501
    ReasoningEngineExecutionServiceGrpcAsyncIOTransport as RunsTransport,
)
from google.cloud.aiplatform_v1.services.session_service.transports.grpc_asyncio import (
    SessionServiceGrpcAsyncIOTransport as SessionsTransport,
)
from google.protobuf import json_format, struct_pb2

from backends.agent_engine import AgentEngineConfig
from backends.base import Citation, Delta, Done, Event, PermanentError, QARequest, Usage, error_for
from backends.gemini import grounding_citations
from backends.sdk import SdkClient, upstream_errors
from backends.text import unseen_text

_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_HTTP_CODES = {"429": "resource_exhausted", "500": "internal", "503": "unavailable"}


class AgentEngineBackend:
    """Streams one agent run per request; a first turn creates the session it runs in."""

    parameters: frozenset[str] = frozenset()

    def __init__(self, name: str, config: AgentEngineConfig) -> None:
        self.name = name
        self._engine = config.engine()
        self.model = self._engine.rsplit("/", 1)[-1]  # the reasoning engine's id
        self.emulated = config.emulator
        self.config = config
        self._runs = SdkClient(ReasoningEngineExecutionServiceAsyncClient, RunsTransport, config)
        self._sessions = SdkClient(SessionServiceAsyncClient, SessionsTransport, config)

    def cache_identity(self) -> dict[str, object]:
        return self.config.cache_identity()

    async def stream(self, request: QARequest) -> AsyncGenerator[Event, None]:
        self.config.requests.check(request, self.parameters)
        user = request.user or self.config.user_id
        session_id = request.session_id
        if session_id is not None:
            await self._check_session(session_id, user)
        elif not self.config.stateless:
            session_id = await self._create_session(user)
        query = struct_pb2.Struct()
        query.update({"message": request.query, "user_id": user})
        if session_id is not None:
            query["session_id"] = session_id
        grpc_request = StreamQueryReasoningEngineRequest(
            name=self._engine, input=query, class_method=self.config.class_method
        )
        reader = AdkReader(self.config.include_intermediate)
        async with self._runs.stream("stream_query_reasoning_engine", grpc_request) as bodies:
            async for body in bodies:
                for event in reader.read(body.data):
                    yield event
        for event in reader.close():
            yield event
        yield reader.done(session_id)

    async def _create_session(self, user: str) -> str:
        """A new session of ``user`` under the engine (the long-running operation, awaited)."""
        request = CreateSessionRequest(parent=self._engine, session=Session(user_id=user))
        deadline = self.config.deadline_s
        with upstream_errors():
            operation: Any = await self._sessions.get().create_session(
                request=request, retry=None, timeout=deadline
            )
            session = await operation.result(timeout=deadline)
        return str(session.name).rsplit("/", 1)[-1]

    async def _check_session(self, session_id: str, user: str) -> None:
        """``session_not_found`` unless the session exists and belongs to ``user``."""
        if not _SESSION_ID.fullmatch(session_id):
            raise PermanentError("invalid_argument", "session_id: letters, digits, _ and - only")
        request = GetSessionRequest(name=f"{self._engine}/sessions/{session_id}")
        try:
            with upstream_errors():
                session = await self._sessions.get().get_session(
                    request=request, retry=None, timeout=self.config.deadline_s
                )
        except PermanentError as error:
            if error.code != "not_found":
                raise
            session = None
        if session is None or session.user_id != user:  # another's session is none of yours
            raise PermanentError(
                "session_not_found",
                f"no session {session_id!r} (expired or never started): ask without "
                "session_id to start a new conversation",
            )

    async def aclose(self) -> None:
        await self._runs.aclose()
        await self._sessions.aclose()


class AdkReader:
    """Turns the bytes of ``HttpBody`` chunks, newline-delimited ADK events, into our events.

    A line may be split across chunks and a chunk may carry several lines. A *step* is the
    model's events up to its non-partial one: ``partial`` events' text streams as it comes,
    and the step's non-partial event adds only what they did not already stream. Text of a
    step that calls a tool is the agent thinking aloud: left out unless
    ``include_intermediate``; function calls and responses are never text. Grounding
    segments (UTF-8 byte offsets into the step's text) become ``Citation`` offsets into the
    whole answer; ``usage_metadata`` of the non-partial events adds up; ``error_code`` raises.
    """

    def __init__(self, include_intermediate: bool = False) -> None:
        self.include_intermediate = include_intermediate
        self.text = ""
        self.finish_reason = "stop"
        self.usage: Usage | None = None
        self._pending = b""
        self._step_start = 0  # where the current step's text starts in ``text``
        self._step_calls_tools = False

    def read(self, data: bytes) -> Iterator[Event]:
        """The events one chunk completes."""
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            yield from self._line(line)

    def close(self) -> Iterator[Event]:
        """The events of a last line that had no newline after it."""
        line, self._pending = self._pending, b""
        yield from self._line(line)

    def done(self, session_id: str | None) -> Done:
        return Done(self.finish_reason, self.usage, session_id=session_id)

    def _line(self, line: bytes) -> Iterator[Event]:
        try:
            event = orjson.loads(line) if line.strip() else None
        except orjson.JSONDecodeError:
            raise error_for("internal", "the agent sent a line that is not JSON") from None
        if isinstance(event, dict):
            yield from self._event(event)

    def _event(self, event: dict[str, Any]) -> Iterator[Event]:
        if event.get("error_code"):
            code = str(event["error_code"])
            message = str(event.get("error_message") or code)
            raise error_for(_HTTP_CODES.get(code, code.lower()), message)
        content = event.get("content")
        content = content if isinstance(content, dict) else {}
        parts = [part for part in content.get("parts") or () if isinstance(part, dict)]
        if content.get("role", "model") == "model" and event.get("author") != "user":
            if any("function_call" in part or "function_response" in part for part in parts):
                self._step_calls_tools = True
            text = "".join(str(part.get("text") or "") for part in parts if not part.get("thought"))
            yield from self._text(text, bool(event.get("partial")))
        if event.get("partial"):
            return
        if isinstance(event.get("grounding_metadata"), dict):
            yield from self._citations(event["grounding_metadata"])
        if isinstance(event.get("usage_metadata"), dict):
            self._add_usage(event["usage_metadata"])
        if event.get("finish_reason"):
            self.finish_reason = str(event["finish_reason"]).lower()
        self._step_start, self._step_calls_tools = len(self.text), False

    def _text(self, text: str, partial: bool) -> Iterator[Delta]:
        if self._step_calls_tools and not self.include_intermediate:
            return
        piece = text if partial else unseen_text(self.text[self._step_start :], text)
        if piece:
            self.text += piece
            yield Delta(piece)

    def _citations(self, metadata: dict[str, Any]) -> Iterator[Citation]:
        grounding = GroundingMetadata.pb()()
        try:  # ADK's JSON is google-genai's form of the same message
            json_format.ParseDict(metadata, grounding, ignore_unknown_fields=True)
        except json_format.ParseError:
            return  # sources the SDK cannot read are left out, not the answer
        base = self._step_start
        for cited in grounding_citations(grounding, self.text[base:]):
            yield Citation(cited.start + base, cited.end + base, cited.sources)

    def _add_usage(self, meta: dict[str, Any]) -> None:
        """Each model call reports its own tokens: the answer's usage is their sum."""
        so_far = self.usage or Usage(0, 0, 0)
        self.usage = Usage(
            so_far.prompt_tokens + int(meta.get("prompt_token_count") or 0),
            so_far.completion_tokens + int(meta.get("candidates_token_count") or 0),
            so_far.total_tokens + int(meta.get("total_token_count") or 0),
        )
