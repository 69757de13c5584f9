"""The fair queue in the real /v1 app (crosslogic/api/endpoint.py with ApiContext.fairness): a request
past the model's slots waits, then gets a 503 OpenAI error with retry-after; a finished stream gives
its slot back; each tenant is queued under its own id and weight. Key authenticator on PostgreSQL,
in-memory limiter; the engines scripted (tests/unit/api/scripted_api.py)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from crosslogic.api.app import build_api
from crosslogic.api.context import ApiContext
from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.config import AppConfig
from crosslogic.fairness.config import FairnessConfig
from crosslogic.fairness.gateway import FairQueues, fair_queues
from crosslogic.metering import UsageRecorder
from crosslogic.ratelimit import InMemoryRateLimiter, RateLimitConfig
from crosslogic.tenants.api_key_repository import create_api_key
from crosslogic.tenants.models import ApiKeyCreate, TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant
from tests.unit.api.scripted_api import ScriptedGateway

MODEL = "fair-m"


async def tenant_key(pool: asyncpg.Pool, weight: float | None) -> tuple[str, str]:
    tenant = await create_tenant(pool, TenantCreate(name=f"fair-{uuid.uuid4().hex[:8]}", weight=weight))
    key = await create_api_key(pool, tenant.id, ApiKeyCreate(name="k"))
    return str(tenant.id), key.secret


async def test_requests_past_the_slots_wait_then_503_and_streams_give_slots_back(db_pool: asyncpg.Pool) -> None:
    queues = FairQueues(FairnessConfig(enabled=True, slots_per_replica=1, burst_per_replica=0, max_wait_s=0.3),
                        lambda _model: 1)
    authenticator = KeyAuthenticator(db_pool)
    await authenticator.start()
    recorder = UsageRecorder(db_pool)
    context = ApiContext(
        gateway=ScriptedGateway([MODEL], token_gap_s=0.5), authenticator=authenticator, usage=recorder,
        max_body_bytes=1 << 20, retries_before_first_token=1, limiter=InMemoryRateLimiter(RateLimitConfig()),
        fairness=queues,
    )
    heavy_id, heavy = await tenant_key(db_pool, 3.0)
    _, light = await tenant_key(db_pool, None)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    transport = httpx.ASGITransport(app=build_api(context), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            queue = queues.queue(MODEL)
            heavy_call = asyncio.get_running_loop().create_task(client.post(
                "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {heavy}"}))
            await asyncio.sleep(0.2)  # its stream runs ~1.5 s (3 tokens 0.5 s apart)
            assert queue.in_flight == 1 and queue.tenant_in_flight(heavy_id) == 1
            refused = await client.post("/v1/chat/completions", json=body,
                                        headers={"authorization": f"Bearer {light}"})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "engine_queue_full"
            assert queue.waiting == 0 and queue.in_flight == 1
            assert (await heavy_call).status_code == 200
            assert queue.in_flight == 0  # the finished stream gave its slot back
            answered = await client.post("/v1/chat/completions", json=body,
                                         headers={"authorization": f"Bearer {light}"})
            assert answered.status_code == 200 and "data: [DONE]" in answered.text
            assert queue.in_flight == 0
    finally:
        await authenticator.close()
        await recorder.close()


def test_fair_queues_come_from_the_app_config() -> None:
    models = [{"served_name": MODEL, "source": "s", "num_replicas": 4}]
    assert fair_queues(AppConfig.model_validate({"models": models})) is None  # off by default
    config = AppConfig.model_validate({
        "models": models, "ingress": {"num_replicas": 3},
        "fairness": {"enabled": True, "slots_per_replica": 24, "burst_per_replica": 4}})
    queues = fair_queues(config)
    assert queues is not None
    queue = queues.queue(MODEL)
    assert queue.burst == 6  # ceil(4 * 4 / 3): this ingress replica's share
    assert queue._capacity() == 32  # ceil(4 * 24 / 3)
