"""OIDC tokens against a JWKS server of our own (a local key pair): valid ones are answered,
every forged, expired or misdirected one is 401, and a rotated key is picked up live."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from backends.emulator import Emulator
from gateway.http.tokens import JWTSettings
from gateway.settings import Settings
from tests.support import free_port, gateway, settings_for

ISSUER, AUDIENCE = "https://issuer.example", "my-app"
QUERY = "Who am I?"


class Issuer:
    """Key pairs, the JWKS server publishing the public halves, and tokens signed by them."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {"rsa-1": rsa.generate_private_key(65537, 2048)}
        self.published = ["rsa-1"]
        self.fetches = 0

    def jwks(self) -> bytes:
        self.fetches += 1
        keys = []
        for kid in self.published:
            private = self.keys[kid]
            if isinstance(private, rsa.RSAPrivateKey):
                jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
                jwk["alg"] = "RS256"
            else:
                jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
                jwk["alg"] = "ES256"
            keys.append(jwk | {"kid": kid, "use": "sig"})
        return json.dumps({"keys": keys}).encode()

    def token(self, kid: str = "rsa-1", key: Any = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 600}
        body |= {"org": {"tenant": "acme"}} | claims
        private = key or self.keys[kid]
        algorithm = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(body, private, algorithm=algorithm, headers={"kid": kid})

    def public_pem(self, kid: str = "rsa-1") -> bytes:
        return (
            self.keys[kid]
            .public_key()
            .public_bytes(  # type: ignore[no-any-return]
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


@contextmanager
def jwks_server(issuer: Issuer) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = issuer.jwks()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def unsigned(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A token made by hand: ``alg: none`` (no secret) or HS256 keyed with ``secret``."""

    def part(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = part(json.dumps(header).encode()) + b"." + part(json.dumps(claims).encode())
    signature = b"" if secret is None else hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + part(signature)).decode()


def token_settings(emulator: Emulator, jwks_url: str, **jwt_settings: Any) -> Settings:
    knobs = {"issuer": ISSUER, "audience": AUDIENCE, "jwks_url": jwks_url}
    knobs |= {"tenant_claim": "org.tenant", "algorithms": ["RS256", "ES256"]}
    return settings_for(emulator, auth={"jwt": knobs | jwt_settings})


@pytest.fixture(scope="module")
def issuer() -> Iterator[tuple[Issuer, str]]:
    issuer = Issuer()
    with jwks_server(issuer) as url:
        yield issuer, url


@pytest.fixture(scope="module")
async def url(emulator: Emulator, issuer: tuple[Issuer, str]) -> AsyncIterator[str]:
    async with gateway(token_settings(emulator, issuer[1], refetch_s=3600)) as base:
        yield base


async def ask(client: httpx.AsyncClient, url: str, token: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    return await client.post(f"{url}/qa", json={"query": QUERY}, headers=headers)


async def test_a_valid_token_is_answered(
    client: httpx.AsyncClient, url: str, issuer: tuple[Issuer, str], emulator: Emulator
) -> None:
    response = await ask(client, url, issuer[0].token())
    assert response.status_code == 200
    assert len(emulator.calls) == 1


async def test_bad_tokens_are_refused(
    client: httpx.AsyncClient, url: str, issuer: tuple[Issuer, str], emulator: Emulator
) -> None:
    keys = issuer[0]
    now = int(time.time())
    attacker = rsa.generate_private_key(65537, 2048)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "root", "exp": now + 600}
    forged = {
        "expired": keys.token(exp=now - 3600),
        "not yet valid": keys.token(nbf=now + 3600),
        "wrong audience": keys.token(aud="another-app"),
        "wrong issuer": keys.token(iss="https://attacker.example"),
        "no tenant": keys.token(org={}),
        "attacker's key, unknown kid": keys.token(kid="attacker-1", key=attacker),
        "attacker's key, known kid": keys.token(key=attacker),
        "alg none": unsigned({"alg": "none", "kid": "rsa-1"}, claims, None),
        "HS256 keyed with the public key": unsigned(
            {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}, claims, keys.public_pem()
        ),
        "garbage": "a.b.c",
    }
    fetched = keys.fetches
    for name, token in forged.items():
        response = await ask(client, url, token)
        assert response.status_code == 401, name
        assert response.json()["error"]["code"] == "invalid_credentials", name
        assert response.headers["www-authenticate"].startswith("Bearer"), name
    assert not emulator.calls
    # Unknown key ids did not make the gateway fetch the key set again (within refetch_s).
    assert keys.fetches == max(fetched, 1)


async def test_a_rotated_key_is_picked_up_without_a_restart(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    issuer = Issuer()
    with jwks_server(issuer) as jwks_url:
        async with gateway(token_settings(emulator, jwks_url, refetch_s=0)) as base:
            assert (await ask(client, base, issuer.token())).status_code == 200
            issuer.keys["ec-2"] = ec.generate_private_key(ec.SECP256R1())
            rotated = issuer.token(kid="ec-2", sub="user-2")
            assert (await ask(client, base, rotated)).status_code == 401  # not published yet
            issuer.published = ["ec-2"]
            assert (await ask(client, base, rotated)).status_code == 200
            assert (await ask(client, base, issuer.token())).status_code == 401  # retired
    assert issuer.fetches >= 3


async def test_an_unreachable_key_set_is_503_not_a_crash(
    client: httpx.AsyncClient, emulator: Emulator
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/jwks.json"
    async with gateway(token_settings(emulator, closed, jwks_timeout_s=1)) as base:
        response = await ask(client, base, Issuer().token())
    assert (response.status_code, response.json()["error"]["code"]) == (503, "auth_unavailable")
    assert not emulator.calls


@pytest.mark.parametrize("algorithm", ["none", "HS256", "HS512", "rs256"])
def test_only_asymmetric_algorithms_can_be_configured(algorithm: str) -> None:
    with pytest.raises(ValidationError, match="only asymmetric"):
        JWTSettings(issuer=ISSUER, audience=AUDIENCE, jwks_url="https://x", algorithms=[algorithm])
