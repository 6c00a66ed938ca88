"""Pure mapping: text bookkeeping, offsets, and Agent Builder responses -> events."""

from __future__ import annotations

from typing import Any

import pytest
from google.cloud.discoveryengine_v1 import Answer, AnswerQueryResponse, Session
from pydantic import ValidationError

from backends.agent_builder import AgentBuilderConfig
from backends.agent_builder_grpc import AnswerReader, reference_source
from backends.base import Citation, Delta, Done, Source, TransientError
from backends.text import char_index, unseen_text

KOREAN = "서울은 한국의 수도입니다."  # 14 characters, 36 bytes


@pytest.mark.parametrize(
    ("streamed", "answer_text", "expected"),
    [
        ("", "First. ", "First. "),
        ("First. ", "Second.", "Second."),  # a delta
        ("First. ", "First. Second.", "Second."),  # cumulative
        ("First. Second.", "First. Second.", ""),  # the whole answer again
        ("First. ", "", ""),
    ],
)
def test_unseen_text(streamed: str, answer_text: str, expected: str) -> None:
    assert unseen_text(streamed, answer_text) == expected


@pytest.mark.parametrize(
    ("text", "byte_index", "expected"),
    [
        ("hello", 3, 3),
        (KOREAN, 9, 3),  # three 3-byte characters
        (KOREAN, len(KOREAN.encode()), len(KOREAN)),
        ("a😀b", 5, 2),  # a 4-byte character
        ("é", 1, 0),  # inside a character: rounds down
        ("abc", 99, 3),
        ("abc", -1, 0),
    ],
)
def test_char_index(text: str, byte_index: int, expected: int) -> None:
    assert char_index(text.encode(), byte_index) == expected


def response(text: str = "", **answer: Any) -> Any:
    """A raw ``AnswerQueryResponse`` protobuf, as the backend reads it."""
    message = AnswerQueryResponse(answer=Answer(answer_text=text, **answer))
    return AnswerQueryResponse.pb(message)


def read(*responses: Any) -> list[Any]:
    reader = AnswerReader()
    events = [event for message in responses for event in reader.read(message)]
    return [*events, reader.done()]


def cite(start: str, end: str, *ids: str) -> Answer.Citation:
    """A citation of ``KOREAN`` + " Two." from character ``start`` to ``end``, in bytes."""
    text = KOREAN + " Two."
    return Answer.Citation(
        start_index=len(text[: text.index(start)].encode()),
        end_index=len(text[: text.index(end) + len(end)].encode()),
        sources=[Answer.CitationSource(reference_id=i) for i in ids],
    )


REFERENCES = [
    Answer.Reference(
        unstructured_document_info=Answer.Reference.UnstructuredDocumentInfo(
            title="Seoul",
            uri="gs://docs/seoul.pdf",
            chunk_contents=[{"content": "Seoul is"}, {"content": "the capital."}],
        )
    ),
    Answer.Reference(
        chunk_info=Answer.Reference.ChunkInfo(
            content="Two.", document_metadata={"title": "Numbers", "uri": "https://n.example"}
        )
    ),
]


@pytest.mark.parametrize("cumulative", [False, True])
def test_text_and_citations_in_either_mode(cumulative: bool) -> None:
    second = KOREAN + " Two." if cumulative else " Two."
    events = read(
        response(KOREAN, state=Answer.State.STREAMING),
        response(
            second,
            state=Answer.State.SUCCEEDED,
            citations=[cite("서울", "다."), cite("Two", "Two.", "1", "0")],
            references=REFERENCES,
        ),
    )
    assert events == [
        Delta(KOREAN),
        Delta(" Two."),
        Citation(0, 14, ()),
        Citation(
            15,
            19,
            (
                Source("Numbers", "https://n.example", "Two."),
                Source("Seoul", "gs://docs/seoul.pdf", "Seoul is\nthe capital."),
            ),
        ),
        Done("stop"),
    ]


def test_a_repeated_citation_is_given_once() -> None:
    citation = cite("서울", "다.", "0")
    events = read(
        response(KOREAN, citations=[citation], references=REFERENCES),
        response(KOREAN + " Two.", citations=[citation, cite("Two", "Two.", "1")]),
    )
    assert [e for e in events if isinstance(e, Citation)] == [
        Citation(0, 14, (Source("Seoul", "gs://docs/seoul.pdf", "Seoul is\nthe capital."),)),
        Citation(15, 19, (Source("Numbers", "https://n.example", "Two."),)),
    ]


def test_unknown_reference_ids_are_left_out() -> None:
    events = read(response(KOREAN, citations=[cite("서울", "다.", "7", "x")]))
    assert events[1] == Citation(0, 14, ())


def test_skipped_answer_gives_reasons_and_no_text() -> None:
    skipped = response(
        "A summary could not be generated.",
        state=Answer.State.SUCCEEDED,
        answer_skipped_reasons=[Answer.AnswerSkippedReason.ADVERSARIAL_QUERY_IGNORED],
        related_questions=["Try this?"],
    )
    skipped.answer.answer_skipped_reasons.append(99)  # a reason newer than this SDK
    skipped.session.name = "projects/p/locations/global/collections/c/engines/e/sessions/42"
    assert read(skipped) == [
        Done(
            "skipped",
            session_id="42",
            skip_reasons=("adversarial_query_ignored", "reason_99"),
            related_questions=("Try this?",),
        )
    ]


def test_failed_answer_raises_a_transient_error() -> None:
    reader = AnswerReader()
    with pytest.raises(TransientError) as caught:
        list(reader.read(response("", state=Answer.State.FAILED)))
    assert caught.value.code == "internal"


def test_session_and_related_questions_ride_on_done() -> None:
    first = AnswerQueryResponse.pb(
        AnswerQueryResponse(
            answer=Answer(answer_text="Hi."), session=Session(name="a/sessions/123")
        )
    )
    last = response("Hi.", state=Answer.State.SUCCEEDED, related_questions=["Q1?", "Q2?"])
    assert read(first, last) == [
        Delta("Hi."),
        Done("stop", session_id="123", related_questions=("Q1?", "Q2?")),
    ]


def test_reference_kinds() -> None:
    structured = Answer.Reference(
        structured_document_info=Answer.Reference.StructuredDocumentInfo(title="T", uri="u")
    )
    kinds = [*REFERENCES, structured, Answer.Reference()]
    assert [reference_source(Answer.Reference.pb(r)) for r in kinds] == [
        Source("Seoul", "gs://docs/seoul.pdf", "Seoul is\nthe capital."),
        Source("Numbers", "https://n.example", "Two."),
        Source("T", "u"),
        None,
    ]


def config(**fields: Any) -> AgentBuilderConfig:
    return AgentBuilderConfig(type="agent_builder", **fields)


@pytest.mark.parametrize("fields", [{}, {"engine": "e", "data_store": "d"}])
def test_exactly_one_of_engine_and_data_store(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="exactly one of engine and data_store"):
        config(**fields)


def test_endpoints_and_resource_names() -> None:
    assert config(engine="e").default_endpoint() == "discoveryengine.googleapis.com"
    regional = config(data_store="d", location="eu", project="p", collection="c")
    assert regional.default_endpoint() == "eu-discoveryengine.googleapis.com"
    assert regional.parent() == "projects/p/locations/eu/collections/c/dataStores/d"
    backend = regional.build("search")
    assert (backend.name, backend.model, backend.emulated) == (
        "search",
        "d/default_serving_config",
        False,
    )


def test_cache_identity_is_what_changes_the_answer() -> None:
    base = config(engine="e").build("a").cache_identity()
    assert base["answer"]["include_citations"] is True
    assert config(engine="e", endpoint="h:1", deadline_s=5).build("b").cache_identity() == base
    for changed in (
        {"engine": "f"},
        {"answer": {"preamble": "Be brief."}},
        {"related_questions": True},
        {"serving_config": "other"},
    ):
        assert config(**{"engine": "e", **changed}).build("c").cache_identity() != base
