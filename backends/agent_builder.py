"""Vertex AI Agent Builder (Vertex AI Search answers), streamed through
``ConversationalSearchServiceAsyncClient.stream_answer_query``."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Iterator
from typing import Any, Literal

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
from pydantic import BaseModel, ConfigDict, Field, model_validator

from backends.base import Citation, Delta, Done, Event, PermanentError, QARequest, Source, error_for
from backends.connection import ConnectionConfig, SdkClient
from backends.requests import RequestSettings
from backends.text import char_index, unseen_text

_SESSION_ID = re.compile(r"[A-Za-z0-9_-]+")
_SKIP_REASONS = {
    reason.value: name.lower() for name, reason in Answer.AnswerSkippedReason.__members__.items()
}
GenerationSpec = AnswerQueryRequest.AnswerGenerationSpec


class AnswerSettings(BaseModel):
    """The ``AnswerGenerationSpec`` fields users tune; unset fields keep Google's defaults."""

    model_config = ConfigDict(extra="forbid")

    model_version: str | None = None
    """``stable`` or ``preview``."""
    preamble: str | None = None
    """Instructions for the answer (``prompt_spec.preamble``)."""
    include_citations: bool = True
    answer_language_code: str | None = None
    """A BCP 47 tag (``en``, ``ko``, ...)."""
    ignore_adversarial_query: bool = False
    ignore_non_answer_seeking_query: bool = False
    ignore_jail_breaking_query: bool = False
    ignore_low_relevant_content: bool | None = None


class AgentBuilderConfig(ConnectionConfig):
    """``[backends.NAME]`` with ``type = "agent_builder"``: one engine's or data store's answers."""

    type: Literal["agent_builder"]
    project: str = "emulated-project"
    location: str = "global"
    collection: str = "default_collection"
    engine: str | None = None
    """The app (engine) id; set this or ``data_store``."""
    data_store: str | None = None
    serving_config: str = "default_serving_config"
    answer: AnswerSettings = Field(default_factory=AnswerSettings)
    related_questions: bool = False
    """Ask for related questions; they ride on ``done``."""
    user_pseudo_id: str | None = Field(None, min_length=1, max_length=128)
    """Visitor id Google uses for tracking and personalisation."""
    requests: RequestSettings = RequestSettings()
    """What one request may set: ``system``, as the answer's preamble."""

    @model_validator(mode="after")
    def _one_source(self) -> AgentBuilderConfig:
        if (self.engine is None) == (self.data_store is None):
            raise ValueError("set exactly one of engine and data_store")
        return self

    def parent(self) -> str:
        """The engine or data store resource name; sessions and serving configs live under it."""
        branch = f"engines/{self.engine}" if self.engine else f"dataStores/{self.data_store}"
        location = f"projects/{self.project}/locations/{self.location}"
        return f"{location}/collections/{self.collection}/{branch}"

    def default_endpoint(self) -> str:
        if self.location == "global":
            return "discoveryengine.googleapis.com"
        return f"{self.location}-discoveryengine.googleapis.com"

    def build(self, name: str) -> AgentBuilderBackend:
        return AgentBuilderBackend(name, self)


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
