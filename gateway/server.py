"""Serving the app with uvicorn, draining open streams on SIGTERM."""

from __future__ import annotations

import logging
import math
import resource
from types import FrameType

import uvicorn
from fastapi import FastAPI

from gateway.http.connection import LimitedHttp, ServerSettings
from gateway.http.guard import Guards
from gateway.http.observe import LOG_CONFIG

log = logging.getLogger("gateway")
_SPARE_FILES = 256
"""Descriptors beyond ``max_connections``: the upstream channels, Redis, logs."""


class GatewayServer(uvicorn.Server):
    """On SIGTERM/SIGINT: stop accepting, give open streams the grace period, then end
    each remaining one with a ``shutting_down`` error event (see ``Guards.drain``).

    Connections get the limits of ``[server]`` (``gateway.http.connection``)."""

    def __init__(
        self, app: FastAPI, host: str, port: int, grace_s: float, limits: ServerSettings
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=LimitedHttp.with_limits(limits),
            timeout_keep_alive=limits.keep_alive_s,
            proxy_headers=True,
            # uvicorn cuts what is still open after this; our own drain ends streams first.
            timeout_graceful_shutdown=math.ceil(grace_s) + 1,
            log_config=LOG_CONFIG,
            access_log=False,  # gateway.access logs every request, with more to say
        )
        super().__init__(config)
        self.app = app
        self.grace_s = grace_s
        allow_open_files(limits.max_connections + _SPARE_FILES)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        guards: Guards = self.app.state.guards
        guards.drain(self.grace_s)
        super().handle_exit(sig, frame)


def allow_open_files(wanted: int) -> None:
    """Raise the soft limit on open files to ``wanted`` if the hard limit allows (else as
    far as it does, with a warning): past it, new connections fail before any 503."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            log.warning(
                "open files limited to %d: max_connections beyond %d cannot be reached",
                target,
                target - _SPARE_FILES,
            )
