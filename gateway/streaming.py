"""``EventStream``: a streaming response with the least work per request and per chunk.

Starlette's ``StreamingResponse`` runs each stream in an anyio task group with a second task
listening for the disconnect. Here the stream runs in the request's own task and one small
watcher task cancels it when the client goes away; cleanup (cancelling the upstream call)
happens in the iterator's ``finally`` blocks, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class EventStream(StreamingResponse):
    """Sends each chunk of ``content`` as it is produced; stops when the client leaves.

    ``close`` runs however the response ends, even if ``content`` was never read.
    """

    def __init__(
        self,
        content: AsyncIterator[bytes],
        media_type: str,
        headers: dict[str, str],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self.close = close
        self.client_left = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.ensure_future(self._watch(receive, task))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except (asyncio.CancelledError, OSError):
            if not self.client_left:
                raise
            task.uncancel()  # the client left: the stream ends here, quietly
        finally:
            watcher.cancel()
            await self.close()

    async def _watch(self, receive: Receive, task: asyncio.Task[object]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.client_left = True
        task.cancel()
