"""The /v1 app hands the request's address to the key authenticator: 429s per client over HTTP.

The whole app (`build_api`) with the real authenticator on PostgreSQL, over ASGI with a chosen
client address, as uvicorn would hand it over.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest
from test_hostile_numbers import ModelsOnlyGateway

from crosslogic.api.app import build_api
from crosslogic.api.context import ApiContext
from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.auth.throttle import AuthThrottleConfig, FailureBudget
from crosslogic.metering import UsageRecorder
from crosslogic.tenants.api_key_repository import create_api_key
from crosslogic.tenants.models import ApiKeyCreate, TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant

Client = Callable[[str], httpx.AsyncClient]


@pytest.fixture
async def client_from(db_pool: asyncpg.Pool) -> AsyncIterator[tuple[Client, KeyAuthenticator]]:
    authenticator = KeyAuthenticator(
        db_pool, throttle=AuthThrottleConfig(per_address=FailureBudget(failures=5))
    )
    await authenticator.start()
    recorder = UsageRecorder(db_pool)
    context = ApiContext(
        gateway=ModelsOnlyGateway(), authenticator=authenticator, usage=recorder,
        max_body_bytes=1024 * 1024, retries_before_first_token=0,
    )
    app = build_api(context)
    opened: list[httpx.AsyncClient] = []

    def make(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        opened.append(httpx.AsyncClient(transport=transport, base_url="http://test"))
        return opened[-1]

    try:
        yield make, authenticator
    finally:
        for client in opened:
            await client.aclose()
        await authenticator.close()
        await recorder.close()


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


async def test_bad_keys_get_429_per_client_address_over_http(
    db_pool: asyncpg.Pool, client_from: tuple[Client, KeyAuthenticator]
) -> None:
    make, authenticator = client_from
    tenant = await create_tenant(db_pool, TenantCreate(name=f"thr-{uuid.uuid4().hex[:8]}"))
    key = await create_api_key(db_pool, tenant.id, ApiKeyCreate(name="k"))
    attacker, other = make("198.51.100.20"), make("192.0.2.21")
    statuses = []
    for i in range(30):
        # A rotating X-Forwarded-For changes nothing: it is not trusted by default.
        headers = {**bearer(f"sk-cl-{secrets.token_urlsafe(32)}"), "x-forwarded-for": f"10.9.{i}.1"}
        response = await attacker.get("/v1/models", headers=headers)
        statuses.append(response.status_code)
    assert statuses == [401] * 5 + [429] * 25
    assert authenticator.lookups == 5
    assert response.json()["error"]["code"] == "too_many_failed_auth"
    assert int(response.headers["retry-after"]) == 12 and int(response.headers["retry-after-ms"]) <= 12_000
    assert (await other.get("/v1/models", headers=bearer(key.secret))).status_code == 200
    # A bad key from the other address is still a plain 401.
    assert (await other.get("/v1/models", headers=bearer(f"sk-cl-{secrets.token_urlsafe(32)}"))).status_code == 401
