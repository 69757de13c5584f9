"""One JSON line per /v1 request on `crosslogic.requests`, whatever path it ends on; never a secret.

The real /v1 app (`build_api`) in-process with the key authenticator on PostgreSQL, the in-memory
rate limiter and a scripted gateway standing in for the engines (streamed and non-streamed answers, an
engine error); refusals (401, 400, 429) are answered by the error handlers and logged once too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from crosslogic.api.request_log import REQUEST_LOGGER
from tests.unit.api.scripted_api import ScriptedGateway, scripted_api

CHAT, BROKEN = "chat-m", "broken-m"
FIELDS = {"request_id", "client_request_id", "route", "tenant_id", "key_prefix", "model", "region", "status",
          "outcome", "error_code", "prompt_tokens", "completion_tokens", "ttft_ms", "total_ms", "stream"}


@pytest.fixture
async def api(db_pool: asyncpg.Pool) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    gateway = ScriptedGateway([CHAT, BROKEN], region="eu-test", broken=[BROKEN])
    async with scripted_api(db_pool, gateway, rpm=2) as api:
        yield api.client, api.secret, api.tenant_id


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == REQUEST_LOGGER]


async def test_one_line_per_request_on_every_path_and_never_a_secret(
    api: tuple[httpx.AsyncClient, str, str], caplog: pytest.LogCaptureFixture,
) -> None:
    client, secret, tenant_id = api
    auth = {"authorization": f"Bearer {secret}"}
    chat = {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    with caplog.at_level(logging.DEBUG):
        plain = await client.post("/v1/chat/completions", json=chat, headers={**auth, "x-request-id": "mine-1"})
        streamed = await client.post("/v1/chat/completions", json={**chat, "stream": True}, headers=auth)
        bad = await client.post("/v1/chat/completions", json={**chat, "messages": "no"}, headers=auth)
        limited = await client.post("/v1/chat/completions", json=chat, headers=auth)  # 3rd admission of rpm=2
        wrong_key = await client.post("/v1/chat/completions", json=chat,
                                      headers={"authorization": f"Bearer {secret[:-4]}XXXX"})
    assert [plain.status_code, streamed.status_code, bad.status_code, limited.status_code,
            wrong_key.status_code] == [200, 200, 400, 429, 401]
    lines = _lines(caplog)
    by_id = {line["request_id"]: line for line in lines}
    responses = (plain, streamed, bad, limited, wrong_key)
    assert len(lines) == 5 and set(by_id) == {r.headers["x-request-id"] for r in responses}
    assert all(set(line) == FIELDS for line in lines)

    first = by_id[plain.headers["x-request-id"]]
    assert first["client_request_id"] == "mine-1" and first["stream"] is False
    assert (first["tenant_id"], first["key_prefix"], first["model"]) == (tenant_id, secret[:14], CHAT)
    assert (first["status"], first["outcome"], first["region"]) == (200, "finished", "eu-test")
    assert (first["prompt_tokens"], first["completion_tokens"]) == (5, 3)
    assert 0 < first["ttft_ms"] <= first["total_ms"]

    stream = by_id[streamed.headers["x-request-id"]]
    assert (stream["status"], stream["outcome"], stream["stream"], stream["completion_tokens"]) == (
        200, "finished", True, 3)
    assert stream["ttft_ms"] is not None

    refused = by_id[bad.headers["x-request-id"]]
    assert (refused["status"], refused["outcome"], refused["error_code"]) == (
        400, "refused", bad.json()["error"]["code"])
    assert refused["tenant_id"] == tenant_id and refused["ttft_ms"] is None
    throttled = by_id[limited.headers["x-request-id"]]
    assert (throttled["status"], throttled["error_code"], throttled["model"]) == (
        429, limited.json()["error"]["code"], CHAT)
    unknown = by_id[wrong_key.headers["x-request-id"]]
    assert (unknown["status"], unknown["tenant_id"], unknown["key_prefix"]) == (401, None, None)

    # Never a secret, in any record of any logger (the request log, access logs, errors).
    for record in caplog.records:
        text = record.getMessage() + repr(getattr(record, "__dict__", {}))
        assert secret not in text and secret[14:] not in text
        assert "Bearer" not in text and "authorization" not in text.lower()


async def test_a_client_that_leaves_mid_stream_is_logged_once_as_cancelled(
    api: tuple[httpx.AsyncClient, str, str], caplog: pytest.LogCaptureFixture,
) -> None:
    client, secret, _ = api
    chat = {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        async with client.stream("POST", "/v1/chat/completions", json=chat,
                                 headers={"authorization": f"Bearer {secret}"}) as response:
            async for _ in response.aiter_lines():
                break
        request_id = response.headers["x-request-id"]
        for _ in range(100):
            if _lines(caplog):
                break
            await asyncio.sleep(0.01)
    lines = _lines(caplog)
    assert [line["request_id"] for line in lines] == [request_id]
    assert lines[0]["status"] == 200 and lines[0]["outcome"] in {"cancelled", "finished"}


async def test_an_engine_failure_is_one_line_with_the_status_the_client_got(
    api: tuple[httpx.AsyncClient, str, str], caplog: pytest.LogCaptureFixture,
) -> None:
    client, secret, tenant_id = api
    chat = {"model": BROKEN, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    with caplog.at_level(logging.INFO, logger=REQUEST_LOGGER):
        response = await client.post("/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {secret}"})
    assert response.status_code >= 500
    lines = _lines(caplog)
    assert len(lines) == 1
    line = lines[0]
    assert (line["request_id"], line["status"], line["outcome"], line["tenant_id"], line["model"]) == (
        response.headers["x-request-id"], response.status_code, "failed", tenant_id, BROKEN)
    assert line["error_code"] == response.json()["error"]["code"] and line["ttft_ms"] is None
