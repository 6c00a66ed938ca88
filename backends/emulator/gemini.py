"""Emulated ``google.cloud.aiplatform.v1.PredictionService/StreamGenerateContent``."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import grpc
from google.cloud.aiplatform_v1 import (
    Candidate,
    Citation,
    CitationMetadata,
    Content,
    GenerateContentRequest,
    GenerateContentResponse,
    GroundingChunk,
    GroundingMetadata,
    GroundingSupport,
    Part,
    Segment,
)

from backends.emulator.server import grpc_play, stream_handler

if TYPE_CHECKING:
    from backends.emulator.server import Behaviour, Emulator

SOURCE = GroundingChunk.Web(title="Emulated source", uri="https://source.example/answer")
"""What a ``grounded`` answer cites."""

SERVICE = "google.cloud.aiplatform.v1.PredictionService"
METHOD = "StreamGenerateContent"

_WORDS = [
    "streams",
    "clouds",
    "vertex",
    "answers",
    "quickly",
    "gently",
    "every",
    "token",
    "arrives",
    "in",
    "order",
    "while",
    "the",
    "gateway",
    "keeps",
    "its",
    "promise",
    "to",
    "frontends",
    "and",
    "operators",
    "alike",
]


def answer_chunks(query: str, chunks: int) -> list[str]:
    """The deterministic answer to ``query``, in ``chunks`` pieces that join to the full text."""
    digest = hashlib.sha256(query.encode()).digest()
    words = [_WORDS[digest[i % len(digest)] % len(_WORDS)] for i in range(max(chunks, 1))]
    words[0] = words[0].capitalize()
    pieces = [word + " " for word in words]
    pieces[-1] = words[-1] + "."
    return pieces


def responses_for(
    request: GenerateContentRequest, knobs: Behaviour
) -> list[GenerateContentResponse]:
    """The answer to ``request`` as the responses of one stream."""
    query = " ".join(part.text for content in request.contents for part in content.parts)
    if knobs.skip_marker and knobs.skip_marker in query:
        blocked = GenerateContentResponse.PromptFeedback.BlockedReason.SAFETY
        return [GenerateContentResponse(prompt_feedback={"block_reason": blocked})]
    pieces = answer_chunks(query, knobs.chunks)
    limit = request.generation_config.max_output_tokens
    finish: Any = Candidate.FinishReason.STOP
    if limit and limit < len(pieces):
        pieces, finish = pieces[:limit], Candidate.FinishReason.MAX_TOKENS
    thought = [Part(text="Thinking it over.", thought=True)] if knobs.thoughts else []
    responses = [
        GenerateContentResponse(
            candidates=[Candidate(content=Content(role="model", parts=[*thought, Part(text=p)]))]
        )
        for p in pieces
    ]
    first, last = responses[0].candidates[0], responses[-1].candidates[0]
    if knobs.grounded:
        cited = Citation(end_index=len(pieces[0]), title=SOURCE.title, uri=SOURCE.uri)
        first.citation_metadata = CitationMetadata(citations=[cited])
        whole = Segment(end_index=len("".join(pieces).encode()))
        last.grounding_metadata = GroundingMetadata(
            grounding_chunks=[GroundingChunk(web=SOURCE)],
            grounding_supports=[GroundingSupport(segment=whole, grounding_chunk_indices=[0])],
        )
    last.finish_reason = finish
    responses[-1].usage_metadata = GenerateContentResponse.UsageMetadata(
        prompt_token_count=len(query.split()),
        candidates_token_count=len(pieces),
        total_token_count=len(query.split()) + len(pieces),
        thoughts_token_count=len(pieces) if knobs.thoughts else 0,
    )
    return responses


def handler(emulator: Emulator) -> grpc.GenericRpcHandler:
    """The gRPC handler serving this method from ``emulator``."""

    async def stream_generate_content(
        request: GenerateContentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[GenerateContentResponse]:
        call = emulator.record(METHOD, request)
        call.metadata = dict(context.invocation_metadata() or ())
        responses = responses_for(request, emulator.behaviour)
        async with aclosing(grpc_play(emulator, call, context, responses)) as played:
            async for response in played:
                yield response

    return stream_handler(
        SERVICE, METHOD, GenerateContentRequest, GenerateContentResponse, stream_generate_content
    )
