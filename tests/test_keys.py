"""API keys: who may ask, with which backends; the config holds hashes only; the principal
and tenant are logged and counted, the key never."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from pydantic import ValidationError

from backends.emulator import Emulator
from backends.emulator.gemini import answer_chunks
from gateway.cli import main
from gateway.http.keys import hash_key
from gateway.http.observe import JSONFormatter
from gateway.settings import Settings
from tests.support import both, free_port, gateway, parse_sse, ready, spawn_gateway, text_of

QUERY = "Who may ask?"
WEB, NARROW, ADMIN = "qa_web-key", "qa_search-only-key", "qa_admin-key"
ROOT = Path(__file__).resolve().parent.parent


def keyed(emulator: Emulator, **auth: object) -> Settings:
    """Both backends; key ``web`` (tenant acme) may use both, ``narrow`` only ``search``."""
    keys = [
        {"name": "web", "hash": hash_key(WEB), "tenant": "acme", "rpm": 60},
        {"name": "narrow", "hash": hash_key(NARROW), "backends": ["search"]},
    ]
    return with_auth(both(emulator), keys=keys, **auth)


def with_auth(settings: Settings, **auth: object) -> Settings:
    return Settings.model_validate(settings.model_dump() | {"auth": auth})


@pytest.fixture(scope="module")
async def url(emulator: Emulator) -> AsyncIterator[str]:
    async with gateway(keyed(emulator, admin_hashes=[hash_key(ADMIN)])) as base:
        yield base


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_none_wrong_valid_forbidden(
    client: httpx.AsyncClient, url: str, emulator: Emulator
) -> None:
    qa = f"{url}/qa"
    body = {"query": QUERY}
    none = await client.post(qa, json=body)
    assert none.status_code == 401
    assert none.headers["www-authenticate"] == "Bearer"
    wrong = await client.post(qa, json=body, headers=bearer("qa_not-a-key"))
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_credentials")
    basic = await client.post(qa, json=body, headers={"Authorization": "Basic d2ViOmtleQ=="})
    assert basic.status_code == 401
    assert not emulator.calls

    valid = await client.post(qa, json=body, headers=bearer(WEB))
    assert valid.status_code == 200
    assert text_of(parse_sse(valid.content)) == "".join(answer_chunks(QUERY, 8))
    as_header = await client.post(qa, json=body, headers={"X-API-Key": WEB})
    assert as_header.status_code == 200
    assert len(emulator.calls) == 2

    forbidden = await client.post(qa, json=body, headers=bearer(NARROW))
    assert (forbidden.status_code, forbidden.json()["error"]["code"]) == (403, "backend_forbidden")
    allowed = await client.post(qa, json=body | {"backend": "search"}, headers=bearer(NARROW))
    assert allowed.status_code == 200
    assert len(emulator.calls) == 3


async def test_probes_are_open_and_operators_routes_take_an_admin_key(
    client: httpx.AsyncClient, url: str
) -> None:
    for path in ("/healthz", "/readyz", "/"):
        assert (await client.get(f"{url}{path}")).status_code == 200
    for path in ("/metrics", "/backends"):
        assert (await client.get(f"{url}{path}")).status_code == 401
        assert (await client.get(f"{url}{path}", headers=bearer(WEB))).status_code == 401
        assert (await client.get(f"{url}{path}", headers={"X-API-Key": ADMIN})).status_code == 200
    assert (await client.get(f"{url}/v1/models")).status_code == 401
    listed = await client.get(f"{url}/v1/models", headers=bearer(WEB))
    assert [model["id"] for model in listed.json()["data"]] == ["gemini", "search"]
    narrow = await client.get(f"{url}/v1/models", headers=bearer(NARROW))
    assert [model["id"] for model in narrow.json()["data"]] == ["search"]


async def test_the_openai_client_streams_with_its_api_key(url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=WEB, max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gemini", messages=[{"role": "user", "content": QUERY}], stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert text == "".join(answer_chunks(QUERY, 8))
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(
                model="gemini", messages=[{"role": "user", "content": QUERY}]
            )


async def test_the_principal_and_tenant_are_logged_and_counted_never_the_key(
    client: httpx.AsyncClient, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await client.post(f"{url}/qa", json={"query": QUERY}, headers=bearer(WEB))
        await client.post(f"{url}/qa", json={"query": QUERY}, headers=bearer("qa_wrong"))
    ok, refused = (JSONFormatter().format(record) for record in caplog.records)
    assert '"principal":"web"' in ok and '"tenant":"acme"' in ok
    assert '"status":401' in refused and '"principal":null' in refused
    scraped = (await client.get(f"{url}/metrics", headers={"X-API-Key": ADMIN})).text
    assert 'qa_requests_total{backend="gemini",route="/qa",status="200",tenant="acme"}' in scraped
    for line in (ok, refused, scraped):
        assert WEB not in line and hash_key(WEB) not in line and "qa_wrong" not in line


async def test_optional_auth_lets_anonymous_requests_in_but_not_wrong_keys(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    async with gateway(keyed(emulator, required=False)) as base:
        assert (await client.post(f"{base}/qa", json={"query": QUERY})).status_code == 200
        wrong = await client.post(f"{base}/qa", json={"query": QUERY}, headers=bearer("x"))
        assert wrong.status_code == 401


def test_keys_new_prints_a_key_and_the_config_holds_only_its_hash(emulator: Emulator) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["keys", "new", "--name", "web app", "--tenant", "acme"]) == 0
    printed = out.getvalue()
    key = printed.splitlines()[1]
    table = printed.split("# The config entry:\n")[1]
    [entry] = tomllib.loads(table)["auth"]["keys"]
    assert entry == {"name": "web app", "hash": hash_key(key), "tenant": "acme"}
    settings = both(emulator)
    data = settings.model_dump() | {"auth": {"keys": [entry]}}
    assert key not in Settings.model_validate(data).model_dump_json()
    # A key in clear is refused, whether as a key of its own or in place of its hash.
    for wrong in ({"name": "a", "key": key}, {"name": "a", "hash": key}):
        with pytest.raises(ValidationError):
            Settings.model_validate(data | {"auth": {"keys": [wrong]}})
    with pytest.raises(ValidationError, match="no backend"):
        Settings.model_validate(data | {"auth": {"keys": [entry | {"backends": ["nope"]}]}})
    for repo_config in (ROOT / "config").glob("*.toml"):
        for table in tomllib.loads(repo_config.read_text()).get("auth", {}).get("keys", []):
            assert set(table) <= {
                "name",
                "hash",
                "tenant",
                "backends",
                "rpm",
                "concurrent",
                "tokens_per_day",
            }


@pytest.mark.parametrize("how", ["--api-key", "QA_API_KEY"])
async def test_the_cli_asks_with_a_key(url: str, how: str) -> None:
    args = ["--api-key", WEB] if how == "--api-key" else []
    env = os.environ | ({"QA_API_KEY": WEB} if how == "QA_API_KEY" else {})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "ask", QUERY, "--url", url, *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert (process.returncode, err) == (0, b"")
    assert out.decode() == "".join(answer_chunks(QUERY, 8)) + "\n"


async def test_the_cli_says_when_it_needs_a_key(url: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "QA_API_KEY"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "ask", QUERY, "--url", url,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    assert process.returncode == 1
    assert "unauthenticated, HTTP 401" in err.decode()


@pytest.mark.parametrize(
    ("host", "auth", "warnings"),
    [
        ("0.0.0.0", "", 1),
        ("127.0.0.1", "", 0),
        ("0.0.0.0", "required = true", 0),
        ("0.0.0.0", "required = false", 1),
    ],
)
def test_serving_beyond_localhost_without_auth_warns_once(
    tmp_path: Path, host: str, auth: str, warnings: int
) -> None:
    config = None
    if auth:
        config = tmp_path / "gateway.toml"
        table = f'\n[auth]\n{auth}\n[[auth.keys]]\nname = "web"\nhash = "{hash_key(WEB)}"\n'
        config.write_text((ROOT / "config" / "gateway.toml").read_text() + table)
    port = free_port()
    with (tmp_path / "stdout.log").open("w+") as log:
        process = spawn_gateway(port, config, stdout=log, host=host)
        try:
            assert wait_until(lambda: ready(f"http://127.0.0.1:{port}"))
        finally:
            process.terminate()
            process.wait(timeout=15)
        log.seek(0)
        lines = [orjson.loads(line) for line in log if line.startswith("{")]
    said = [line for line in lines if "without authentication" in line["message"]]
    assert len(said) == warnings
    assert all(line["severity"] == "WARNING" for line in said)


def wait_until(predicate: Callable[[], bool], tries: int = 300) -> bool:
    for _ in range(tries):
        if predicate():
            return True
        time.sleep(0.05)
    return False
