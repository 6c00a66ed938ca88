"""Vertex AI Agent Builder (Vertex AI Search answers), streamed through
``ConversationalSearchServiceAsyncClient.stream_answer_query``; its config is
``backends.agent_builder``."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from google.cloud.discoveryengine_v1 import (
    Answer,
    AnswerQueryRequest,
    AnswerQueryResponse,
    ConversationalSearchServiceAsyncClient,
    Query,
)
from google.cloud.discoveryengine_v1.services.conversational_search_service.transports import (
    ConversationalSearchServiceGrpcAsyncIOTransport as Transport,
)

from backends.agent_builder import AgentBuilderConfig
from backends.base import Citation, Delta, Done, Event, PermanentError, QARequest, Source, error_for
from backends.sdk import SdkClient
from backends.text import char_index, unseen_text

_SESSION_ID = re.compile(r"[A-Za-z0-9_-]+")
_SKIP_REASONS = {
    reason.value: name.lower() for name, reason in Answer.AnswerSkippedReason.__members__.items()
}
GenerationSpec = AnswerQueryRequest.AnswerGenerationSpec


class AgentBuilderBackend:
    """Streams one search answer per request over one reused gRPC channel."""

    parameters = frozenset({"system"})

    def __init__(self, name: str, config: AgentBuilderConfig) -> None:
        self.name = name
        self.model = f"{config.engine or config.data_store}/{config.serving_config}"
        self.emulated = config.emulator
        self.config = config
        self._client = SdkClient(ConversationalSearchServiceAsyncClient, Transport, config)
        self._template = _request_template(config)
        self._sessions = f"{config.parent()}/sessions"

    def cache_identity(self) -> dict[str, object]:
        return self.config.cache_identity()

    async def stream(self, request: QARequest) -> AsyncGenerator[Event, None]:
        session_id = request.session_id or "-"
        if not _SESSION_ID.fullmatch(session_id):
            raise PermanentError("invalid_argument", "session_id: letters, digits, _ and - only")
        self.config.requests.check(request, self.parameters)
        grpc_request = AnswerQueryRequest(self._template)
        grpc_request.query = Query(text=request.query)
        if request.system is not None:
            preamble = self.config.requests.instruction(self.config.answer.preamble, request.system)
            grpc_request.answer_generation_spec.prompt_spec.preamble = preamble or ""
        grpc_request.session = f"{self._sessions}/{session_id}"
        reader = AnswerReader()
        try:
            async with self._client.stream("stream_answer_query", grpc_request) as responses:
                async for response in responses:
                    for event in reader.read(AnswerQueryResponse.pb(response)):
                        yield event
        except PermanentError as error:
            if error.code == "not_found" and request.session_id is not None:
                # On a follow-up turn NOT_FOUND is the session (a wrong engine fails every turn).
                raise PermanentError(
                    "session_not_found",
                    f"no session {session_id!r} (expired or never started): ask without "
                    "session_id to start a new conversation",
                ) from None
            raise
        yield reader.done()

    async def aclose(self) -> None:
        await self._client.aclose()


class AnswerReader:
    """Turns one stream of raw ``AnswerQueryResponse`` protobufs into events.

    Text may come as deltas or cumulatively (see ``unseen_text``). Citation offsets are
    UTF-8 byte offsets into the whole answer; they become character offsets into the text
    streamed so far, and each citation is given once even if later responses repeat it.
    A skipped answer yields no text (Google sends a fallback message then), only its reasons
    on ``done``; a FAILED answer raises.
    """

    def __init__(self) -> None:
        self.text = ""
        self.session_id: str | None = None
        self.skip_reasons: tuple[str, ...] = ()
        self.related_questions: tuple[str, ...] = ()
        self._references: Any = ()
        self._cited: set[tuple[int, int, tuple[str, ...]]] = set()

    def read(self, response: Any) -> Iterator[Event]:
        """The events one response adds."""
        if response.session.name:
            self.session_id = response.session.name.rsplit("/", 1)[-1]
        answer = response.answer
        if answer.state == Answer.State.FAILED:
            # Google gives no reason; the same question may well succeed when asked again.
            raise error_for("internal", "Agent Builder failed to generate the answer")
        if answer.answer_skipped_reasons:
            self.skip_reasons = tuple(
                _SKIP_REASONS.get(reason, f"reason_{reason}")
                for reason in answer.answer_skipped_reasons
            )
        if answer.related_questions:
            self.related_questions = tuple(answer.related_questions)
        if self.skip_reasons:
            return
        piece = unseen_text(self.text, answer.answer_text)
        if piece:
            self.text += piece
            yield Delta(piece)
        if answer.references:
            self._references = answer.references
        if answer.citations:
            yield from self._citations(answer.citations)

    def done(self) -> Done:
        """The terminal event, once the stream has ended."""
        return Done(
            "skipped" if self.skip_reasons else "stop",
            session_id=self.session_id,
            skip_reasons=self.skip_reasons,
            related_questions=self.related_questions,
        )

    def _citations(self, citations: Any) -> Iterator[Citation]:
        encoded = self.text.encode()
        for cited in citations:
            ids = tuple(source.reference_id for source in cited.sources)
            key = (cited.start_index, cited.end_index, ids)
            if key in self._cited:
                continue
            self._cited.add(key)
            sources = (self._source(reference_id) for reference_id in ids)
            yield Citation(
                char_index(encoded, cited.start_index),
                char_index(encoded, cited.end_index),
                tuple(source for source in sources if source is not None),
            )

    def _source(self, reference_id: str) -> Source | None:
        """The reference a citation names (by its index in ``references``), as a ``Source``."""
        if not reference_id.isdigit() or int(reference_id) >= len(self._references):
            return None
        return reference_source(self._references[int(reference_id)])


def reference_source(reference: Any) -> Source | None:
    """The title, URI and snippet of a raw ``Answer.Reference``, whichever kind it is."""
    kind = reference.WhichOneof("content")
    if kind == "unstructured_document_info":
        document = reference.unstructured_document_info
        snippet = "\n".join(chunk.content for chunk in document.chunk_contents if chunk.content)
        return Source(document.title, document.uri, snippet or None)
    if kind == "chunk_info":
        chunk = reference.chunk_info
        metadata = chunk.document_metadata
        return Source(metadata.title, metadata.uri, chunk.content or None)
    if kind == "structured_document_info":
        structured = reference.structured_document_info
        return Source(structured.title, structured.uri)
    return None


def _request_template(config: AgentBuilderConfig) -> AnswerQueryRequest:
    """Everything but the question and the session, built once from config."""
    settings = config.answer.model_dump(exclude_none=True)
    model_version = settings.pop("model_version", None)
    preamble = settings.pop("preamble", None)
    spec = GenerationSpec(**settings)
    if model_version:
        spec.model_spec = GenerationSpec.ModelSpec(model_version=model_version)
    if preamble:
        spec.prompt_spec = GenerationSpec.PromptSpec(preamble=preamble)
    return AnswerQueryRequest(
        serving_config=f"{config.parent()}/servingConfigs/{config.serving_config}",
        answer_generation_spec=spec,
        related_questions_spec=AnswerQueryRequest.RelatedQuestionsSpec(
            enable=config.related_questions
        ),
        user_pseudo_id=config.user_pseudo_id or "",
    )
