"""The answer routes, dispatched ahead of the framework.

``/qa`` and ``/v1/chat/completions`` are plain ASGI endpoints. Reached through FastAPI's
router they also pass its exception middleware, exit stack and route matching: about a tenth
of a cache hit's CPU. ``Dispatch`` hands a request for one of them straight to its endpoint
and everything else on to the app; the table is read from the routers the app includes, so
they stay the one list of what is served (and the router still answers 405 for other
methods).
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.http.errors import HTTPProblem


class Dispatch:
    """Sends ``(method, path)`` of the fixed-path plain-ASGI routes straight to their
    endpoint; an ``HTTPProblem`` before the response starts becomes its JSON error here, as
    the app's handler makes it for every other route."""

    def __init__(self, app: ASGIApp, routes: list[BaseRoute]) -> None:
        self.app = app
        self.endpoints = {
            (method, route.path): route.app
            for route in routes
            if isinstance(route, Route)
            and route.app is route.endpoint  # a plain ASGI app, not a wrapped function
            and not route.param_convertors
            for method in route.methods or ()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = None
        if scope["type"] == "http":
            endpoint = self.endpoints.get((scope["method"], scope["path"]))
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await endpoint(scope, receive, watched)
        except HTTPProblem as problem:
            if started:
                raise
            await problem.response()(scope, receive, send)
