"""Configuration: a TOML file, overridden by ``QA_*`` environment variables, checked at start-up.

``QA_CONFIG`` names the file (default: the packaged ``config/gateway.toml``, the
zero-credential embedded default). Nested keys use ``__`` in the environment:
``QA_BACKENDS__GEMINI__MODEL=gemini-2.5-pro``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from backends.agent_builder import AgentBuilderConfig
from backends.agent_engine import AgentEngineConfig
from backends.gemini import GeminiConfig
from gateway.http.auth import AuthSettings
from gateway.http.connection import ServerSettings
from gateway.http.cors import CORSSettings
from gateway.upstream.cache import CacheSettings
from gateway.upstream.entries import BackendCachePolicy
from gateway.upstream.limits import LimitSettings
from gateway.upstream.retry import RetryPolicy
from gateway.upstream.streams import ResumeSettings

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "gateway.toml"


BackendConfig = GeminiConfig | AgentBuilderConfig | AgentEngineConfig
"""A backend's own config, which is all it is given."""


class Policies(BackendCachePolicy):
    """What the gateway does around any backend (the backend itself never sees these)."""

    model_config = ConfigDict(extra="forbid")
    config_class: ClassVar[type[BackendConfig]]

    retry: RetryPolicy = RetryPolicy()
    idle_s: float = Field(60.0, gt=0)
    """Longest wait for the next event once an answer has started."""
    fallback: list[str] = Field(default_factory=list)
    """Backends that answer, in order, when this one fails transiently before starting."""

    def backend_config(self) -> BackendConfig:
        """This entry without the gateway's policies: what the backend is built from."""
        own = self.model_dump(include=set(self.config_class.model_fields))
        return self.config_class.model_validate(own)


class GeminiEntry(GeminiConfig, Policies):
    """``[backends.NAME]`` of ``type = "gemini"``: its config and the policies around it."""

    config_class = GeminiConfig


class AgentBuilderEntry(AgentBuilderConfig, Policies):
    """``[backends.NAME]`` of ``type = "agent_builder"``."""

    config_class = AgentBuilderConfig


class AgentEngineEntry(AgentEngineConfig, Policies):
    """``[backends.NAME]`` of ``type = "agent_engine"``."""

    config_class = AgentEngineConfig


BackendEntry = Annotated[
    GeminiEntry | AgentBuilderEntry | AgentEngineEntry, Field(discriminator="type")
]
BACKEND_TYPES = ("gemini", "agent_builder", "agent_engine")


class EmulatorSettings(BaseModel):
    """The emulator embedded in the gateway process, for the zero-credential default."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    """The gRPC port; 0 picks a free port."""
    rest_port: int = Field(0, ge=0, le=65535)
    """The REST port; 0 picks a free port."""
    chunks: int = Field(12, gt=0)
    delay_ms: float = Field(40.0, ge=0)
    first_delay_ms: float = Field(150.0, ge=0)
    cumulative: bool = False
    """Agent Builder: send the whole answer so far in each response, not the next sentence."""


class RetryBudgetSettings(BaseModel):
    """``[retry_budget]``: retries across the instance stay within ``ratio`` of recent
    requests plus ``min_per_s`` a second (over ``window_s``)."""

    model_config = ConfigDict(extra="forbid")

    ratio: float = Field(0.2, ge=0)
    min_per_s: float = Field(3.0, ge=0)
    window_s: float = Field(10.0, gt=0)


class Settings(BaseSettings):
    """Everything the gateway is configured with."""

    model_config = SettingsConfigDict(env_prefix="QA_", env_nested_delimiter="__", extra="forbid")

    default_backend: str
    backends: dict[str, BackendEntry]
    emulator: EmulatorSettings = EmulatorSettings()
    max_query_bytes: int = Field(32 * 1024, gt=0)
    """Queries longer than this (UTF-8 bytes) are refused with 413."""
    max_history_turns: int = Field(200, ge=0)
    max_history_bytes: int = Field(256 * 1024, ge=0)
    """A history of more turns, or more text (UTF-8 bytes, all turns), is refused with 413."""
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    """Larger request bodies are refused with 413."""
    shutdown_grace_s: float = Field(8.0, ge=0)
    """On SIGTERM, open streams get this long to finish (Cloud Run kills after 10 s)."""
    retry_budget: RetryBudgetSettings = RetryBudgetSettings()
    server: ServerSettings = ServerSettings()
    redis_url: str | None = None
    """``redis://host:port/db`` to cache in (and coalesce through) Redis; in memory if unset."""
    redis_cluster: bool = False
    """``redis_url`` names a node of a Redis Cluster (Memorystore for Redis Cluster, Valkey)."""
    cache: CacheSettings = CacheSettings()
    limits: LimitSettings = LimitSettings()
    """Per-principal limits, counted in Redis (with ``redis_url``) or in process."""
    resume: ResumeSettings = ResumeSettings()
    log_queries: bool = False
    """Put the query text in the request log lines (off: queries may hold personal data)."""
    cors: CORSSettings = CORSSettings()
    auth: AuthSettings = AuthSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init arguments; the environment overrides them.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.backends:
            raise ValueError("no backends configured: add a [backends.NAME] table")
        if self.default_backend not in self.backends:
            raise ValueError(
                f"default_backend {self.default_backend!r} is not one of the configured "
                f"backends: {', '.join(sorted(self.backends))}"
            )
        if self.redis_cluster and self.redis_url is None:
            raise ValueError("redis_cluster is true but redis_url is unset: name a cluster node")
        for name, entry in self.backends.items():
            if entry.emulator and not self.emulator.enabled:
                raise ValueError(
                    f"backends.{name}.emulator is true but [emulator] enabled is false"
                )
            for other in entry.fallback:
                if other not in self.backends or other == name:
                    raise ValueError(
                        f"backends.{name}.fallback: {other!r} is not another configured backend"
                    )
        self.auth.check_backends(set(self.backends))
        return self


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending keys."""


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (``path``, else ``$QA_CONFIG``, else the default) into ``Settings``."""
    file = Path(path or os.environ.get("QA_CONFIG") or DEFAULT_CONFIG)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config:\n{describe(exc, file)}") from None


def describe(exc: ValidationError, file: Path) -> str:
    """One line per problem, each naming its key as dotted TOML path and where it was set:
    the ``QA_*`` variable when one sets it, else ``file``."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        if len(loc) > 2 and loc[0] == "backends" and loc[2] in BACKEND_TYPES:
            del loc[2]  # the discriminator tag pydantic puts in the path
        where = ".".join(loc) or "(top level)"
        variable = "QA_" + "__".join(loc).upper()
        source = f"${variable}" if loc and variable in os.environ else str(file)
        lines.append(f"  {where} ({source}): {error['msg']}")
    return "\n".join(lines)
