"""What the backends on Google's SDK clients (gRPC) share: one client per backend on a
``grpc.aio`` channel, reads that nothing cancels, and how SDK and gRPC errors map."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Generic, TypeVar

import grpc
from google.api_core import exceptions as api_exceptions
from google.api_core.client_options import ClientOptions
from google.rpc import error_details_pb2

from backends.base import BackendError, error_for
from backends.connection import ConnectionConfig

C = TypeVar("C")
CHANNEL_OPTIONS = [("grpc.enable_retries", 0)]
"""gRPC's own transparent retries stay off: the gateway's retry layer decides, and every
received message skips the retry filter (~10 % of the client's CPU per streamed answer)."""
LAND_S = 1.0
"""How long a read in flight may take to land after its reader has gone."""
UPSTREAM_ERRORS = (api_exceptions.GoogleAPICallError, grpc.RpcError)
"""What a Google SDK call raises; pass these to ``map_error``."""


class SdkClient(Generic[C]):
    """One Google SDK async client per backend, built on first use (inside the running event
    loop, which a ``grpc.aio`` channel belongs to): plaintext without credentials for an
    emulator, else Google's endpoint with Application Default Credentials."""

    def __init__(
        self, client_class: Callable[..., C], transport_class: Any, config: ConnectionConfig
    ) -> None:
        self._build = client_class, transport_class
        self._config = config
        self._client: C | None = None

    def get(self) -> C:
        if self._client is None:
            client_class, transport_class = self._build
            config = self._config
            if config.insecure:
                channel = grpc.aio.insecure_channel(config.address(), options=CHANNEL_OPTIONS)
                self._client = client_class(transport=transport_class(channel=channel))
            else:

                def secure_channel(*args: Any, options: Any = (), **kwargs: Any) -> Any:
                    options = [*options, *CHANNEL_OPTIONS]
                    return transport_class.create_channel(*args, options=options, **kwargs)

                self._client = client_class(
                    client_options=ClientOptions(api_endpoint=config.address()),
                    transport=functools.partial(transport_class, channel=secure_channel),
                )
        return self._client

    @asynccontextmanager
    async def stream(self, method: str, request: Any) -> AsyncIterator[AsyncIterator[Any]]:
        """The responses of the server-streaming ``method``, within the config's deadline.

        SDK and gRPC errors leave as ``BackendError``; the call is cancelled on the way out,
        however it ends (see ``Responses.end``).
        """
        responses = None
        try:
            with upstream_errors():
                call = await getattr(self.get(), method)(
                    request=request, timeout=self._config.deadline_s
                )
                responses = Responses(call)
                yield responses
        finally:
            if responses is not None:
                responses.end()

    async def aclose(self) -> None:
        if self._client is not None:
            client: Any = self._client
            await client.transport.close()
            self._client = None


@contextmanager
def upstream_errors() -> Iterator[None]:
    """SDK and gRPC errors raised inside leave as ``BackendError`` (see ``map_error``)."""
    try:
        yield
    except UPSTREAM_ERRORS as exc:
        raise map_error(exc) from None


class Responses:
    """The messages of one streaming call, read so that nothing cancels a read in flight.

    ``grpc.aio`` frees a read's native batch only when the read lands: cancelling the task
    that awaits it (a client leaving, a timeout) leaks the batch, and cancelling the call
    under it as well (grpc/grpc#43360; ~0.5 KB per client that left mid-answer, never given
    back). So each read is shielded: a cancelled reader leaves its read to land, and ``end``
    cancels the call between messages.
    """

    __slots__ = ("_call", "_reading")

    def __init__(self, call: Any) -> None:
        self._call = call
        self._reading: asyncio.Future[Any] | None = None

    def __aiter__(self) -> Responses:
        return self

    async def __anext__(self) -> Any:
        self._reading = reading = asyncio.ensure_future(self._call.read())
        message = await asyncio.shield(reading)
        if message is grpc.aio.EOF:
            raise StopAsyncIteration
        return message

    def end(self) -> None:
        """Cancel the call: at once if no read is in flight, else when it lands, or after
        ``LAND_S`` if the upstream has gone quiet (then the batch is lost, as before)."""
        reading, call = self._reading, self._call
        if reading is None or reading.done() or reading.get_loop().is_closed():
            call.cancel()
            return
        quiet = reading.get_loop().call_later(LAND_S, call.cancel)

        def landed(read: asyncio.Future[Any]) -> None:
            quiet.cancel()
            call.cancel()
            if not read.cancelled():
                read.exception()  # nobody awaits it any more: retrieved here

        reading.add_done_callback(landed)


def retry_delay(details: Iterable[object]) -> float | None:
    """The delay a ``google.rpc.RetryInfo`` among the error details asks for, in seconds."""
    for detail in details:
        if isinstance(detail, error_details_pb2.RetryInfo):
            return float(detail.retry_delay.ToTimedelta().total_seconds())
    return None


def map_error(exc: BaseException) -> BackendError:
    """The one place where Google SDK and gRPC exceptions become ``BackendError``."""
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        status = exc.grpc_status_code
        code = status.name.lower() if status is not None else "unknown"
        return error_for(code, exc.message or code, retry_after=retry_delay(exc.details or ()))
    if isinstance(exc, grpc.aio.AioRpcError):
        return error_for(exc.code().name.lower(), exc.details() or "")
    return error_for("unknown", type(exc).__name__)
