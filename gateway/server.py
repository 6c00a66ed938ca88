"""Serving the app with uvicorn, draining open streams on SIGTERM."""

from __future__ import annotations

import math
from types import FrameType

import uvicorn
from fastapi import FastAPI

from gateway.http.guard import Guards
from gateway.http.observe import LOG_CONFIG


class GatewayServer(uvicorn.Server):
    """On SIGTERM/SIGINT: stop accepting, give open streams the grace period, then end
    each remaining one with a ``shutting_down`` error event (see ``Guards.drain``)."""

    def __init__(self, app: FastAPI, host: str, port: int, grace_s: float) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            proxy_headers=True,
            # uvicorn cuts what is still open after this; our own drain ends streams first.
            timeout_graceful_shutdown=math.ceil(grace_s) + 1,
            log_config=LOG_CONFIG,
            access_log=False,  # gateway.access logs every request, with more to say
        )
        super().__init__(config)
        self.app = app
        self.grace_s = grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        guards: Guards = self.app.state.guards
        guards.drain(self.grace_s)
        super().handle_exit(sig, frame)
