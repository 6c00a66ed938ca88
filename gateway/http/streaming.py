"""Answering over HTTP with the least work per request and per chunk, and never for nobody.

``Departure`` cancels the request's task the moment the client disconnects, from the wait
for the first event (retries and backoff included) to the last byte; cleanup (cancelling
the upstream call) happens in the answer's ``finally`` blocks. ``EventStream`` sends each
chunk as it is produced, in the request's own task: Starlette's ``StreamingResponse`` would
run an anyio task group with a second task listening for the disconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from types import TracebackType

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.formats import Format, Head, Outcome, Outcomes, ends


class Departure:
    """``async with Departure(receive):`` the client leaving cancels the work inside, and
    that cancellation ends the request quietly (nobody is left to answer).

    Enter once the request body has been read: from then on ``receive`` only ever brings the
    disconnect.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.left = False

    async def __aenter__(self) -> Departure:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher: asyncio.Future[None] | None = asyncio.ensure_future(self._watch())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        watcher, self._watcher = self._watcher, None  # its frame, in its error, refers to self
        assert watcher is not None
        watcher.cancel()
        if not self.left:
            return False
        self._task.uncancel()
        return kind is None or issubclass(kind, (asyncio.CancelledError, OSError))

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.left = True
        self._task.cancel()


class EventStream(StreamingResponse):
    """Sends the answer in ``format``, each chunk as it is produced (inside a ``Departure``);
    the chunk of its last outcome goes out with the end of the body, in one write, once the
    iterators behind it are done.

    ``close`` runs however the response ends, even if nothing was read.
    """

    def __init__(
        self,
        format: Format,
        head: Head,
        outcomes: Outcomes,
        headers: dict[str, str],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self._over = False
        self._content = format.encode(head, self._noting_the_end(outcomes))
        super().__init__(self._content, media_type=format.media_type, headers=headers)
        self.close = close

    async def _noting_the_end(self, outcomes: Outcomes) -> AsyncGenerator[Sequence[Outcome], None]:
        async for batch in outcomes:
            self._over = ends(batch)
            yield batch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            last: list[bytes] = []
            async for chunk in self._content:
                if self._over:
                    last.append(chunk)
                else:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"".join(last), "more_body": False})
        finally:
            await self.close()
