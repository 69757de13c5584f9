"""/v1/files and /v1/batches in-process with the official `openai` client over the real app (key
authentication, routes, errors on PostgreSQL; engines scripted as in tests/unit/api): the calls the
client makes parse, isolation holds per key's tenant, and a runner finishes the batch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest

from crosslogic.api.app import build_api
from crosslogic.api.context import ApiContext
from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.batches.config import BatchesConfig
from crosslogic.batches.service import BatchService
from crosslogic.metering import UsageRecorder
from crosslogic.tenants.api_key_repository import create_api_key
from crosslogic.tenants.models import ApiKeyCreate, TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant
from tests.unit.api.scripted_api import ScriptedGateway
from tests.unit.batches.batch_fixtures import chat_lines


async def _key(db: asyncpg.Pool) -> str:
    tenant = await create_tenant(db, TenantCreate(name=f"batch-api-{uuid.uuid4().hex[:8]}"))
    return (await create_api_key(db, tenant.id, ApiKeyCreate(name="k"))).secret


@pytest.fixture
async def api(db_pool: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, BatchService]]:
    # Batches other tests left active must not be claimed by this test's runner.
    await db_pool.execute("UPDATE batches SET claimed_by = 'parked', claim_expires_at = now() + interval '1 day' "
                          "WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')")
    authenticator = KeyAuthenticator(db_pool)
    await authenticator.start()
    recorder = UsageRecorder(db_pool)
    service = BatchService(db_pool, BatchesConfig(max_file_bytes=10_000, poll_interval_s=0.1), home=tmp_path,
                           gateway=ScriptedGateway(["m"]), usage=recorder, region="local", retries=0)
    context = ApiContext(gateway=service.gateway, authenticator=authenticator, usage=recorder,
                         max_body_bytes=1 << 20, retries_before_first_token=0,
                         files=service.files, batches=service.batches)
    transport = httpx.ASGITransport(app=build_api(context), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http, service
    finally:
        await service.close()
        await authenticator.close()
        await recorder.close()


def _client(http: httpx.AsyncClient, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key=key, http_client=http, max_retries=0)


async def test_official_client_round_trip(db_pool: asyncpg.Pool, api: tuple[httpx.AsyncClient, BatchService]) -> None:
    http, service = api
    client, stranger = _client(http, await _key(db_pool)), _client(http, await _key(db_pool))
    data = chat_lines(5, malformed_at=(2,))
    uploaded = await client.files.create(file=("in.jsonl", data), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == ("batch", len(data), "in.jsonl")
    assert (await client.files.retrieve(uploaded.id)).id == uploaded.id
    assert (await client.files.content(uploaded.id)).content == data
    assert [f.id async for f in client.files.list()] == [uploaded.id]
    batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                        completion_window="24h", metadata={"a": "b"})
    assert batch.status == "validating" and batch.metadata == {"a": "b"}
    for call in (stranger.files.retrieve(uploaded.id), stranger.files.content(uploaded.id),
                 stranger.batches.retrieve(batch.id), stranger.batches.cancel(batch.id),
                 stranger.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                         completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            await call
    service.start()
    for _ in range(200):
        batch = await client.batches.retrieve(batch.id)
        if batch.status == "completed":
            break
        await asyncio.sleep(0.05)
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (5, 4, 1)
    assert batch.output_file_id and batch.error_file_id
    assert len((await client.files.content(batch.output_file_id)).content.splitlines()) == 4
    assert [b.id async for b in client.batches.list()] == [batch.id]
    assert [b.id async for b in stranger.batches.list()] == []
    assert (await client.files.delete(uploaded.id)).deleted


async def test_openai_errors(db_pool: asyncpg.Pool, api: tuple[httpx.AsyncClient, BatchService]) -> None:
    http, _ = api
    client = _client(http, await _key(db_pool))
    with pytest.raises(openai.BadRequestError) as caught:
        await client.files.create(file=("in.jsonl", chat_lines(1)), purpose="fine-tune")
    assert caught.value.body is not None and caught.value.param == "purpose"  # type: ignore[attr-defined]
    with pytest.raises(openai.APIStatusError) as too_big:
        await client.files.create(file=("in.jsonl", b"x" * 20_000), purpose="batch")
    assert too_big.value.status_code == 413
    with pytest.raises(openai.BadRequestError):
        await client.batches.create(input_file_id="file-" + "0" * 32, endpoint="/v1/completions",  # type: ignore[arg-type]
                                    completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        await client.batches.create(input_file_id="file-" + "0" * 32, endpoint="/v1/chat/completions",
                                    completion_window="24h")
    with pytest.raises(openai.AuthenticationError):
        await _client(http, "sk-bad").files.list()
