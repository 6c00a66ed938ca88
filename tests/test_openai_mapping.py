"""How OpenAI request and response shapes map onto the gateway's (pure functions)."""

from __future__ import annotations

import pytest

from backends.base import Done, Turn, Usage
from gateway.formats.openai import done_extensions, finish_reason
from gateway.http.errors import HTTPProblem
from gateway.http.openai import Message, Part, conversation


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stop", "stop"),
        ("max_tokens", "length"),
        ("safety", "content_filter"),
        ("recitation", "content_filter"),
        ("prohibited_content", "content_filter"),
        ("skipped", "content_filter"),
        ("other", "stop"),
    ],
)
def test_finish_reason(reason: str, expected: str) -> None:
    assert finish_reason(reason) == expected


def test_the_last_user_message_is_the_query_and_the_turns_before_it_the_history() -> None:
    messages = [
        Message(role="system", content="Be terse."),
        Message(role="user", content="first"),
        Message(role="assistant", content=None),  # a tool call: no text
        Message(role="tool", content="42"),
        Message(role="assistant", content="an answer"),
        Message(
            role="user", content=[Part(type="text", text="sec"), Part(type="text", text="ond")]
        ),
        Message(role="assistant", content="a prefill after the question"),
    ]
    assert conversation(messages) == (
        "second",
        (Turn("user", "first"), Turn("model", "an answer")),
        "Be terse.",
    )


def test_system_and_developer_messages_are_the_instructions() -> None:
    messages = [
        Message(role="system", content="Be terse."),
        Message(role="developer", content=[Part(type="text", text="Answer in French.")]),
        Message(role="user", content="hi"),
    ]
    assert conversation(messages)[2] == "Be terse.\n\nAnswer in French."


def test_a_message_without_content_is_empty() -> None:
    assert conversation([Message(role="user")]) == ("", (), None)


@pytest.mark.parametrize(
    "messages",
    [
        [Message(role="system", content="hi")],
        [Message(role="assistant", content="hi")],
    ],
)
def test_no_user_message_is_refused(messages: list[Message]) -> None:
    with pytest.raises(HTTPProblem, match="there is no user message"):
        conversation(messages)


def test_only_text_turns_can_be_sent() -> None:
    image = Message(role="user", content=[Part(type="image_url")])
    with pytest.raises(HTTPProblem, match="image_url content is not supported") as raised:
        conversation([image, Message(role="user", content="and this?")])
    assert (raised.value.status, raised.value.code) == (400, "unsupported_parameter")
    assert raised.value.param == "messages"


def test_done_extensions_leave_out_what_openai_fields_carry() -> None:
    done = Done("skipped", Usage(1, 2, 3), "s-1", ("no_relevant_content",), ("why?",))
    assert done_extensions(done) == {
        "session_id": "s-1",
        "skip_reasons": ["no_relevant_content"],
        "related_questions": ["why?"],
    }
    assert done_extensions(Done("stop")) == {}
