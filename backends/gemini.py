"""Gemini on Vertex AI: its config, and what both transports share (the request template,
the mapping of ``GenerateContentResponse`` to events).

``transport = "rest"`` streams over Vertex REST (``backends.gemini_rest``), ``"grpc"`` with
the SDK's ``PredictionServiceAsyncClient`` (``backends.gemini_grpc``). This module loads no
SDK: Google's descriptors come from ``backends.gemini_protos``, and a transport is imported
when a backend is built.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, TypeVar

from google.protobuf import json_format
from pydantic import Field, field_validator

from backends import gemini_protos
from backends.base import (
    Backend,
    Citation,
    Delta,
    Done,
    Event,
    Generation,
    Source,
    Usage,
)
from backends.connection import ConnectionConfig
from backends.requests import GENERATION, RequestSettings
from backends.text import char_index


class GenerationSettings(Generation):
    """The subset of ``GenerationConfig`` users tune; unset fields keep Google's defaults."""

    candidate_count: int | None = Field(None, gt=0)


PARAMETERS = GENERATION | {"system"}
"""Gemini honours every request parameter."""


_THRESHOLDS = gemini_protos.enum_names("SafetySetting.HarmBlockThreshold")
_CATEGORIES = gemini_protos.enum_names("HarmCategory")


class GeminiConfig(ConnectionConfig):
    """``[backends.NAME]`` with ``type = "gemini"``."""

    type: Literal["gemini"]
    transport: Literal["rest", "grpc"] = "rest"
    """``rest``: Vertex REST streaming (``alt=sse``) on aiohttp; ``grpc``: the SDK's client."""
    quota_project: str | None = None
    """REST: bill this project's quota (``x-goog-user-project``)."""
    project: str = "emulated-project"
    location: str = "us-central1"
    model: str = "gemini-2.5-flash"
    generation: GenerationSettings = GenerationSettings()
    safety: dict[str, str] = Field(default_factory=dict)
    """Harm category -> block threshold, by their API names (``HARM_CATEGORY_HATE_SPEECH =
    "BLOCK_ONLY_HIGH"``)."""
    system_instruction: str | None = None
    requests: RequestSettings = RequestSettings()
    """What one request may set (``generation``, ``system``)."""

    @field_validator("safety")
    @classmethod
    def _known_safety_names(cls, value: dict[str, str]) -> dict[str, str]:
        for category, threshold in value.items():
            if category not in _CATEGORIES:
                raise ValueError(f"unknown harm category {category!r}")
            if threshold not in _THRESHOLDS:
                raise ValueError(f"unknown threshold {threshold!r} for {category}")
        return value

    def default_endpoint(self) -> str:
        if self.location == "global":
            return "aiplatform.googleapis.com"
        return f"{self.location}-aiplatform.googleapis.com"

    def protocol(self) -> str:
        return self.transport

    def cache_identity(self) -> dict[str, object]:
        identity = super().cache_identity()
        del identity["transport"], identity["quota_project"]  # the same answer either way
        return identity

    def model_path(self) -> str:
        """The model's resource name."""
        location = f"projects/{self.project}/locations/{self.location}"
        return f"{location}/publishers/google/models/{self.model}"

    def build(self, name: str) -> Backend:
        if self.transport == "rest":
            from backends.gemini_rest import GeminiRestBackend

            return GeminiRestBackend(name, self)
        from backends.gemini_grpc import GeminiGrpcBackend

        return GeminiGrpcBackend(name, self)


class ResponseReader:
    """Turns one stream of raw ``GenerateContentResponse`` protobufs into events.

    Only the first candidate is read, and thought parts are never answer text. A prompt
    blocked by ``prompt_feedback`` ends the answer as ``skipped``, with the block reason.
    """

    def __init__(self) -> None:
        self.text = ""
        self.finish_reason = "stop"
        self.usage: Usage | None = None
        self.blocked_reason: str | None = None

    def read(self, response: Any) -> Iterator[Event]:
        """The events one response adds."""
        # Presence checks first: reading an unset message field builds an empty one.
        if response.candidates:
            yield from self._candidate(response.candidates[0])
        if response.HasField("usage_metadata"):
            meta = response.usage_metadata
            self.usage = Usage(
                meta.prompt_token_count,
                meta.candidates_token_count,
                meta.total_token_count,
                meta.cached_content_token_count or None,
                meta.thoughts_token_count or None,
            )
        if response.HasField("prompt_feedback") and response.prompt_feedback.block_reason:
            feedback = response.prompt_feedback
            self.blocked_reason = feedback.BlockedReason.Name(feedback.block_reason).lower()

    def done(self) -> Done:
        """The terminal event, once the stream has ended (or a block ended it)."""
        if self.blocked_reason:
            return Done("skipped", self.usage, skip_reasons=(self.blocked_reason,))
        return Done(self.finish_reason, self.usage)

    def _candidate(self, candidate: Any) -> Iterator[Event]:
        for part in candidate.content.parts:
            if part.text and not part.thought:
                self.text += part.text
                yield Delta(part.text)
        if candidate.HasField("citation_metadata"):
            # The SDK documents these offsets only as an "index into the content", with no
            # unit (grounding segments say bytes): they pass through unchanged.
            for cited in candidate.citation_metadata.citations:
                source = Source(cited.title, cited.uri)
                yield Citation(cited.start_index, cited.end_index, (source,))
        if candidate.HasField("grounding_metadata"):
            yield from grounding_citations(candidate.grounding_metadata, self.text)
        if candidate.finish_reason:
            self.finish_reason = candidate.FinishReason.Name(candidate.finish_reason).lower()


def grounding_citations(metadata: Any, text: str) -> Iterator[Citation]:
    """A raw ``GroundingMetadata``'s supports as citations into ``text``, the answer so far.

    The SDK documents segment offsets as UTF-8 bytes; they become character offsets.
    """
    encoded = text.encode()
    chunks = metadata.grounding_chunks
    for support in metadata.grounding_supports:
        sources = (
            _chunk_source(chunks[i]) for i in support.grounding_chunk_indices if i < len(chunks)
        )
        yield Citation(
            char_index(encoded, support.segment.start_index),
            char_index(encoded, support.segment.end_index),
            tuple(source for source in sources if source is not None),
        )


def _chunk_source(chunk: Any) -> Source | None:
    """The title, URI and (for retrieved and maps chunks) text of a raw ``GroundingChunk``."""
    kind = chunk.WhichOneof("chunk_type")
    if kind is None:
        return None
    found = getattr(chunk, kind)
    snippet = found.text if kind != "web" and found.text else None
    return Source(found.title, found.uri, snippet)


def generation_fields(settings: Generation | None) -> dict[str, Any]:
    """Generation settings (a request's, or the configured ones) by ``GenerationConfig``
    field name."""
    given = settings.given() if settings is not None else {}
    if "response_schema" in given:  # a JSON Schema: the field that takes one as it is
        given["response_json_schema"] = given.pop("response_schema")
    return given


M = TypeVar("M")


def request_template(config: GeminiConfig, message: M) -> M:
    """Everything but the conversation, built once from config into ``message``: an empty raw
    ``GenerateContentRequest``, of the SDK's classes (gRPC) or of ``gemini_protos`` (REST)."""
    fields: dict[str, Any] = {
        "model": config.model_path(),
        "generation_config": generation_fields(config.generation),
        "safety_settings": [
            {"category": category, "threshold": threshold}
            for category, threshold in config.safety.items()
        ],
    }
    if config.system_instruction:
        fields["system_instruction"] = {"parts": [{"text": config.system_instruction}]}
    json_format.ParseDict(fields, message)
    return message
