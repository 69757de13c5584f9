"""Each inference request reaches the metrics sink once, with the status the client got and the figures
an operator graphs: the whole /v1 app (`build_api`) with the real key authenticator on PostgreSQL, the
real in-memory limiter and a scripted engine behind the gateway (tests/unit/api/scripted_api.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from crosslogic.metering import UsageRecorder
from crosslogic.telemetry.request_metrics import RequestSample
from crosslogic.tenants.api_key_repository import create_api_key
from crosslogic.tenants.models import ApiKeyCreate, TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant
from tests.unit.api.scripted_api import ScriptedGateway, scripted_api

CHAT, MID_STREAM = "chat-m", "dies-mid-stream"
TOKEN_GAP_S = 0.02


class SampleList:
    def __init__(self) -> None:
        self.samples: list[RequestSample] = []

    def observe_request(self, sample: RequestSample) -> None:
        self.samples.append(sample)


@pytest.fixture
async def stack(db_pool: asyncpg.Pool) -> AsyncIterator[tuple[httpx.AsyncClient, SampleList, ScriptedGateway, str]]:
    sink, gateway = SampleList(), ScriptedGateway([CHAT, MID_STREAM], token_gap_s=TOKEN_GAP_S,
                                                  fails_mid_stream=[MID_STREAM])
    async with scripted_api(db_pool, gateway, metrics=sink, retries_before_first_token=1) as api:
        api.client.headers["authorization"] = f"Bearer {api.secret}"
        yield api.client, sink, gateway, api.tenant_id


CHAT_BODY = {"model": CHAT, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


async def test_a_stream_gives_ttft_tpot_tokens_and_its_placement(stack: Any) -> None:
    client, sink, _, tenant = stack
    resp = await client.post("/v1/chat/completions", json={**CHAT_BODY, "stream": True})
    assert resp.status_code == 200 and "[DONE]" in resp.text
    (s,) = sink.samples
    assert (s.route, s.status, s.model, s.tenant) == ("/v1/chat/completions", 200, CHAT, tenant)
    assert s.outcome == "finished"
    assert (s.prompt_tokens, s.completion_tokens) == (5, 3)
    assert s.ttft_s is not None and s.tpot_s is not None and s.queue_wait_s is not None
    assert s.ttft_s < s.latency_s
    # Three tokens TOKEN_GAP_S apart after the first: two gaps per (3 - 1) tokens.
    assert TOKEN_GAP_S * 0.9 <= s.tpot_s < TOKEN_GAP_S * 5
    assert [(a.placement, a.region) for a in s.attempts] == [("local", "local")]


async def test_non_streamed_answer_has_tokens_but_no_ttft(stack: Any) -> None:
    client, sink, _, _ = stack
    resp = await client.post("/v1/chat/completions", json=CHAT_BODY)
    assert resp.status_code == 200
    (s,) = sink.samples
    assert s.status == 200 and (s.prompt_tokens, s.completion_tokens) == (5, 3)
    assert s.ttft_s is None and s.tpot_s is None and s.outcome == "finished"


async def test_a_stream_that_fails_after_its_first_token_is_a_200_stream_error(stack: Any) -> None:
    """Its 200 went out with the headers; the engine failed after one token. Counted as status 200
    with outcome stream_error, not as a finished 200 (nor as a 5xx the client never got)."""
    client, sink, _, tenant = stack
    resp = await client.post("/v1/chat/completions", json={**CHAT_BODY, "model": MID_STREAM, "stream": True})
    assert resp.status_code == 200
    assert '"n": 1' in resp.text and '"error"' in resp.text and "[DONE]" not in resp.text
    (s,) = sink.samples
    assert (s.status, s.outcome, s.model, s.tenant) == (200, "stream_error", MID_STREAM, tenant)
    assert s.completion_tokens == 1 and s.ttft_s is not None and s.tpot_s is None


async def test_engine_failure_before_the_first_token_is_a_failed_5xx(stack: Any) -> None:
    client, sink, gateway, _ = stack
    gateway.fail_first = 2  # the retry fails too
    resp = await client.post("/v1/chat/completions", json={**CHAT_BODY, "stream": True})
    assert resp.status_code >= 500
    (s,) = sink.samples
    assert (s.status, s.outcome) == (resp.status_code, "failed") and len(s.attempts) == 2


async def test_a_retry_before_the_first_token_is_two_attempts(stack: Any) -> None:
    client, sink, gateway, _ = stack
    gateway.fail_first = 1
    resp = await client.post("/v1/chat/completions", json={**CHAT_BODY, "stream": True})
    assert resp.status_code == 200
    (s,) = sink.samples
    assert len(s.attempts) == 2


async def test_refusals_are_counted_without_client_chosen_labels(stack: Any) -> None:
    client, sink, _, tenant = stack
    bad_key = await client.post("/v1/chat/completions", json=CHAT_BODY, headers={"authorization": "Bearer sk-nope"})
    made_up = "made-up-" + uuid.uuid4().hex
    unknown_model = await client.post("/v1/chat/completions", json={**CHAT_BODY, "model": made_up})
    bad_body = await client.post("/v1/completions", json={"model": CHAT})
    await client.get("/v1/models")  # not an inference route: not observed
    assert [r.status_code for r in (bad_key, unknown_model, bad_body)] == [401, 404, 400]
    assert {s.outcome for s in sink.samples} == {"refused"}
    assert [(s.route, s.status, s.model, s.tenant) for s in sink.samples] == [
        ("/v1/chat/completions", 401, "unknown", "unknown"),
        # A model name the client made up never becomes a label value.
        ("/v1/chat/completions", 404, "unknown", "unknown"),
        ("/v1/completions", 400, "unknown", "unknown"),
    ]
    assert all(not s.attempts and s.prompt_tokens == 0 for s in sink.samples)
    assert tenant  # labels of refused requests stay unknown even for a valid key


async def test_usage_ledger_flushes_are_timed_for_the_exporter(db_pool: asyncpg.Pool) -> None:
    """Flush durations wait in the recorder's Metrics until drained (deployments/ray_metrics.py)."""
    from crosslogic.metering.records import UsageRecord, UsageStatus

    tenant = await create_tenant(db_pool, TenantCreate(name=f"ledger-{uuid.uuid4().hex[:8]}"))
    key = await create_api_key(db_pool, tenant.id, ApiKeyCreate(name="k"))
    recorder = UsageRecorder(db_pool)
    recorder.record(UsageRecord(
        request_id=f"req_{uuid.uuid4().hex}", tenant_id=tenant.id, key_id=key.key.id, model=CHAT, region="local",
        prompt_tokens=1, completion_tokens=1, status=UsageStatus.FINISHED,
    ))
    await recorder.flush()
    drained = recorder.metrics.drain()
    (duration,) = drained["crosslogic_usage_ledger_flush_seconds"]
    assert 0 < duration < 10
    assert recorder.metrics.drain() == {}  # drained once
