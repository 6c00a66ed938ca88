"""Metrics after a scripted mix of requests, and the JSON request log."""

from __future__ import annotations

import asyncio
import logging

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backends.emulator import Behaviour, Emulator
from gateway.http.observe import JSONFormatter
from tests.support import FAST_RETRY, gateway, settings_for

SECRET = "my very private question"


def samples(scrape: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
    }


def value(scraped: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return scraped.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_a_scripted_mix(client: httpx.AsyncClient, emulator: Emulator) -> None:
    entry = {
        "type": "gemini",
        "endpoint": emulator.rest_address,
        "insecure": True,
        "retry": FAST_RETRY,
    }
    settings = settings_for(
        emulator,
        backends={
            "gemini": entry | {"fallback": ["backup"]},
            "backup": entry | {"model": "gemini-backup", "cache": False},
        },
    )
    async with gateway(settings) as url:
        qa = f"{url}/qa"
        await client.post(qa, json={"query": "one"})  # miss
        await client.post(qa, json={"query": "one"})  # hit
        await client.post(qa, json={"query": ""})  # 422
        emulator.reset(Behaviour(fail_first=1))
        await client.post(qa, json={"query": "two"})  # one retry, then an answer
        emulator.reset(Behaviour(fail_first=3))
        await client.post(qa, json={"query": "three"})  # three failures, then the fallback
        emulator.reset(Behaviour(fail_first=99, fail_code="INVALID_ARGUMENT"))
        await client.post(qa, json={"query": "four", "backend": "backup"})  # 400
        await client.get(f"{url}/no/such/{SECRET}")  # 404, counted as "other"
        emulator.reset(Behaviour(chunks=10, delay_ms=20))
        await asyncio.gather(*(client.post(qa, json={"query": "five"}) for _ in range(3)))
        scraped = samples((await client.get(f"{url}/metrics")).text)

    def requests(status: str, backend: str = "gemini") -> float:
        labels = {"route": "/qa", "backend": backend, "status": status, "tenant": "default"}
        return value(scraped, "qa_requests_total", **labels)

    assert requests("200") == 7
    assert requests("422", "") == 1
    other = {"route": "other", "backend": "", "status": "404", "tenant": "default"}
    assert value(scraped, "qa_requests_total", **other) == 1
    assert requests("400", "backup") == 1
    assert value(scraped, "qa_cache_total", backend="gemini", result="HIT") == 1
    assert value(scraped, "qa_cache_total", backend="gemini", result="MISS") == 6
    assert value(scraped, "qa_retries_total", backend="gemini") == 1 + 2
    assert value(scraped, "qa_fallbacks_total", backend="gemini", answered_by="backup") == 1
    assert value(scraped, "qa_upstream_errors_total", backend="gemini", code="unavailable") == 4
    assert (
        value(scraped, "qa_upstream_errors_total", backend="backup", code="invalid_argument") == 1
    )
    assert value(scraped, "qa_coalesced_total", backend="gemini") == 2
    assert value(scraped, "qa_time_to_first_event_seconds_count", backend="gemini") == 7
    assert value(scraped, "qa_stream_duration_seconds_count", backend="gemini") == 7
    assert value(scraped, "qa_open_streams") == 0


async def test_request_log_is_json_without_the_query(
    client: httpx.AsyncClient, gateway_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await client.post(
            f"{gateway_url}/qa", json={"query": SECRET}, headers={"X-Request-ID": "req-42"}
        )
        await client.post(f"{gateway_url}/qa", json={"query": ""})
    lines = [JSONFormatter().format(record) for record in caplog.records]
    assert len(lines) == 2
    assert all(SECRET not in line for line in lines)
    ok, bad = (orjson.loads(line) for line in lines)
    assert ok["request_id"] == "req-42"
    assert ok["severity"] == "INFO"
    assert (ok["status"], ok["backend"], ok["cache"], ok["attempts"]) == (
        200,
        "gemini",
        "BYPASS",
        1,
    )
    assert ok["outcome"] == "done"
    assert ok["first_event_ms"] > 0
    assert ok["duration_ms"] >= ok["first_event_ms"]
    assert (bad["status"], bad["backend"]) == (422, None)


async def test_queries_are_logged_only_when_enabled(
    client: httpx.AsyncClient, emulator: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        async with gateway(settings_for(emulator, log_queries=True)) as url:
            await client.post(f"{url}/qa", json={"query": SECRET})
    [line] = [orjson.loads(JSONFormatter().format(record)) for record in caplog.records]
    assert line["query"] == SECRET
