"""How a backend reaches Google: the channel the SDK client is built on."""

from __future__ import annotations

from typing import Any

import google.auth
import grpc
import pytest
from google.auth.credentials import AnonymousCredentials

from backends.agent_builder import AgentBuilderBackend, AgentBuilderConfig
from backends.gemini import GeminiBackend, GeminiConfig


@pytest.mark.parametrize(
    ("backend", "target"),
    [
        (GeminiBackend("g", GeminiConfig(type="gemini")), "us-central1-aiplatform.googleapis.com"),
        (
            AgentBuilderBackend("s", AgentBuilderConfig(type="agent_builder", engine="e")),
            "discoveryengine.googleapis.com",
        ),
    ],
)
async def test_google_endpoint_over_tls_with_default_credentials_and_no_grpc_retries(
    backend: Any, target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``insecure`` the SDK opens a TLS channel to Google with Application Default
    Credentials, keeping its own options; gRPC's transparent retries are off (the gateway
    retries)."""
    monkeypatch.setattr(google.auth, "default", lambda *a, **k: (AnonymousCredentials(), "p"))
    opened: list[tuple[str, dict[str, Any]]] = []
    secure_channel = grpc.aio.secure_channel

    def spy(address: str, credentials: Any, options: Any = None, **kwargs: Any) -> Any:
        opened.append((address, dict(options or ())))
        return secure_channel(address, credentials, options=options, **kwargs)

    monkeypatch.setattr(grpc.aio, "secure_channel", spy)
    backend._client.get()
    try:
        [(address, options)] = opened
        assert address == f"{target}:443"
        assert options["grpc.enable_retries"] == 0
        assert options["grpc.max_receive_message_length"] == -1  # the SDK's own, kept
    finally:
        await backend.aclose()
