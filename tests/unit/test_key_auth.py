"""KeyAuthenticator against a real PostgreSQL: lifecycle, errors, scopes, cross-replica invalidation."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.errors import (
    AuthenticationError,
    CrossLogicError,
    InsufficientQuotaError,
    PermissionDeniedError,
)
from crosslogic.tenants.api_key_repository import create_api_key, get_api_key, revoke_api_key
from crosslogic.tenants.models import ApiKeyCreate, CreatedApiKey, Tenant, TenantCreate, TenantUpdate
from crosslogic.tenants.tenant_repository import create_tenant, set_tenant_status, update_tenant

MakeAuth = Callable[..., Awaitable[KeyAuthenticator]]


@pytest.fixture
async def make_auth(database_url: str, db_pool: asyncpg.Pool) -> AsyncIterator[MakeAuth]:
    """Authenticators with their own pools, like ingress replicas in separate processes."""
    made: list[tuple[KeyAuthenticator, asyncpg.Pool]] = []

    async def make(**options: Any) -> KeyAuthenticator:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        auth = KeyAuthenticator(pool, **options)
        await auth.start()
        made.append((auth, pool))
        return auth

    yield make
    for auth, pool in made:
        await auth.close()
        await pool.close()


async def new_tenant(db: asyncpg.Pool, **limits: int) -> Tenant:
    spec = TenantCreate.model_validate({"name": f"t-{uuid.uuid4().hex[:10]}", **limits})
    return await create_tenant(db, spec)


async def new_key(db: asyncpg.Pool, tenant: Tenant, **spec: object) -> CreatedApiKey:
    return await create_api_key(db, tenant.id, ApiKeyCreate(name="test", **spec))  # type: ignore[arg-type]


def bearer(key: CreatedApiKey) -> str:
    return f"Bearer {key.secret}"


async def rejected_within(
    auth: KeyAuthenticator, header: str, error: type[CrossLogicError], limit_s: float
) -> float:
    """Seconds until `auth` starts rejecting `header` with `error` (fails after `limit_s`)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        try:
            await auth.authenticate(header, None)
        except error:
            return time.monotonic() - started
        await asyncio.sleep(0.005)
    raise AssertionError(f"still accepted after {limit_s}s")


async def test_valid_key_gives_context_and_is_cached(db_pool: asyncpg.Pool, make_auth: MakeAuth) -> None:
    tenant = await new_tenant(db_pool, rpm=100, tpm=10_000)
    await update_tenant(db_pool, tenant.id, TenantUpdate(stripe_customer_id="cus_T1"))
    key = await new_key(db_pool, tenant, rpm=10, max_concurrency=2)
    auth = await make_auth()
    ctx = await auth.authenticate(bearer(key), "any-model")
    assert (ctx.tenant_id, ctx.tenant_name, ctx.key_id) == (tenant.id, tenant.name, key.key.id)
    assert ctx.key_prefix == key.key.prefix and ctx.stripe_customer_id == "cus_T1"
    assert (ctx.key_limits.rpm, ctx.key_limits.tpm, ctx.key_limits.max_concurrency) == (10, None, 2)
    assert (ctx.tenant_limits.rpm, ctx.tenant_limits.tpm) == (100, 10_000)
    misses = auth.misses
    for _ in range(50):
        assert await auth.authenticate(bearer(key), None) is ctx
    assert auth.misses == misses  # warm: no further lookups
    # The scheme is case-insensitive and surrounding whitespace is ignored.
    assert await auth.authenticate(f"  bearer   {key.secret} ", None) is ctx


@pytest.mark.parametrize(
    "header",
    [None, "", "   ", "Bearer", "Bearer ", "Basic abc", "sk-cl-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
     "Bearer sk-other-key", "Bearer sk-cl-short", "Bearer sk-cl-" + "a" * 300,
     "Bearer sk-cl-" + "é" * 40],
)
async def test_missing_or_malformed_header_is_401(make_auth: MakeAuth, header: str | None) -> None:
    auth = await make_auth()
    with pytest.raises(AuthenticationError) as caught:
        await auth.authenticate(header, None)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    assert auth.misses == 0  # rejected before any lookup


async def test_errors_never_echo_the_secret(db_pool: asyncpg.Pool, make_auth: MakeAuth) -> None:
    tenant = await new_tenant(db_pool)
    key = await new_key(db_pool, tenant, scopes=["only-this"])
    auth = await make_auth()
    unknown = "sk-cl-" + uuid.uuid4().hex + uuid.uuid4().hex[:10]
    wrong_secret = key.secret[:-4] + ("AAAA" if not key.secret.endswith("AAAA") else "BBBB")
    attempts = [
        (f"Bearer {unknown}", None, AuthenticationError, unknown),
        (f"Bearer {wrong_secret}", None, AuthenticationError, wrong_secret),
        (f"Token {key.secret}", None, AuthenticationError, key.secret),
        (bearer(key), "other-model", PermissionDeniedError, key.secret),
    ]
    for header, model, error, secret in attempts:
        with pytest.raises(error) as caught:
            await auth.authenticate(header, model)
        body = str(caught.value.body()) + repr(caught.value) + str(caught.value)
        random_part = secret[len("sk-cl-"):]
        assert random_part[:8] not in body and random_part[-8:] not in body, body


async def test_key_lifecycle_expiry_and_revocation(db_pool: asyncpg.Pool, make_auth: MakeAuth) -> None:
    tenant = await new_tenant(db_pool)
    expiring = await new_key(
        db_pool, tenant, expires_at=datetime.now(UTC) + timedelta(seconds=1.5)
    )
    plain = await new_key(db_pool, tenant)
    auth = await make_auth()
    await auth.authenticate(bearer(expiring), None)
    await auth.authenticate(bearer(plain), None)
    await asyncio.sleep(1.6)
    with pytest.raises(AuthenticationError, match="expired"):
        await auth.authenticate(bearer(expiring), None)  # from the cache: expiry is checked per request
    await revoke_api_key(db_pool, plain.key.id)
    elapsed = await rejected_within(auth, bearer(plain), AuthenticationError, 1.0)
    assert elapsed < 1.0
    with pytest.raises(AuthenticationError, match="revoked") as caught:
        await auth.authenticate(bearer(plain), None)
    assert caught.value.code == "invalid_api_key"


@pytest.mark.parametrize("change", ["revoke key", "suspend tenant"])
async def test_change_reaches_two_replicas_within_one_second(
    db_pool: asyncpg.Pool, make_auth: MakeAuth, change: str
) -> None:
    tenant = await new_tenant(db_pool)
    key = await new_key(db_pool, tenant)
    replicas = [await make_auth(), await make_auth()]  # two "ingress replicas", own pools
    for replica in replicas:
        await replica.authenticate(bearer(key), None)  # warm both caches
    error: type[CrossLogicError]
    if change == "revoke key":
        await revoke_api_key(db_pool, key.key.id)
        error = AuthenticationError
    else:
        await set_tenant_status(db_pool, tenant.id, "suspended")
        error = PermissionDeniedError
    delays = await asyncio.gather(*(rejected_within(r, bearer(key), error, 1.0) for r in replicas))
    assert max(delays) < 1.0, delays


async def test_suspension_code_and_reactivation(db_pool: asyncpg.Pool, make_auth: MakeAuth) -> None:
    tenant = await new_tenant(db_pool)
    key = await new_key(db_pool, tenant)
    auth = await make_auth()
    await set_tenant_status(db_pool, tenant.id, "suspended")
    with pytest.raises(PermissionDeniedError) as caught:
        await auth.authenticate(bearer(key), None)
    assert caught.value.status_code == 403 and caught.value.code == "tenant_suspended"
    await set_tenant_status(db_pool, tenant.id, "active")
    deadline = time.monotonic() + 1.0
    while True:
        try:
            await auth.authenticate(bearer(key), None)
            break
        except PermissionDeniedError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)


async def test_limit_change_refreshes_the_cached_context(
    db_pool: asyncpg.Pool, make_auth: MakeAuth
) -> None:
    tenant = await new_tenant(db_pool, rpm=5)
    key = await new_key(db_pool, tenant)
    auth = await make_auth()
    assert (await auth.authenticate(bearer(key), None)).tenant_limits.rpm == 5
    await update_tenant(db_pool, tenant.id, TenantUpdate(rpm=50))
    deadline = time.monotonic() + 1.0
    while (await auth.authenticate(bearer(key), None)).tenant_limits.rpm != 50:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)


async def test_scopes(db_pool: asyncpg.Pool, make_auth: MakeAuth) -> None:
    tenant = await new_tenant(db_pool)
    scoped = await new_key(db_pool, tenant, scopes=["m1", "m2"])
    unscoped = await new_key(db_pool, tenant)
    auth = await make_auth()
    assert (await auth.authenticate(bearer(scoped), "m1")).scopes == {"m1", "m2"}
    await auth.authenticate(bearer(scoped), None)  # e.g. GET /v1/models: no model to check
    with pytest.raises(PermissionDeniedError) as caught:
        await auth.authenticate(bearer(scoped), "m3")
    assert caught.value.status_code == 403 and caught.value.param == "model"
    ctx = await auth.authenticate(bearer(unscoped), "m3")
    assert ctx.allows_model("anything") and not ctx.scopes


async def test_new_key_works_right_after_unknown_lookup(
    db_pool: asyncpg.Pool, make_auth: MakeAuth
) -> None:
    auth = await make_auth()
    tenant = await new_tenant(db_pool)
    key = await new_key(db_pool, tenant)
    await revoke_api_key(db_pool, key.key.id)
    await asyncio.sleep(0.3)  # let the revocation's NOTIFY land first: it would drop the entry below
    with pytest.raises(AuthenticationError):
        await auth.authenticate(bearer(key), None)
    # Revoked and unknown keys are cached too; a burst of bad requests does not hit PostgreSQL.
    misses = auth.misses
    for _ in range(20):
        with pytest.raises(AuthenticationError):
            await auth.authenticate(bearer(key), None)
    assert auth.misses == misses


async def test_concurrent_cold_requests_share_one_lookup(
    db_pool: asyncpg.Pool, make_auth: MakeAuth
) -> None:
    tenant = await new_tenant(db_pool)
    key = await new_key(db_pool, tenant)
    auth = await make_auth()
    contexts = await asyncio.gather(*(auth.authenticate(bearer(key), None) for _ in range(20)))
    assert len({id(c) for c in contexts}) == 1


async def test_last_used_is_batched(db_pool: asyncpg.Pool, make_auth: MakeAuth) -> None:
    tenant = await new_tenant(db_pool)
    key = await new_key(db_pool, tenant)
    auth = await make_auth(usage_flush_interval_s=3600.0)
    for _ in range(200):
        await auth.authenticate(bearer(key), None)
    assert auth.usage.pending == 1
    assert (await get_api_key(db_pool, key.key.id)).last_used_at is None  # nothing written yet
    assert await auth.usage.flush() == 1
    assert auth.usage.flushes == 1
    last_used = (await get_api_key(db_pool, key.key.id)).last_used_at
    assert last_used is not None and abs((datetime.now(UTC) - last_used).total_seconds()) < 5
    # Writing last_used_at does not invalidate caches (the trigger ignores it).
    await asyncio.sleep(0.3)
    misses = auth.misses
    await auth.authenticate(bearer(key), None)
    assert auth.misses == misses


async def test_flush_loop_runs_by_itself(db_pool: asyncpg.Pool, make_auth: MakeAuth) -> None:
    tenant = await new_tenant(db_pool)
    key = await new_key(db_pool, tenant)
    auth = await make_auth(usage_flush_interval_s=0.2)
    await auth.authenticate(bearer(key), None)
    deadline = time.monotonic() + 3
    while (await get_api_key(db_pool, key.key.id)).last_used_at is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_revocation_within_one_second_while_listener_reconnects(
    db_pool: asyncpg.Pool, make_auth: MakeAuth
) -> None:
    tenant = await new_tenant(db_pool)
    key = await new_key(db_pool, tenant)
    auth = await make_auth()
    await auth.authenticate(bearer(key), None)
    pid = auth.listener.backend_pid
    assert pid is not None
    # Kill the listener's session: notifications sent until it reconnects are lost.
    assert await db_pool.fetchval("SELECT pg_terminate_backend($1)", pid)
    await revoke_api_key(db_pool, key.key.id)
    assert await rejected_within(auth, bearer(key), AuthenticationError, 1.0) < 1.0
    deadline = time.monotonic() + 5
    while not (auth.listener.connected and auth.listener.connections >= 2):
        assert time.monotonic() < deadline, "listener did not reconnect"
        await asyncio.sleep(0.05)
    assert auth.listener.backend_pid != pid


async def test_database_outage_on_cold_path_is_503(db_pool: asyncpg.Pool) -> None:
    tenant = await new_tenant(db_pool)
    key = await new_key(db_pool, tenant)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    # min_size=0: the pool connects lazily, so the outage shows up on the first lookup.
    pool = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{dead_port}/x", min_size=0)
    auth = KeyAuthenticator(pool)
    try:
        with pytest.raises(CrossLogicError) as caught:
            await auth.authenticate(bearer(key), None)
        assert caught.value.status_code == 503 and key.secret not in str(caught.value.body())
    finally:
        await pool.close()


async def test_billing_suspension_is_429_insufficient_quota(db_pool: asyncpg.Pool, make_auth: MakeAuth) -> None:
    tenant = await new_tenant(db_pool)
    key = await new_key(db_pool, tenant)
    auth = await make_auth()
    await auth.authenticate(bearer(key), None)  # cached while active
    async with db_pool.acquire() as conn, conn.transaction():
        # What the billing webhook processor does on invoice.payment_failed.
        await conn.execute(
            "INSERT INTO billing_tenant_state (tenant_id, suspended_by_billing) VALUES ($1, true)", tenant.id
        )
        await set_tenant_status(conn, tenant.id, "suspended")
    await rejected_within(auth, bearer(key), InsufficientQuotaError, 1.0)
    with pytest.raises(InsufficientQuotaError) as caught:
        await auth.authenticate(bearer(key), None)
    assert caught.value.status_code == 429 and caught.value.code == "insufficient_quota"
