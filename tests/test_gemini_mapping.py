"""Gemini grounding metadata -> the shared citation events (byte offsets become characters)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.cloud.aiplatform_v1 import GroundingChunk, GroundingMetadata, GroundingSupport, Segment
from google.protobuf import json_format

from backends import gemini, gemini_rest
from backends.base import Citation, Source

Reader = Callable[[Any, str], Iterator[Citation]]

TEXT = "서울은 한국의 수도입니다. It has 10 million people."


def segment(cited: str) -> Segment:
    start = len(TEXT[: TEXT.index(cited)].encode())
    return Segment(start_index=start, end_index=start + len(cited.encode()))


def from_protobuf(metadata: Any, text: str) -> Iterator[Citation]:
    return gemini.grounding_citations(metadata, text)


def from_json(metadata: Any, text: str) -> Iterator[Citation]:
    return gemini_rest.grounding_citations(json_format.MessageToDict(metadata), text)


@pytest.mark.parametrize("read", [from_protobuf, from_json], ids=["grpc", "rest"])
def test_grounding_supports_become_citations_in_characters(read: Reader) -> None:
    metadata = GroundingMetadata(
        grounding_chunks=[
            GroundingChunk(web=GroundingChunk.Web(title="Seoul", uri="https://seoul.example")),
            GroundingChunk(
                retrieved_context=GroundingChunk.RetrievedContext(
                    title="Census", uri="gs://docs/census.pdf", text="9.6 million residents"
                )
            ),
            GroundingChunk(),
        ],
        grounding_supports=[
            GroundingSupport(
                segment=segment("서울은 한국의 수도입니다."), grounding_chunk_indices=[0]
            ),
            GroundingSupport(
                segment=segment("It has 10 million people."), grounding_chunk_indices=[1, 0, 2, 9]
            ),
        ],
    )

    citations = list(read(GroundingMetadata.pb(metadata), TEXT))

    assert citations == [
        Citation(0, 14, (Source("Seoul", "https://seoul.example"),)),
        Citation(
            15,
            40,
            (
                Source("Census", "gs://docs/census.pdf", "9.6 million residents"),
                Source("Seoul", "https://seoul.example"),
            ),
        ),
    ]
    assert [TEXT[c.start : c.end] for c in citations] == [
        "서울은 한국의 수도입니다.",
        "It has 10 million people.",
    ]
