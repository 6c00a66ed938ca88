"""Operators' view: Prometheus metrics and one JSON log line per request.

``Observed`` wraps the ASGI app: it starts each request's ``Trace`` (and its request id), and
when the response is over, however it ended, turns the trace into metrics and a log line.
The query text is logged only when ``log_queries`` is on.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from functools import partial
from typing import Any, TypeVar

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.upstream.base import Principal
from gateway.upstream.trace import Trace

log = logging.getLogger("gateway.access")
M = TypeVar("M", bound=MetricWrapperBase)
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_QUIET = frozenset({"/healthz", "/readyz", "/metrics"})
_ROUTES = frozenset({"/qa", "/v1/chat/completions", "/v1/models", "/backends", "/"})
"""Paths counted under their own name; any other is ``other`` (label values stay bounded)."""
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        counter = partial(Counter, registry=registry)
        latency = partial(Histogram, labelnames=["backend"], buckets=_LATENCY, registry=registry)
        by_backend = ["backend"]
        self.requests = counter(
            "qa_requests",
            "Requests by route, backend, status and tenant.",
            ["route", "backend", "status", "tenant"],
        )
        self.first_event = latency(
            "qa_time_to_first_event_seconds", "From request to the first upstream event."
        )
        self.duration = latency(
            "qa_stream_duration_seconds", "From request to the end of the stream."
        )
        self.open_streams = Gauge("qa_open_streams", "Streams in progress.", registry=registry)
        self.retries = counter("qa_retries", "Upstream attempts after the first.", by_backend)
        self.fallbacks = counter(
            "qa_fallbacks", "Answers given by a fallback backend.", ["backend", "answered_by"]
        )
        self.upstream_errors = counter(
            "qa_upstream_errors", "Upstream failures by code.", ["backend", "code"]
        )
        self.cache = counter("qa_cache", "Cache results: HIT, MISS, BYPASS.", ["backend", "result"])
        self.coalesced = counter(
            "qa_coalesced", "Requests that shared another's upstream call.", by_backend
        )
        self.redis_errors = counter("qa_redis_errors", "Failed Redis calls.")
        self.limits_unchecked = counter(
            "qa_limits_unchecked", "Requests whose limits Redis could not check."
        )
        self.redis_bad_values = counter(
            "qa_redis_bad_values", "Redis keys found holding a wrong or undecodable value."
        )
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}

    def record(self, route: str, trace: Trace, tenant: str) -> None:
        backend = trace.backend or ""
        child = self._child
        child(self.requests, route, backend, str(trace.status), tenant).inc()
        if not trace.backend:
            return
        if trace.retries:
            child(self.retries, backend).inc(trace.retries)
        for code in trace.upstream_errors:
            child(self.upstream_errors, backend, code).inc()
        if trace.answered_by and trace.answered_by != backend:
            child(self.fallbacks, backend, trace.answered_by).inc()
        if trace.cache:
            child(self.cache, backend, trace.cache).inc()
        if trace.coalesced:
            child(self.coalesced, backend).inc()
        if trace.first_event_s is not None:
            child(self.first_event, backend).observe(trace.first_event_s)
            child(self.duration, backend).observe(time.perf_counter() - trace.started)

    def _child(self, metric: M, *values: str) -> M:
        """``metric.labels(*values)``, looked up once (that call validates and locks)."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found


class Observed:
    """ASGI middleware: a ``Trace`` per request, reported as metrics and a JSON log line."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, log_queries: bool = False, tenant: str = "default"
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_queries = log_queries
        self.tenant = tenant
        """The tenant of requests the front door let in without a principal."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"")
        request_id = given.decode() if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        trace = Trace(request_id)
        scope.setdefault("state", {})["trace"] = trace
        header = (b"x-request-id", request_id.encode())
        streaming = False

        async def send_with_id(message: Message) -> None:
            nonlocal streaming
            if message["type"] == "http.response.start":
                trace.status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
                if trace.first_event_s is not None:
                    streaming = True
                    self.metrics.open_streams.inc()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if streaming:
                self.metrics.open_streams.dec()
            path = scope["path"]
            if path not in _QUIET:
                if trace.status == 0:
                    trace.status = 500
                principal: Principal | None = scope["state"].get("principal")
                tenant = self.tenant if principal is None else principal.tenant
                self.metrics.record(path if path in _ROUTES else "other", trace, tenant)
                fields = self._fields(scope, trace)
                fields["principal"] = None if principal is None else principal.name
                fields["tenant"] = tenant
                log.info("request", extra={"fields": fields})

    def _fields(self, scope: Scope, trace: Trace) -> dict[str, Any]:
        line: dict[str, Any] = {
            "request_id": trace.request_id,
            "method": scope["method"],
            "path": scope["path"],
            "status": trace.status,
            "backend": trace.backend,
            "answered_by": trace.answered_by,
            "cache": trace.cache,
            "attempts": trace.attempts,
            "coalesced": trace.coalesced,
            "first_event_ms": _ms(trace.first_event_s),
            "duration_ms": _ms(time.perf_counter() - trace.started),
            "outcome": trace.outcome,
        }
        if trace.user is not None:
            line["user"] = trace.user
        if self.log_queries and trace.query is not None:
            line["query"] = trace.query
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line, with ``severity`` as Cloud Logging reads it."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": JSONFormatter}},
    "handlers": {
        "stdout": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stdout",
        }
    },
    "loggers": {
        "gateway": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
        "uvicorn": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
    },
}
"""Logging for ``qa-gateway serve``: the gateway's and uvicorn's logs as JSON lines."""


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
