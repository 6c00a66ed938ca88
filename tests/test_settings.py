"""Configuration: the TOML file, environment overrides, and clear start-up failures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import DEFAULT_CONFIG, ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


GOOD = """
default_backend = "gemini"
[backends.gemini]
type = "gemini"
endpoint = "127.0.0.1:1"
insecure = true
"""


def test_default_config_is_the_embedded_emulator() -> None:
    settings = load_settings(DEFAULT_CONFIG)
    assert settings.emulator.enabled
    assert all(entry.emulator for entry in settings.backends.values())
    assert settings.default_backend in settings.backends


def test_environment_overrides_single_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QA_BACKENDS__GEMINI__MODEL", "gemini-2.5-pro")
    monkeypatch.setenv("QA_MAX_QUERY_BYTES", "100")
    settings = load_settings(write(tmp_path, GOOD))
    assert settings.backends["gemini"].model == "gemini-2.5-pro"
    assert settings.backends["gemini"].endpoint == "127.0.0.1:1"
    assert settings.max_query_bytes == 100


def test_qa_config_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QA_CONFIG", str(write(tmp_path, GOOD)))
    assert load_settings().backends["gemini"].endpoint == "127.0.0.1:1"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "[backends.gemini.generation]\ntemperature = 7\n",
            "backends.gemini.generation.temperature",
        ),
        ("[backends.gemini.safety]\nHARM_CATEGORY_NOPE = 'OFF'\n", "HARM_CATEGORY_NOPE"),
        ("[backends.gemini.generation]\ntemprature = 1\n", "backends.gemini.generation.temprature"),
        ("[backends.other]\ntype = 'palm'\n", "backends.other"),
    ],
)
def test_invalid_values_name_their_key(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, GOOD + extra))
    assert expected in str(error.value)


def test_default_backend_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="default_backend 'search' is not one of"):
        load_settings(write(tmp_path, GOOD.replace('"gemini"\n[', '"search"\n[', 1)))


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "default_backend = "))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.toml")


def test_invalid_config_fails_start_up(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "deadline_s = -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "backends.gemini.deadline_s" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_variable_is_named_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QA_BACKENDS__GEMINI__DEADLINE_S", "soon")
    config = write(tmp_path, GOOD + "[backends.gemini.generation]\ntemperature = 7\n")
    with pytest.raises(ConfigError) as error:
        load_settings(config)
    lines = str(error.value).splitlines()[1:]
    assert lines[0].startswith("  backends.gemini.deadline_s ($QA_BACKENDS__GEMINI__DEADLINE_S):")
    assert lines[1].startswith(f"  backends.gemini.generation.temperature ({config}):")


def test_an_agent_engine_backend_needs_its_reasoning_engine(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + '[backends.agent]\ntype = "agent_engine"\n')
    with pytest.raises(
        ConfigError, match=r"backends\.agent\.reasoning_engine \(.*\): Field required"
    ):
        load_settings(path)


def test_redis_cluster_is_set_from_the_environment_and_needs_a_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QA_REDIS_CLUSTER", "true")
    with pytest.raises(ConfigError, match="redis_cluster is true but redis_url is unset"):
        load_settings(write(tmp_path, GOOD))
    monkeypatch.setenv("QA_REDIS_URL", "redis://10.0.0.3:6379")
    settings = load_settings(write(tmp_path, GOOD))
    assert (settings.redis_cluster, settings.redis_url) == (True, "redis://10.0.0.3:6379")
