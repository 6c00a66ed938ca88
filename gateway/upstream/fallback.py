"""Answering with the next backend when one fails transiently before starting."""

from __future__ import annotations

from backends.base import TransientError
from gateway.upstream.base import Answer, Ask, Upstream


class Fallback:
    """Tries each upstream in turn while the previous ones fail transiently before starting."""

    def __init__(self, chain: list[Upstream]) -> None:
        self.chain = chain

    async def open(self, ask: Ask) -> Answer:
        for upstream in self.chain[:-1]:
            try:
                return await upstream.open(ask)
            except TransientError:
                continue
        return await self.chain[-1].open(ask)
