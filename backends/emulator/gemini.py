"""Emulated ``google.cloud.aiplatform.v1.PredictionService/StreamGenerateContent``."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.cloud.aiplatform_v1 import (
    Candidate,
    Content,
    GenerateContentRequest,
    GenerateContentResponse,
    Part,
)

if TYPE_CHECKING:
    from backends.emulator.server import Emulator

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


def _responses(request: GenerateContentRequest, chunks: int) -> list[GenerateContentResponse]:
    query = " ".join(part.text for content in request.contents for part in content.parts)
    pieces = answer_chunks(query, chunks)
    limit = request.generation_config.max_output_tokens
    finish: Any = Candidate.FinishReason.STOP
    if limit and limit < len(pieces):
        pieces, finish = pieces[:limit], Candidate.FinishReason.MAX_TOKENS
    responses = [
        GenerateContentResponse(
            candidates=[Candidate(content=Content(role="model", parts=[Part(text=piece)]))]
        )
        for piece in pieces
    ]
    last = responses[-1]
    last.candidates[0].finish_reason = finish
    last.usage_metadata = GenerateContentResponse.UsageMetadata(
        prompt_token_count=len(query.split()),
        candidates_token_count=len(pieces),
        total_token_count=len(query.split()) + len(pieces),
    )
    return responses


def handler(emulator: Emulator) -> grpc.GenericRpcHandler:
    """The gRPC handler serving this method from ``emulator``."""

    async def stream_generate_content(
        request: GenerateContentRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[GenerateContentResponse]:
        call = emulator.record(METHOD, request)
        responses = _responses(request, emulator.behaviour.chunks)
        async for response in emulator.play(call, context, responses):
            yield response

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            METHOD: grpc.unary_stream_rpc_method_handler(
                stream_generate_content,
                request_deserializer=GenerateContentRequest.deserialize,
                response_serializer=GenerateContentResponse.serialize,
            )
        },
    )
