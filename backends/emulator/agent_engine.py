"""Emulated Vertex AI Agent Engine: an ADK agent behind
``google.cloud.aiplatform.v1.ReasoningEngineExecutionService/StreamQueryReasoningEngine``, and
its sessions behind ``google.cloud.aiplatform.v1.SessionService/CreateSession`` and
``GetSession``.

The agent answers the way an ADK app in SSE streaming mode does, one JSON event per line: a
step that calls ``search_docs`` (with a little text of its own) and that tool's response, then
``Behaviour.chunks`` partial text events, then the final non-partial event with the whole
text, a grounding source for the last piece (UTF-8 byte offsets) and usage. The lines are cut
into ``HttpBody`` chunks so that the first chunk packs the tool events and the first piece,
and every later chunk completes the piece the previous one broke off (often inside a
multi-byte character): chunk ``n`` completes piece ``n``. The first piece names the turn of
the session (``(turn 2)``), so a second turn shows it saw the first. Faults apply to the
streamed call only; sessions are answered at once (``CreateSession``'s operation is done).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import grpc
import orjson
from google.api import httpbody_pb2
from google.cloud.aiplatform_v1 import (
    CreateSessionRequest,
    GetSessionRequest,
    Session,
    StreamQueryReasoningEngineRequest,
)
from google.longrunning import operations_pb2

from backends.emulator.server import grpc_play, stream_handler

if TYPE_CHECKING:
    from backends.emulator.server import Emulator

EXECUTION = "google.cloud.aiplatform.v1.ReasoningEngineExecutionService"
METHOD = "StreamQueryReasoningEngine"
SESSIONS = "google.cloud.aiplatform.v1.SessionService"
CLASS_METHODS = frozenset({"async_stream_query", "stream_query"})
AUTHOR = "docs_agent"
TOOL = "search_docs"
TOOL_RESULT = "internal note 42: the gateway relays agent events"
INTERMEDIATE_TEXT = "Let me look that up. "
SOURCE = {"title": "Agent Engine overview", "uri": "https://example.com/docs/agent-engine"}

_WORDS = ("Agents ", "stream ", "답변을 ", "조각으로, ", "étape ", "par ", "étape, ", "in order. ")


def answer_pieces(query: str, count: int, turn: int = 1) -> list[str]:
    """The agent's answer to ``query`` on ``turn``: ``count`` pieces that join to its text."""
    first = hashlib.sha256(query.encode()).digest()[0]
    pieces = [_WORDS[(first + i) % len(_WORDS)] for i in range(max(count, 1))]
    pieces[0] = f"(turn {turn}) {pieces[0]}"
    pieces[-1] = pieces[-1].rstrip(" ")
    return pieces


def adk_events(query: str, count: int, turn: int) -> list[dict[str, Any]]:
    """The ADK events of one run, as the app's JSON (snake_case)."""
    pieces = answer_pieces(query, count, turn)
    text = "".join(pieces)
    step = {"author": AUTHOR, "invocation_id": f"e-{turn}"}
    call = {"id": "adk-1", "name": TOOL, "args": {"query": query}}
    result = {"id": "adk-1", "name": TOOL, "response": {"result": TOOL_RESULT}}
    cited = {"start_index": len(text[: -len(pieces[-1])].encode()), "end_index": len(text.encode())}
    return [
        step
        | _content("model", {"text": INTERMEDIATE_TEXT}, {"function_call": call})
        | _usage(7, 3),
        step | _content("user", {"function_response": result}),
        *(step | {"partial": True} | _content("model", {"text": piece}) for piece in pieces),
        step
        | _content("model", {"text": text})
        | _usage(12, count)
        | {
            "grounding_metadata": {
                "grounding_chunks": [{"web": SOURCE}],
                "grounding_supports": [{"segment": cited, "grounding_chunk_indices": [0]}],
            },
            "finish_reason": "STOP",
            "turn_complete": True,
        },
    ]


def _content(role: str, *parts: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"role": role, "parts": list(parts)}}


def _usage(prompt: int, candidates: int) -> dict[str, Any]:
    counts = {"prompt_token_count": prompt, "candidates_token_count": candidates}
    return {"usage_metadata": counts | {"total_token_count": prompt + candidates}}


def chunked(events: list[dict[str, Any]]) -> list[httpbody_pb2.HttpBody]:
    """The events' lines as ``HttpBody`` chunks: chunk ``n`` completes the ``n``-th partial
    event (the first also packs the two before it); the last carries the final event too."""
    lines = [orjson.dumps(event) + b"\n" for event in events]
    tool, partials, final = lines[:2], lines[2:-1], lines[-1]
    chunks, carry = [], b"".join(tool)
    for index, line in enumerate(partials):
        if index + 1 == len(partials):
            chunks.append(carry + line + final)
            break
        following = partials[index + 1]
        cut = len(following) // 2
        chunks.append(carry + line + following[:cut])
        partials[index + 1], carry = following[cut:], b""
    return [httpbody_pb2.HttpBody(content_type="application/json", data=chunk) for chunk in chunks]


def handlers(emulator: Emulator) -> tuple[grpc.GenericRpcHandler, grpc.GenericRpcHandler]:
    """The gRPC handlers of the streamed query and of the session service."""

    async def stream_query(
        request: StreamQueryReasoningEngineRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        call = emulator.record(METHOD, request)
        arguments = dict(request.input)
        if request.class_method not in CLASS_METHODS:
            call.failed = "INVALID_ARGUMENT"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown class_method")
        if arguments.get("session_id"):
            name = f"{request.name}/sessions/{arguments['session_id']}"
            if emulator.session_users.get(name) != arguments.get("user_id"):
                call.failed = "NOT_FOUND"
                await context.abort(grpc.StatusCode.NOT_FOUND, f"session {name} not found")
            call.session, call.turn = name, emulator.sessions.get(name, 0) + 1
        events = adk_events(
            str(arguments.get("message", "")), emulator.behaviour.chunks, call.turn or 1
        )
        async with aclosing(grpc_play(emulator, call, context, chunked(events))) as played:
            async for body in played:
                yield body
        if call.session is not None and call.turn is not None:
            emulator.sessions[call.session] = call.turn

    async def create_session(
        request: CreateSessionRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        call = emulator.record("CreateSession", request)
        name = f"{request.parent}/sessions/{request.session_id or secrets.randbits(63)}"
        emulator.sessions[name], emulator.session_users[name] = 0, request.session.user_id
        call.session, call.completed = name, True
        operation = operations_pb2.Operation(
            name=f"{name}/operations/{secrets.randbits(63)}", done=True
        )
        operation.response.Pack(Session.pb(Session(name=name, user_id=request.session.user_id)))
        return operation

    async def get_session(request: GetSessionRequest, context: grpc.aio.ServicerContext) -> Session:
        call = emulator.record("GetSession", request)
        if request.name not in emulator.session_users:
            call.failed = "NOT_FOUND"
            await context.abort(grpc.StatusCode.NOT_FOUND, f"session {request.name} not found")
        call.session, call.completed = request.name, True
        return Session(name=request.name, user_id=emulator.session_users[request.name])

    unary = grpc.unary_unary_rpc_method_handler
    sessions = grpc.method_handlers_generic_handler(
        SESSIONS,
        {
            "CreateSession": unary(
                create_session,
                request_deserializer=CreateSessionRequest.deserialize,
                response_serializer=operations_pb2.Operation.SerializeToString,
            ),
            "GetSession": unary(
                get_session,
                request_deserializer=GetSessionRequest.deserialize,
                response_serializer=Session.serialize,
            ),
        },
    )
    execution = stream_handler(
        EXECUTION, METHOD, StreamQueryReasoningEngineRequest, httpbody_pb2.HttpBody, stream_query
    )
    return execution, sessions
