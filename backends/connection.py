"""Where and how a Google backend connects: the settings every backend config has.

Imports no SDK: config is read (and checked) without loading any client library.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ConnectionConfig(BaseModel):
    """Connection settings every Google backend has."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = None
    """``host:port``; the backend's Google endpoint when unset."""
    insecure: bool = False
    """Plaintext (gRPC, or ``http://`` for REST) without credentials, for an emulator."""
    emulator: bool = False
    """Talk to the gateway's embedded emulator (sets ``endpoint`` and ``insecure``)."""
    deadline_s: float = Field(120.0, gt=0)
    """Total time one upstream stream may take."""

    def default_endpoint(self) -> str:
        raise NotImplementedError

    def address(self) -> str:
        return self.endpoint or self.default_endpoint()

    def protocol(self) -> str:
        """How the backend talks to Google: ``grpc`` or ``rest`` (which emulator port)."""
        return "grpc"

    def cache_identity(self) -> dict[str, object]:
        """Every field but where and how to connect: what changes the answer."""
        return self.model_dump(exclude=set(ConnectionConfig.model_fields))
