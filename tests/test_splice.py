"""A fresh answer spliced after what clients have seen: the text beyond it, the citations not
sent yet, one ``done`` (a real Gemini backend on the emulator)."""

from __future__ import annotations

from backends.base import Citation, Delta, Done, Event, QARequest
from backends.emulator import Behaviour, Emulator
from backends.gemini import GeminiConfig
from gateway.upstream.base import Ask, Direct
from gateway.upstream.splice import Seen, beyond

QUESTION = QARequest("What is left to say?")


async def test_a_fresh_answer_goes_on_beyond_what_was_seen(emulator: Emulator) -> None:
    emulator.reset(Behaviour(chunks=6, grounded=True))
    config = {"endpoint": emulator.rest_address, "insecure": True, "transport": "rest"}
    backend = GeminiConfig(type="gemini", **config).build("gemini")
    try:
        whole = [event async for event in backend.stream(QUESTION)]
        text = "".join(event.text for event in whole if isinstance(event, Delta))
        citations = [event for event in whole if isinstance(event, Citation)]
        assert len(citations) == 2  # the first response's, and the whole answer's grounding
        first_delta = next(event for event in whole if isinstance(event, Delta))
        seen = Seen()
        seen.note([first_delta, citations[0], Delta("ab")])  # two characters into the next one
        answer = await Direct(backend).open(Ask(QUESTION))
        rest: list[Event] = [event async for batch in beyond(answer, seen) for event in batch]
    finally:
        await backend.aclose()
    assert "".join(event.text for event in rest if isinstance(event, Delta)) == text[seen.text :]
    assert [event for event in rest if isinstance(event, Citation)] == citations[1:]
    assert isinstance(rest[-1], Done) and sum(isinstance(event, Done) for event in rest) == 1
