"""What one request may set: ``[backends.NAME.requests]``, the same for every backend."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backends.base import PermanentError, QARequest

GENERATION = frozenset(
    {
        "temperature",
        "top_p",
        "top_k",
        "max_output_tokens",
        "stop_sequences",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_mime_type",
        "response_schema",
    }
)
"""Every ``Generation`` field."""


class RequestSettings(BaseModel):
    """Which request parameters (``system`` and the ``Generation`` fields) a request may set."""

    model_config = ConfigDict(extra="forbid")

    allow: list[str] | None = None
    """The parameters allowed; unset: every one the backend supports."""
    max_output_tokens: int | None = Field(None, gt=0)
    """The most a request may ask for."""
    system: Literal["append", "replace", "deny"] = "append"
    """A request's ``system``: after the configured instruction, instead of it, or refused."""

    def check(self, request: QARequest, supported: frozenset[str]) -> None:
        """Refuse (``unsupported_parameter``) what the backend cannot or may not honour, and
        a ``max_output_tokens`` over the ceiling (``invalid_argument``)."""
        for name in request.parameters():
            allowed = self.allow is None or name in self.allow
            if name not in supported or not allowed or (name == "system" and self.system == "deny"):
                where = name if name == "system" else f"generation.{name}"
                raise PermanentError("unsupported_parameter", f"{where}: not accepted here")
        asked = request.generation.max_output_tokens if request.generation else None
        if (
            self.max_output_tokens is not None
            and asked is not None
            and asked > self.max_output_tokens
        ):
            raise PermanentError(
                "invalid_argument",
                f"generation.max_output_tokens: at most {self.max_output_tokens} here",
            )

    def instruction(self, configured: str | None, asked: str | None) -> str | None:
        """The instruction an answer is given: ``asked`` joined to or replacing ``configured``."""
        if asked is None:
            return configured
        if self.system == "replace" or not configured:
            return asked
        return f"{configured}\n\n{asked}"
