"""Gemini over gRPC: ``PredictionServiceAsyncClient.stream_generate_content``."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from google.cloud.aiplatform_v1 import (
    GenerateContentRequest,
    GenerateContentResponse,
    GenerationConfig,
    PredictionServiceAsyncClient,
)
from google.cloud.aiplatform_v1.services.prediction_service.transports.grpc_asyncio import (
    PredictionServiceGrpcAsyncIOTransport,
)

from backends.base import Event, QARequest
from backends.gemini import (
    PARAMETERS,
    GeminiConfig,
    ResponseReader,
    generation_fields,
    request_template,
)
from backends.sdk import SdkClient


class GeminiGrpcBackend:
    """Streams one Gemini answer per request over one reused gRPC channel."""

    parameters = PARAMETERS

    def __init__(self, name: str, config: GeminiConfig) -> None:
        self.name = name
        self.model = config.model
        self.emulated = config.emulator
        self.config = config
        self._client = SdkClient(
            PredictionServiceAsyncClient, PredictionServiceGrpcAsyncIOTransport, config
        )
        self._template = request_template(config, GenerateContentRequest.pb()())

    def cache_identity(self) -> dict[str, object]:
        return self.config.cache_identity()

    async def stream(self, request: QARequest) -> AsyncGenerator[Event, None]:
        self.config.requests.check(request, PARAMETERS)
        # The raw protobuf, then wrapped: proto-plus would marshal the question field by field.
        message = GenerateContentRequest.pb()()
        message.CopyFrom(self._template)
        overrides = generation_fields(request.generation)
        if overrides:
            for field in overrides:  # a request's value replaces the configured one
                message.generation_config.ClearField(field)
            message.generation_config.MergeFrom(GenerationConfig.pb(GenerationConfig(**overrides)))
        if request.system is not None:
            instruction = self.config.requests.instruction(
                self.config.system_instruction, request.system
            )
            message.system_instruction.Clear()
            message.system_instruction.parts.add(text=instruction)
        for turn in request.history:
            message.contents.add(role=turn.role).parts.add(text=turn.text)
        message.contents.add(role="user").parts.add(text=request.query)
        reader = ResponseReader()
        grpc_request = GenerateContentRequest.wrap(message)
        async with self._client.stream("stream_generate_content", grpc_request) as responses:
            async for response in responses:
                for event in reader.read(GenerateContentResponse.pb(response)):
                    yield event
                if reader.blocked_reason:
                    break
        yield reader.done()

    async def aclose(self) -> None:
        await self._client.aclose()
