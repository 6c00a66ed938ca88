"""Going on afresh where a followed answer broke off: the clients keep the events (and ids)
and the text they have, and get from a new answer only what lies beyond them."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from backends.base import Citation, Delta, Event
from gateway.upstream.base import Answer


@dataclass(slots=True)
class Seen:
    """What the clients were sent of an answer: how much text, and which citations."""

    text: int = 0
    citations: list[Citation] = field(default_factory=list)

    def note(self, batch: Sequence[Event]) -> None:
        for event in batch:
            if isinstance(event, Delta):
                self.text += len(event.text)
            elif isinstance(event, Citation):
                self.citations.append(event)


async def beyond(answer: Answer, seen: Seen) -> AsyncGenerator[Sequence[Event], None]:
    """``answer``'s events past ``seen``: its text after the first ``seen.text`` characters,
    the citations not sent yet, and its ``done``; closing this closes ``answer``."""
    at = 0  # characters of ``answer``'s text so far

    def new(batch: Sequence[Event]) -> list[Event]:
        nonlocal at
        kept: list[Event] = []
        for event in batch:
            if isinstance(event, Delta):
                skip, at = max(seen.text - at, 0), at + len(event.text)
                if skip < len(event.text):
                    kept.append(Delta(event.text[skip:]) if skip else event)
            elif not (isinstance(event, Citation) and event in seen.citations):
                kept.append(event)
        return kept

    try:
        if first := new((answer.first,)):
            yield first
        async for batch in answer.rest:
            if kept := new(batch):
                yield kept
    finally:
        await answer.aclose()
