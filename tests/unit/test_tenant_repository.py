"""Tenant and API-key repositories against a real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from pydantic import ValidationError

from crosslogic.errors import ConflictError, InvalidRequestError, NotFoundError
from crosslogic.tenants import key_secrets
from crosslogic.tenants.api_key_repository import (
    create_api_key,
    find_key_for_auth,
    get_api_key,
    list_api_keys,
    record_key_usage,
    revoke_api_key,
)
from crosslogic.tenants.models import ApiKeyCreate, TenantCreate, TenantUpdate
from crosslogic.tenants.tenant_repository import (
    create_tenant,
    get_tenant,
    get_tenant_by_name,
    list_tenants,
    set_tenant_status,
    update_tenant,
)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def test_tenant_create_get_update(db_pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(db_pool, TenantCreate(name=unique("acme"), rpm=60))
    assert tenant.status == "active" and tenant.rpm == 60 and tenant.tpm is None
    assert (await get_tenant(db_pool, tenant.id)) == tenant
    assert (await get_tenant_by_name(db_pool, tenant.name)).id == tenant.id

    updated = await update_tenant(
        db_pool, tenant.id, TenantUpdate(tpm=1000, rpm=None, stripe_customer_id="cus_ABC123")
    )
    assert (updated.rpm, updated.tpm, updated.stripe_customer_id) == (None, 1000, "cus_ABC123")
    assert updated.max_concurrency is None and updated.updated_at >= tenant.updated_at
    # Absent fields stay as they were.
    again = await update_tenant(db_pool, tenant.id, TenantUpdate(max_concurrency=4))
    assert (again.tpm, again.max_concurrency) == (1000, 4)
    suspended = await set_tenant_status(db_pool, tenant.id, "suspended")
    assert suspended.status == "suspended"


async def test_tenant_errors_are_client_errors(db_pool: asyncpg.Pool) -> None:
    name = unique("dup")
    await create_tenant(db_pool, TenantCreate(name=name))
    with pytest.raises(ConflictError, match="already exists") as conflict:
        await create_tenant(db_pool, TenantCreate(name=name))
    assert conflict.value.status_code == 409
    with pytest.raises(NotFoundError):
        await get_tenant(db_pool, uuid.uuid4())
    with pytest.raises(NotFoundError):
        await update_tenant(db_pool, uuid.uuid4(), TenantUpdate(rpm=1))
    with pytest.raises(ValidationError):
        TenantCreate(name="x", rpm=0)
    with pytest.raises(ValidationError):
        TenantCreate(name="x", surprise=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        TenantUpdate(status=None)


async def test_tenant_pagination(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            created = [await create_tenant(conn, TenantCreate(name=unique("page"))) for _ in range(5)]
            ids = {t.id for t in created}
            seen: list[uuid.UUID] = []
            after = None
            while True:
                page = await list_tenants(conn, limit=2, after=after)
                assert len(page.data) <= 2
                seen += [t.id for t in page.data if t.id in ids]
                if not page.has_more:
                    break
                assert isinstance(page.last_id, uuid.UUID)
                after = page.last_id
            # One transaction shares one now(): ties on created_at are broken by id.
            assert seen == [t.id for t in sorted(created, key=lambda t: (t.created_at, t.id))]
            suspended = await set_tenant_status(conn, created[0].id, "suspended")
            only = await list_tenants(conn, status="suspended", limit=100)
            assert suspended.id in {t.id for t in only.data}
            assert all(t.status == "suspended" for t in only.data)
            with pytest.raises(InvalidRequestError):
                await list_tenants(conn, limit=0)
            with pytest.raises(InvalidRequestError):
                await list_tenants(conn, after=uuid.uuid4())
        finally:
            await tr.rollback()


async def test_api_key_lifecycle(db_pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(db_pool, TenantCreate(name=unique("keys")))
    created = await create_api_key(
        db_pool, tenant.id, ApiKeyCreate(name="ci", scopes=["m1", "m1", "m2"], tpm=500)
    )
    secret = created.secret
    assert secret.startswith("sk-cl-") and key_secrets.is_well_formed(secret)
    assert len(secret) - len("sk-cl-") >= 22  # >= 128 bits of url-safe base64
    assert created.key.prefix == secret[:14] and created.key.scopes == ["m1", "m2"]
    assert "secret" not in created.key.model_dump() and "digest" not in str(created.key.model_dump())

    # The database holds only the digest.
    stored = await db_pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", created.key.id)
    assert bytes(stored["secret_digest"]) == key_secrets.digest(secret)
    assert secret not in str(dict(stored))

    found = await find_key_for_auth(db_pool, created.key.prefix)
    assert found is not None and found.tenant.id == tenant.id
    assert key_secrets.verify(secret, found.secret_digest)
    assert not key_secrets.verify(secret + "x", found.secret_digest)
    assert await find_key_for_auth(db_pool, "sk-cl-nothere") is None

    page = await list_api_keys(db_pool, tenant.id)
    assert [k.id for k in page.data] == [created.key.id]
    revoked = await revoke_api_key(db_pool, created.key.id)
    assert revoked.revoked_at is not None
    again = await revoke_api_key(db_pool, created.key.id)
    assert again.revoked_at == revoked.revoked_at
    assert (await list_api_keys(db_pool, tenant.id, include_revoked=False)).data == []
    assert (await get_api_key(db_pool, created.key.id)).revoked_at == revoked.revoked_at


async def test_api_key_errors(db_pool: asyncpg.Pool) -> None:
    with pytest.raises(NotFoundError, match="tenant"):
        await create_api_key(db_pool, uuid.uuid4(), ApiKeyCreate(name="orphan"))
    tenant = await create_tenant(db_pool, TenantCreate(name=unique("keyerr")))
    past = datetime.now(UTC) - timedelta(seconds=1)
    with pytest.raises(InvalidRequestError, match="expires_at"):
        await create_api_key(db_pool, tenant.id, ApiKeyCreate(name="old", expires_at=past))
    with pytest.raises(NotFoundError):
        await revoke_api_key(db_pool, uuid.uuid4())
    other = await create_tenant(db_pool, TenantCreate(name=unique("other")))
    key = await create_api_key(db_pool, tenant.id, ApiKeyCreate(name="k"))
    with pytest.raises(NotFoundError):
        await get_api_key(db_pool, key.key.id, tenant_id=other.id)
    with pytest.raises(NotFoundError):
        await list_api_keys(db_pool, uuid.uuid4())


async def test_failed_key_create_keeps_callers_transaction_usable(db_pool: asyncpg.Pool) -> None:
    async with db_pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            tenant = await create_tenant(conn, TenantCreate(name=unique("tx")))
            with pytest.raises(NotFoundError):
                await create_api_key(conn, uuid.uuid4(), ApiKeyCreate(name="x"))
            # The savepoint contained the failure: the transaction goes on.
            await create_api_key(conn, tenant.id, ApiKeyCreate(name="y"))
        finally:
            await tr.rollback()


async def test_record_key_usage_batches_and_never_goes_back(db_pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(db_pool, TenantCreate(name=unique("usage")))
    keys = [await create_api_key(db_pool, tenant.id, ApiKeyCreate(name=f"k{i}")) for i in range(3)]
    now = datetime.now(UTC)
    assert await record_key_usage(db_pool, {k.key.id: now for k in keys}) == 3
    assert await record_key_usage(db_pool, {keys[0].key.id: now - timedelta(hours=1)}) == 0
    assert (await get_api_key(db_pool, keys[0].key.id)).last_used_at == now
    assert await record_key_usage(db_pool, {}) == 0
