"""One ``grpc.aio`` server hosting every emulated Google service, with shared fault knobs."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

Serve = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]


def stream_handler(
    service: str, method: str, request_class: Any, response_class: Any, serve: Serve
) -> grpc.GenericRpcHandler:
    """Serves the server-streaming ``service/method`` with ``serve``, in the SDK's messages."""
    return grpc.method_handlers_generic_handler(
        service,
        {
            method: grpc.unary_stream_rpc_method_handler(
                serve,
                request_deserializer=request_class.deserialize,
                response_serializer=response_class.serialize,
            )
        },
    )


@dataclass
class Behaviour:
    """How the emulator answers. Change it between calls with ``Emulator.reset``."""

    chunks: int = 8
    """Pieces per answer (Gemini: text chunks; Agent Builder: sentences)."""
    delay_ms: float = 0.0
    """Pause before each chunk after the first."""
    first_delay_ms: float = 0.0
    """Pause before the first chunk."""
    fail_first: int = 0
    """Fail this many calls (counted from the last reset) before answering normally."""
    fail_code: str = "UNAVAILABLE"
    """gRPC status name used by every injected failure."""
    fail_after: int | None = None
    """Abort every call after sending this many chunks."""
    hang_after: int | None = None
    """Stop sending, without ending the call, after this many chunks (0: hang at once)."""
    hang_first: int = 0
    """Hang this many calls (counted from the last reset) before sending anything."""
    retry_after_ms: float | None = None
    """Attach a ``google.rpc.RetryInfo`` with this delay to injected failures."""
    cumulative: bool = False
    """Agent Builder: each response's ``answer_text`` is the whole answer so far, not the next
    sentence."""
    skip_marker: str = "[skip]"
    """A query containing this is skipped (Agent Builder: fallback text and skipped reasons)
    or blocked (Gemini: ``prompt_feedback.block_reason`` SAFETY and no candidates)."""
    thoughts: bool = False
    """Gemini: every response leads with a thought part (which is never answer text)."""
    grounded: bool = False
    """Gemini: the first response cites a source (``citation_metadata``), the last grounds
    the whole answer in one web source (``grounding_metadata``, offsets in UTF-8 bytes)."""


@dataclass
class Call:
    """One RPC the emulator received."""

    method: str
    request: Any
    received_at: float = field(default_factory=time.monotonic)
    chunks_sent: int = 0
    completed: bool = False
    cancelled: bool = False
    failed: str | None = None
    session: str | None = None
    """Agent Builder: the session this call continued or started."""
    turn: int | None = None
    """Agent Builder: which turn of ``session`` this call answers (1 for a new session)."""


@dataclass
class Emulator:
    """Serves the emulated services on one port and records its calls: the last
    ``keep_calls`` of them in ``calls`` (a ring, so a long-running emulator stays bounded),
    and how many it received in ``received``, both since the last reset."""

    behaviour: Behaviour = field(default_factory=Behaviour)
    keep_calls: int = 1000
    calls: deque[Call] = field(init=False)
    received: int = 0
    port: int = 0
    sessions: dict[str, int] = field(default_factory=dict)
    """Agent Builder sessions: name -> turns answered so far."""
    _server: grpc.aio.Server | None = None
    _failures: int = 0
    _hangs: int = 0

    def __post_init__(self) -> None:
        self.calls = deque(maxlen=self.keep_calls)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Emulator:
        from backends.emulator import gemini, search

        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((gemini.handler(self), search.handler(self)))
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        await self._server.start()
        return self

    async def stop(self, grace: float | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    def reset(self, behaviour: Behaviour | None = None) -> None:
        """Forget calls and sessions; start over with ``behaviour`` (default knobs if None)."""
        self.behaviour = behaviour or Behaviour()
        self.calls.clear()
        self.received = 0
        self.sessions.clear()
        self._failures = 0
        self._hangs = 0

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def record(self, method: str, request: Any) -> Call:
        call = Call(method, request)
        self.calls.append(call)
        self.received += 1
        return call

    async def play(
        self, call: Call, context: grpc.aio.ServicerContext, responses: Sequence[Any]
    ) -> AsyncIterator[Any]:
        """Send ``responses`` to the caller, applying the current ``Behaviour``."""
        knobs = self.behaviour
        try:
            if self._failures < knobs.fail_first:
                self._failures += 1
                await self._abort(call, context)
            if self._hangs < knobs.hang_first:
                self._hangs += 1
                await asyncio.Event().wait()
            for index, response in enumerate(responses):
                if index == knobs.fail_after:
                    await self._abort(call, context)
                if index == knobs.hang_after:
                    await asyncio.Event().wait()
                delay = knobs.first_delay_ms if index == 0 else knobs.delay_ms
                if delay:
                    await asyncio.sleep(delay / 1000)
                yield response
                call.chunks_sent += 1
            call.completed = True
        except (asyncio.CancelledError, GeneratorExit):
            call.cancelled = True
            raise

    async def _abort(self, call: Call, context: grpc.aio.ServicerContext) -> None:
        knobs = self.behaviour
        code = grpc.StatusCode[knobs.fail_code]
        call.failed = knobs.fail_code
        status = status_pb2.Status(code=code.value[0], message=f"emulated {knobs.fail_code}")
        if knobs.retry_after_ms is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(int(knobs.retry_after_ms))
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
            status.details.append(detail)
        grpc_status = rpc_status.to_status(status)
        await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)
