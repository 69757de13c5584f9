"""A tenant's fair-share weight (migration 0019): set at creation, changed and cleared by an update,
handed to the request path on the key's AuthContext. Real PostgreSQL."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from pydantic import ValidationError

from crosslogic.auth.key_lookup import entry_from
from crosslogic.tenants import key_secrets
from crosslogic.tenants.api_key_repository import create_api_key, find_key_for_auth
from crosslogic.tenants.models import ApiKeyCreate, TenantCreate, TenantUpdate
from crosslogic.tenants.tenant_repository import create_tenant, get_tenant, update_tenant


async def test_weight_is_stored_updated_cleared_and_reaches_the_auth_context(db_pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(db_pool, TenantCreate(name=f"weighted-{uuid.uuid4().hex[:8]}", weight=4.0))
    assert tenant.weight == 4.0 and (await get_tenant(db_pool, tenant.id)).weight == 4.0
    created = await create_api_key(db_pool, tenant.id, ApiKeyCreate(name="k"))
    record = await find_key_for_auth(db_pool, key_secrets.lookup_prefix(created.secret))
    assert record is not None and entry_from(record).context is not None
    assert entry_from(record).context.fair_weight == 4.0
    assert (await update_tenant(db_pool, tenant.id, TenantUpdate(weight=0.5))).weight == 0.5
    assert (await update_tenant(db_pool, tenant.id, TenantUpdate(rpm=10))).weight == 0.5  # absent: kept
    assert (await update_tenant(db_pool, tenant.id, TenantUpdate(weight=None))).weight is None
    with pytest.raises(ValidationError):
        TenantUpdate(weight=0)
    with pytest.raises(asyncpg.CheckViolationError):
        await db_pool.execute("UPDATE tenants SET weight = -1 WHERE id = $1", tenant.id)
