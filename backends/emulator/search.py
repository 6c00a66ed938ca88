"""Emulated ``google.cloud.discoveryengine.v1.ConversationalSearchService/StreamAnswerQuery``.

Answers one sentence per response (``Behaviour.chunks`` sentences, some of them Korean or
French so byte and character offsets differ), as deltas or cumulatively
(``Behaviour.cumulative``). The last response is SUCCEEDED and carries the citations (one per
sentence, when the request asks for them), the references and, when asked for, related
questions. A query containing ``Behaviour.skip_marker`` is skipped the way Google skips one:
a fallback text with ``answer_skipped_reasons``. Sessions live on the ``Emulator``: ``-``
starts one, a known name continues it, an unknown one is NOT_FOUND.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING

import grpc
from google.cloud.discoveryengine_v1 import (
    Answer,
    AnswerQueryRequest,
    AnswerQueryResponse,
    Session,
)

from backends.emulator.server import grpc_play, stream_handler

if TYPE_CHECKING:
    from backends.emulator.server import Behaviour, Emulator

SERVICE = "google.cloud.discoveryengine.v1.ConversationalSearchService"
METHOD = "StreamAnswerQuery"

SENTENCES = (
    ("Vertex AI Search answers questions from your own documents.", 0),
    ("답변은 한 문장씩 스트리밍됩니다.", 1),
    ("Every sentence cites the document it came from.", 2),
    ("Les références donnent le titre, l'adresse et un extrait.", 0),
    ("세션을 이어서 다음 질문을 할 수 있습니다.", 1),
    ("Answers that cannot be grounded are skipped, never invented.", 2),
)
"""Each sentence, and the index of the document (reference) it cites."""

DOCUMENTS = (
    (
        "Vertex AI Search overview",
        "https://example.com/docs/vertex-ai-search",
        "Vertex AI Search brings Google-quality search and answers to your own data.",
    ),
    ("스트리밍 답변 안내", "gs://emulated-docs/streaming-ko.pdf", "답변은 문장 단위로 전송됩니다."),
    ("Citations and references", "https://example.com/docs/citations", None),
)
"""Title, URI and snippet; served as an unstructured document, a chunk and a structured one."""

RELATED_QUESTIONS = ("How do sessions work?", "어떤 문서가 인용되나요?")
SKIP_REASONS = (
    Answer.AnswerSkippedReason.NON_ANSWER_SEEKING_QUERY_IGNORED,
    Answer.AnswerSkippedReason.NO_RELEVANT_CONTENT,
)
FALLBACK_TEXT = "A summary could not be generated for your search query."


def answer_pieces(query: str, count: int) -> list[str]:
    """The deterministic answer to ``query``: ``count`` sentences that join to the full text."""
    return [piece for piece, _ in _sentences(query, count)]


def _sentences(query: str, count: int) -> list[tuple[str, int]]:
    first = hashlib.sha256(query.encode()).digest()[0]
    picked = [SENTENCES[(first + i) % len(SENTENCES)] for i in range(max(count, 1))]
    pieces = [(sentence + " ", document) for sentence, document in picked]
    pieces[-1] = picked[-1]
    return pieces


def _references() -> list[Answer.Reference]:
    (title0, uri0, snippet0), (title1, uri1, snippet1), (title2, uri2, _) = DOCUMENTS
    document = Answer.Reference.UnstructuredDocumentInfo
    chunk = Answer.Reference.ChunkInfo
    return [
        Answer.Reference(
            unstructured_document_info=document(
                title=title0, uri=uri0, chunk_contents=[document.ChunkContent(content=snippet0)]
            )
        ),
        Answer.Reference(
            chunk_info=chunk(
                content=snippet1, document_metadata=chunk.DocumentMetadata(title=title1, uri=uri1)
            )
        ),
        Answer.Reference(
            structured_document_info=Answer.Reference.StructuredDocumentInfo(title=title2, uri=uri2)
        ),
    ]


def _citations(sentences: list[tuple[str, int]]) -> list[Answer.Citation]:
    """One citation per sentence, in UTF-8 byte offsets as Google gives them."""
    citations, offset = [], 0
    for piece, document in sentences:
        length = len(piece.rstrip(" ").encode())
        citations.append(
            Answer.Citation(
                start_index=offset,
                end_index=offset + length,
                sources=[Answer.CitationSource(reference_id=str(document))],
            )
        )
        offset += len(piece.encode())
    return citations


def _responses(
    request: AnswerQueryRequest, knobs: Behaviour, session: Session | None
) -> list[AnswerQueryResponse]:
    query = request.query.text
    if knobs.skip_marker and knobs.skip_marker in query:
        answer = Answer(
            state=Answer.State.SUCCEEDED,
            answer_text=FALLBACK_TEXT,
            answer_skipped_reasons=SKIP_REASONS,
        )
        return [AnswerQueryResponse(answer=answer, session=session)]
    sentences = _sentences(query, knobs.chunks)
    answers, text = [], ""
    for piece, _ in sentences:
        text += piece
        answers.append(
            Answer(state=Answer.State.STREAMING, answer_text=text if knobs.cumulative else piece)
        )
    answers[-1] = Answer(
        state=Answer.State.SUCCEEDED,
        answer_text=answers[-1].answer_text,
        references=_references(),
        citations=(
            _citations(sentences) if request.answer_generation_spec.include_citations else []
        ),
        related_questions=RELATED_QUESTIONS if request.related_questions_spec.enable else (),
    )
    return [AnswerQueryResponse(answer=answer, session=session) for answer in answers]


def _session_name(requested: str, sessions: dict[str, int]) -> str | None:
    """The session a request names: a new one for ``.../sessions/-``, None for an unknown one."""
    parent, _, session_id = requested.rpartition("/")
    if session_id == "-":
        return f"{parent}/{secrets.randbits(63)}"
    return requested if requested in sessions else None


def handler(emulator: Emulator) -> grpc.GenericRpcHandler:
    """The gRPC handler serving this method from ``emulator``."""

    async def stream_answer_query(
        request: AnswerQueryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[AnswerQueryResponse]:
        call = emulator.record(METHOD, request)
        session = None
        if request.session:
            name = _session_name(request.session, emulator.sessions)
            if name is None:
                call.failed = "NOT_FOUND"
                await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.session} not found")
            else:
                call.session, call.turn = name, emulator.sessions.get(name, 0) + 1
                session = Session(name=name)
        responses = _responses(request, emulator.behaviour, session)
        async with aclosing(grpc_play(emulator, call, context, responses)) as played:
            async for response in played:
                if call.session is not None and call.turn is not None:
                    emulator.sessions[call.session] = call.turn  # the turn counts once answered
                yield response

    return stream_handler(
        SERVICE, METHOD, AnswerQueryRequest, AnswerQueryResponse, stream_answer_query
    )
