"""Per-principal limits: requests per minute, open answers at once, tokens per day."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LimitOverrides(BaseModel):
    """Limits of one principal; unset ones fall back to ``[limits]`` (none: unlimited)."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, gt=0)
    """Requests per minute."""
    concurrent: int | None = Field(None, gt=0)
    """Answers open at once."""
    tokens_per_day: int | None = Field(None, gt=0)
    """Tokens (``done.usage.total_tokens``) per UTC day."""
