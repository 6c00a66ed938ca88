"""Vertex AI Agent Builder (Vertex AI Search answers): its config.

The backend, on the SDK's ``ConversationalSearchServiceAsyncClient``, is
``backends.agent_builder_grpc``, imported when one is built: reading config loads no SDK.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backends.base import Backend
from backends.connection import ConnectionConfig
from backends.requests import RequestSettings


class AnswerSettings(BaseModel):
    """The ``AnswerGenerationSpec`` fields users tune; unset fields keep Google's defaults."""

    model_config = ConfigDict(extra="forbid")

    model_version: str | None = None
    """``stable`` or ``preview``."""
    preamble: str | None = None
    """Instructions for the answer (``prompt_spec.preamble``)."""
    include_citations: bool = True
    answer_language_code: str | None = None
    """A BCP 47 tag (``en``, ``ko``, ...)."""
    ignore_adversarial_query: bool = False
    ignore_non_answer_seeking_query: bool = False
    ignore_jail_breaking_query: bool = False
    ignore_low_relevant_content: bool | None = None


class AgentBuilderConfig(ConnectionConfig):
    """``[backends.NAME]`` with ``type = "agent_builder"``: one engine's or data store's answers."""

    type: Literal["agent_builder"]
    project: str = "emulated-project"
    location: str = "global"
    collection: str = "default_collection"
    engine: str | None = None
    """The app (engine) id; set this or ``data_store``."""
    data_store: str | None = None
    serving_config: str = "default_serving_config"
    answer: AnswerSettings = Field(default_factory=AnswerSettings)
    related_questions: bool = False
    """Ask for related questions; they ride on ``done``."""
    user_pseudo_id: str | None = Field(None, min_length=1, max_length=128)
    """Visitor id Google uses for tracking and personalisation."""
    requests: RequestSettings = RequestSettings()
    """What one request may set: ``system``, as the answer's preamble."""

    @model_validator(mode="after")
    def _one_source(self) -> AgentBuilderConfig:
        if (self.engine is None) == (self.data_store is None):
            raise ValueError("set exactly one of engine and data_store")
        return self

    def parent(self) -> str:
        """The engine or data store resource name; sessions and serving configs live under it."""
        branch = f"engines/{self.engine}" if self.engine else f"dataStores/{self.data_store}"
        location = f"projects/{self.project}/locations/{self.location}"
        return f"{location}/collections/{self.collection}/{branch}"

    def default_endpoint(self) -> str:
        if self.location == "global":
            return "discoveryengine.googleapis.com"
        return f"{self.location}-discoveryengine.googleapis.com"

    def build(self, name: str) -> Backend:
        from backends.agent_builder_grpc import AgentBuilderBackend

        return AgentBuilderBackend(name, self)
