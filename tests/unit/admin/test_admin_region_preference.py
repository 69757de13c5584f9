"""Region preference of keys and tenants (migration 0016): set through the admin API, audited, refused
when malformed (API and database), and carried into the auth context (key's, else tenant's), where a
change reaches a warm cache through the NOTIFY trigger."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from admin_support import assert_error

from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.regions.preference import region_preference


async def create_tenant(admin: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await admin.post("/admin/v1/tenants", json={"name": f"pref-{uuid.uuid4().hex[:8]}", **body})
    assert response.status_code == 201, response.text
    return response.json()


async def create_key(admin: httpx.AsyncClient, tenant_id: str, **body: Any) -> dict[str, Any]:
    response = await admin.post(f"/admin/v1/tenants/{tenant_id}/keys", json={"name": "k", **body})
    assert response.status_code == 201, response.text
    return response.json()


async def test_set_and_clear_through_the_admin_api(admin: httpx.AsyncClient, db_pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(admin, preferred_region="eu-west")
    assert tenant["preferred_region"] == "eu-west"
    created = await create_key(admin, tenant["id"], preferred_region="us-east-2")
    key = created["key"]
    assert key["preferred_region"] == "us-east-2"
    assert (await admin.get(f"/admin/v1/keys/{key['id']}")).json()["preferred_region"] == "us-east-2"

    patched = await admin.patch(f"/admin/v1/keys/{key['id']}", json={"preferred_region": None})
    assert patched.status_code == 200 and patched.json()["preferred_region"] is None
    untouched = await admin.patch(f"/admin/v1/keys/{key['id']}", json={"rpm": 5})
    assert untouched.json()["preferred_region"] is None and untouched.json()["rpm"] == 5
    patched = await admin.patch(f"/admin/v1/tenants/{tenant['id']}", json={"preferred_region": "ap-south"})
    assert patched.status_code == 200 and patched.json()["preferred_region"] == "ap-south"
    listed = (await admin.get("/admin/v1/tenants", params={"limit": 100})).json()
    assert "preferred_region" in listed["data"][0]

    before, after = await db_pool.fetchrow(
        "SELECT before::text, after::text FROM audit_log WHERE target_id = $1 AND action = 'tenant.update'",
        tenant["id"],
    )
    assert json.loads(before)["preferred_region"] == "eu-west" and json.loads(after)["preferred_region"] == "ap-south"


@pytest.mark.parametrize("bad", ["EU", "eu west", "-eu", "e" * 64, "", 7])
async def test_a_malformed_region_is_a_400(admin: httpx.AsyncClient, bad: Any) -> None:
    tenant = await create_tenant(admin)
    assert_error(await admin.post("/admin/v1/tenants", json={"name": "x", "preferred_region": bad}), 400)
    assert_error(await admin.patch(f"/admin/v1/tenants/{tenant['id']}", json={"preferred_region": bad}), 400)
    key = (await create_key(admin, tenant["id"]))["key"]
    assert_error(await admin.patch(f"/admin/v1/keys/{key['id']}", json={"preferred_region": bad}), 400)


async def test_the_database_refuses_a_malformed_region(db_pool: asyncpg.Pool) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await db_pool.execute("INSERT INTO tenants (name, preferred_region) VALUES ($1, 'Not A Region')",
                              f"bad-{uuid.uuid4().hex[:8]}")


async def test_auth_context_carries_key_then_tenant_preference(admin: httpx.AsyncClient, db_pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(admin, preferred_region="eu")
    plain = await create_key(admin, tenant["id"])
    pinned = await create_key(admin, tenant["id"], preferred_region="us")
    auth = KeyAuthenticator(db_pool)
    await auth.start()
    try:
        plain_ctx = await auth.authenticate(f"Bearer {plain['secret']}", None)
        pinned_ctx = await auth.authenticate(f"Bearer {pinned['secret']}", None)
        assert plain_ctx.preferred_region == "eu" and pinned_ctx.preferred_region == "us"
        # Order: header > key > tenant; a blank header is no header.
        assert region_preference("AP-South ", pinned_ctx) == "ap-south"
        assert region_preference("  ", pinned_ctx) == "us" and region_preference(None, plain_ctx) == "eu"

        # A change reaches the warm cache (NOTIFY) within a second, like a revocation.
        await admin.patch(f"/admin/v1/tenants/{tenant['id']}", json={"preferred_region": None})
        deadline = time.monotonic() + 1.0
        while (await auth.authenticate(f"Bearer {plain['secret']}", None)).preferred_region is not None:
            assert time.monotonic() < deadline, "tenant preference change not seen within 1 s"
            await asyncio.sleep(0.01)
    finally:
        await auth.close()
