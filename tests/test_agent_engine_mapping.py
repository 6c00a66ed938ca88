"""``AdkReader``: ADK events, in the bytes of HttpBody chunks, become our events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from backends.agent_engine import AgentEngineConfig
from backends.agent_engine_grpc import AdkReader
from backends.base import (
    Citation,
    Delta,
    Done,
    Event,
    PermanentError,
    Source,
    TransientError,
    Usage,
)
from backends.emulator.agent_engine import INTERMEDIATE_TEXT, adk_events, answer_pieces, chunked

QUERY = "Wie streamen Agenten?"


def read(chunks: list[bytes], include_intermediate: bool = False) -> list[Event]:
    reader = AdkReader(include_intermediate)
    events = [event for chunk in chunks for event in reader.read(chunk)]
    return [*events, *reader.close(), reader.done("s-1")]


def lines(*events: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(event) + b"\n" for event in events)


def text(role: str = "model", partial: bool = False, **event: Any) -> dict[str, Any]:
    """An event of ``author`` agent with the ``event`` fields and a text part ``text``."""
    parts = [{"text": event.pop("text")}] if "text" in event else []
    parts += event.pop("parts", [])
    return {
        "author": "agent",
        "partial": partial,
        "content": {"role": role, "parts": parts},
    } | event


def test_the_emulated_run_reads_the_same_however_its_bytes_are_cut() -> None:
    stream = b"".join(body.data for body in chunked(adk_events(QUERY, 6, 1)))
    whole = read([stream])

    pieces = answer_pieces(QUERY, 6)
    assert [event for event in whole if isinstance(event, Delta)] == [Delta(p) for p in pieces]
    assert read([stream[i : i + 1] for i in range(len(stream))]) == whole  # byte by byte
    for cut in range(0, len(stream), 7):
        assert read([stream[:cut], stream[cut:]]) == whole
    assert whole[-1] == Done("stop", Usage(19, 9, 28), session_id="s-1")


def test_the_emulator_packs_and_splits_lines_across_chunks() -> None:
    chunks = [body.data for body in chunked(adk_events(QUERY, 6, 1))]

    assert len(chunks) == 6
    assert chunks[0].count(b"\n") == 3  # the tool call, its response and the first piece
    assert all(not chunk.endswith(b"\n") for chunk in chunks[:-1])  # each breaks a line off
    assert chunks[-1].count(b"\n") == 2  # the end of the last piece, and the final event


def test_final_event_is_not_repeated_and_adds_what_partials_missed() -> None:
    events = read([lines(text(text="Hel", partial=True), text(text="lo"))])
    assert events[:-1] == [Delta("Hel"), Delta("lo")]
    repeated = read([lines(text(text="Hel", partial=True), text(text="Hello"))])
    assert repeated[:-1] == [Delta("Hel"), Delta("lo")]
    whole = read([lines(text(text="Hel", partial=True), text(text="lo", partial=True))])
    assert read([lines(text(text="Hello"))])[:-1] == [Delta("Hello")]
    assert whole[:-1] == [Delta("Hel"), Delta("lo")]


def test_tool_calls_and_their_steps_text_stay_out_of_the_answer() -> None:
    call = {"function_call": {"name": "lookup", "args": {"secret": "args"}}}
    response = {"function_response": {"name": "lookup", "response": {"secret": "result"}}}
    stream = lines(
        text(text="Thinking. ", parts=[call]),
        text(role="user", parts=[response]),
        {"author": "user", "content": {"role": "user", "parts": [{"text": "the question"}]}},
        text(text="Answer.", parts=[{"text": "hidden", "thought": True}]),
    )
    assert read([stream])[:-1] == [Delta("Answer.")]
    assert read([stream], include_intermediate=True)[:-1] == [Delta("Thinking. "), Delta("Answer.")]


def test_partial_text_after_a_tool_call_in_its_step_is_held_back() -> None:
    call = {"function_call": {"name": "lookup", "args": {}}}
    stream = lines(
        text(partial=True, parts=[call]),
        text(text="about to call", partial=True),
        text(text="about to call", parts=[call]),
        text(text="Done."),
    )
    assert read([stream])[:-1] == [Delta("Done.")]


def test_grounding_offsets_index_the_whole_answer_in_characters() -> None:
    grounding = {
        "grounding_chunks": [
            {"web": {"uri": "https://a.example", "title": "A"}},
            {"retrieved_context": {"uri": "gs://b", "title": "B", "text": "snippet"}},
        ],
        "grounding_supports": [
            {"segment": {"start_index": 7, "end_index": 13}, "grounding_chunk_indices": [0, 1]},
        ],
        "web_search_queries": ["q"],
        "some_future_field": {"x": 1},
    }
    first = text(text="Première étape. ")
    second = text(text="안녕 세계입니다", grounding_metadata=grounding)
    events = read([lines(first, second)])

    [citation] = [event for event in events if isinstance(event, Citation)]
    whole = "Première étape. 안녕 세계입니다"
    assert whole[citation.start : citation.end] == "세계"  # bytes 7..13 of the second step
    assert citation.sources == (
        Source("A", "https://a.example"),
        Source("B", "gs://b", "snippet"),
    )


def test_usage_adds_up_over_model_calls_and_finish_reason_is_kept() -> None:
    usage = {"prompt_token_count": 2, "candidates_token_count": 3, "total_token_count": 5}
    stream = lines(
        text(text="a", partial=True, usage_metadata=usage),  # partial: counted in the final
        text(text="a", usage_metadata=usage),
        text(text="b", usage_metadata=usage, finish_reason="MAX_TOKENS"),
    )
    assert read([stream])[-1] == Done("max_tokens", Usage(4, 6, 10), session_id="s-1")


def test_a_last_line_without_newline_is_read_at_the_end() -> None:
    assert read([orjson.dumps(text(text="tail"))])[:-1] == [Delta("tail")]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("MALFORMED_FUNCTION_CALL", PermanentError),
        ("UNAVAILABLE", TransientError),
        ("429", TransientError),
    ],
)
def test_an_error_event_raises_after_the_text_before_it(code: str, error: type) -> None:
    reader = AdkReader()
    stream = lines(text(text="so far", partial=True), {"error_code": code, "error_message": "no"})
    seen: list[Event] = []
    with pytest.raises(error) as raised:
        seen.extend(reader.read(stream))
    assert seen == [Delta("so far")]
    assert raised.value.message == "no"
    assert raised.value.code == {"429": "resource_exhausted"}.get(code, code.lower())


def test_a_line_that_is_not_json_is_an_upstream_failure() -> None:
    with pytest.raises(TransientError, match="not JSON"):
        read([b"<html>\n"])


def test_intermediate_text_of_the_emulated_agent() -> None:
    stream = b"".join(body.data for body in chunked(adk_events(QUERY, 3, 2)))
    deltas = [e for e in read([stream], include_intermediate=True) if isinstance(e, Delta)]
    assert "".join(d.text for d in deltas) == INTERMEDIATE_TEXT + "".join(
        answer_pieces(QUERY, 3, 2)
    )


def test_config_names_the_engine_and_keeps_whose_session_out_of_cache_keys() -> None:
    config = AgentEngineConfig(type="agent_engine", reasoning_engine="123", location="europe-west4")
    assert (
        config.engine() == "projects/emulated-project/locations/europe-west4/reasoningEngines/123"
    )
    full = "projects/p/locations/us-east1/reasoningEngines/9"
    named = AgentEngineConfig(type="agent_engine", reasoning_engine=full)
    assert (named.engine(), named.default_endpoint()) == (
        full,
        "us-east1-aiplatform.googleapis.com",
    )
    assert config.default_endpoint() == "europe-west4-aiplatform.googleapis.com"
    assert config.cache_identity() == {
        "type": "agent_engine",
        "project": "emulated-project",
        "location": "europe-west4",
        "reasoning_engine": "123",
        "class_method": "async_stream_query",
        "include_intermediate": False,
        "requests": {"allow": None, "max_output_tokens": None, "system": "append"},
    }
