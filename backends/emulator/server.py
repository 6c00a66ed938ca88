"""One ``grpc.aio`` server hosting every emulated Google service, with shared fault knobs."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
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
    """Serves the server-streaming ``service/method`` with ``serve``, in the SDK's messages
    (proto-plus classes, or raw protobuf ones such as ``google.api.HttpBody``)."""
    serialize = getattr(response_class, "serialize", None) or response_class.SerializeToString
    return grpc.method_handlers_generic_handler(
        service,
        {
            method: grpc.unary_stream_rpc_method_handler(
                serve,
                request_deserializer=request_class.deserialize,
                response_serializer=serialize,
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
    """Agent Builder, Agent Engine: the session this call continued, started or asked about."""
    turn: int | None = None
    """Which turn of ``session`` this call answers (1 for a new session)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """The gRPC metadata or HTTP headers the call came with."""


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
    """The gRPC services' port."""
    rest_port: int = 0
    """The REST API's port (Gemini ``:streamGenerateContent``)."""
    sessions: dict[str, int] = field(default_factory=dict)
    """Agent Builder and Agent Engine sessions: name -> turns answered so far."""
    session_users: dict[str, str] = field(default_factory=dict)
    """Agent Engine sessions: name -> the user id that created it."""
    _server: grpc.aio.Server | None = None
    _rest: Any = None
    _failures: int = 0
    _hangs: int = 0

    def __post_init__(self) -> None:
        self.calls = deque(maxlen=self.keep_calls)

    @property
    def address(self) -> str:
        """``host:port`` of the gRPC services."""
        return f"127.0.0.1:{self.port}"

    @property
    def rest_address(self) -> str:
        """``host:port`` of the REST API."""
        return f"127.0.0.1:{self.rest_port}"

    def address_for(self, protocol: str) -> str:
        """Where a client of ``protocol`` (``grpc`` or ``rest``) connects."""
        return self.rest_address if protocol == "rest" else self.address

    async def start(self, host: str = "127.0.0.1", port: int = 0, rest_port: int = 0) -> Emulator:
        from backends.emulator import agent_engine, gemini, rest, search

        self._server = grpc.aio.server()
        handlers = (gemini.handler(self), search.handler(self), *agent_engine.handlers(self))
        self._server.add_generic_rpc_handlers(handlers)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        await self._server.start()
        self._rest, self.rest_port = await rest.start(self, host, rest_port)
        return self

    async def stop(self, grace: float | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._rest is not None:
            await self._rest.cleanup()
            self._rest = None

    def reset(self, behaviour: Behaviour | None = None) -> None:
        """Forget calls and sessions; start over with ``behaviour`` (default knobs if None)."""
        self.behaviour = behaviour or Behaviour()
        self.calls.clear()
        self.received = 0
        self.sessions.clear()
        self.session_users.clear()
        self._failures = 0
        self._hangs = 0

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    def record(self, method: str, request: Any) -> Call:
        call = Call(method, request)
        self.calls.append(call)
        self.received += 1
        return call

    async def play(self, call: Call, responses: Sequence[Any]) -> AsyncGenerator[Any, None]:
        """Hand out ``responses`` as the current ``Behaviour`` says; an injected failure raises
        ``Fault`` (each protocol renders it its own way)."""
        knobs = self.behaviour
        try:
            if self._failures < knobs.fail_first:
                self._failures += 1
                raise self._fault(call)
            if self._hangs < knobs.hang_first:
                self._hangs += 1
                await asyncio.Event().wait()
            for index, response in enumerate(responses):
                if index == knobs.fail_after:
                    raise self._fault(call)
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

    def _fault(self, call: Call) -> Fault:
        call.failed = self.behaviour.fail_code
        return Fault(self.behaviour.fail_code, self.behaviour.retry_after_ms)


async def grpc_play(
    emulator: Emulator, call: Call, context: grpc.aio.ServicerContext, responses: Sequence[Any]
) -> AsyncGenerator[Any, None]:
    """``Emulator.play`` over gRPC: a ``Fault`` aborts the call with its status. Closing this
    closes the play at once (so a cancellation is recorded when it happens, not when the
    collector gets to it)."""
    played = emulator.play(call, responses)
    try:
        async for response in played:
            yield response
    except Fault as fault:
        status = fault.status()
        await context.abort(status.code, status.details, status.trailing_metadata)
    finally:
        await played.aclose()


class Fault(Exception):
    """An injected failure: a gRPC status name, and the delay a ``RetryInfo`` asks for."""

    def __init__(self, code: str, retry_after_ms: float | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.retry_after_ms = retry_after_ms
        self.message = f"emulated {code}"

    def status(self) -> Any:
        """As a ``grpc.Status`` with Google's error details."""
        status = status_pb2.Status(code=grpc.StatusCode[self.code].value[0], message=self.message)
        if self.retry_after_ms is not None:
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.RetryInfo(retry_delay=self.retry_delay()))
            status.details.append(detail)
        return rpc_status.to_status(status)

    def retry_delay(self) -> duration_pb2.Duration:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(self.retry_after_ms or 0))
        return delay
