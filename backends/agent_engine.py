"""Agents deployed on Vertex AI Agent Engine (ADK apps): their config.

The backend, on the SDK's ``ReasoningEngineExecutionServiceAsyncClient`` and
``SessionServiceAsyncClient``, is ``backends.agent_engine_grpc``, imported when one is built:
reading config loads no SDK.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from backends.base import Backend
from backends.connection import ConnectionConfig
from backends.requests import RequestSettings

_ENGINE = re.compile(r"projects/[^/]+/locations/[^/]+/reasoningEngines/[^/]+")


class AgentEngineConfig(ConnectionConfig):
    """``[backends.NAME]`` with ``type = "agent_engine"``: one deployed agent (reasoning engine)."""

    type: Literal["agent_engine"]
    project: str = "emulated-project"
    location: str = "us-central1"
    reasoning_engine: str = Field(min_length=1)
    """The reasoning engine's id, or its full resource name."""
    class_method: str = "async_stream_query"
    """The streaming method the app registers (older ADK apps: ``stream_query``)."""
    user_id: str = Field("qa-gateway", min_length=1, max_length=128)
    """The session owner when the request names no user (no front door principal)."""
    stateless: bool = False
    """Create no sessions: every question stands alone, and ``done`` carries no session id."""
    include_intermediate: bool = False
    """Also stream the text of the agent's tool-calling steps."""
    requests: RequestSettings = RequestSettings()
    """What one request may set: nothing yet (an agent's instructions are its own)."""

    def engine(self) -> str:
        """The reasoning engine's resource name; sessions live under it."""
        if _ENGINE.fullmatch(self.reasoning_engine):
            return self.reasoning_engine
        location = f"projects/{self.project}/locations/{self.location}"
        return f"{location}/reasoningEngines/{self.reasoning_engine}"

    def default_endpoint(self) -> str:
        location = self.engine().split("/")[3]  # a full resource name's own location
        return f"{location}-aiplatform.googleapis.com"

    def cache_identity(self) -> dict[str, object]:
        identity = super().cache_identity()
        del identity["user_id"], identity["stateless"]  # whose session, not what is answered
        return identity

    def build(self, name: str) -> Backend:
        from backends.agent_engine_grpc import AgentEngineBackend

        return AgentEngineBackend(name, self)
