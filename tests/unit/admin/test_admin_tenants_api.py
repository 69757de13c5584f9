"""`/admin/v1/tenants` and API keys on real PostgreSQL: lifecycle, audit rows, bad input."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import httpx
from admin_support import CLIENT_ADDR, ClientFactory, assert_error

from crosslogic.tenants import key_secrets


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def create_tenant(admin: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await admin.post("/admin/v1/tenants", json={"name": unique("acme"), **body})
    assert response.status_code == 201, response.text
    return response.json()


async def audit_for(db_pool: asyncpg.Pool, target_id: str) -> list[asyncpg.Record]:
    return await db_pool.fetch(
        "SELECT actor, action, result, before::text AS before, after::text AS after, client_addr "
        "FROM audit_log WHERE target_id = $1 ORDER BY id",
        target_id,
    )


async def test_tenant_lifecycle_is_audited(admin: httpx.AsyncClient, db_pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(admin, rpm=60, stripe_customer_id="cus_Abc123")
    tid = tenant["id"]
    assert tenant["status"] == "active" and tenant["rpm"] == 60

    patched = await admin.patch(f"/admin/v1/tenants/{tid}", json={"tpm": 100_000, "rpm": None})
    assert patched.status_code == 200, patched.text
    assert patched.json()["tpm"] == 100_000 and patched.json()["rpm"] is None

    suspended = await admin.post(f"/admin/v1/tenants/{tid}/suspend")
    assert suspended.json()["status"] == "suspended"
    reactivated = await admin.post(f"/admin/v1/tenants/{tid}/reactivate")
    assert reactivated.json()["status"] == "active"
    assert (await admin.get(f"/admin/v1/tenants/{tid}")).json()["status"] == "active"

    rows = await audit_for(db_pool, tid)
    assert [r["action"] for r in rows] == [
        "tenant.create",
        "tenant.update",
        "tenant.suspend",
        "tenant.reactivate",
    ]
    assert all(r["result"] == "success" and r["actor"] == "alice@example.com" for r in rows)
    assert all(r["client_addr"] == CLIENT_ADDR for r in rows)
    update = rows[1]
    assert json.loads(update["before"])["rpm"] == 60 and json.loads(update["after"])["rpm"] is None
    assert json.loads(rows[2]["after"])["status"] == "suspended"


async def test_key_lifecycle_secret_shown_once(admin: httpx.AsyncClient, db_pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(admin)
    created = await admin.post(
        f"/admin/v1/tenants/{tenant['id']}/keys",
        json={"name": "ci", "scopes": ["llama-8b"], "rpm": 10},
    )
    assert created.status_code == 201, created.text
    secret, key = created.json()["secret"], created.json()["key"]
    assert key_secrets.is_well_formed(secret) and secret.startswith(key["prefix"])

    listed = await admin.get(f"/admin/v1/tenants/{tenant['id']}/keys")
    assert [k["id"] for k in listed.json()["data"]] == [key["id"]]
    fetched = await admin.get(f"/admin/v1/keys/{key['id']}")
    for response in (listed, fetched):
        assert secret not in response.text and "digest" not in response.text

    revoked = await admin.post(f"/admin/v1/keys/{key['id']}/revoke")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    again = await admin.post(f"/admin/v1/keys/{key['id']}/revoke")
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    active = await admin.get(f"/admin/v1/tenants/{tenant['id']}/keys", params={"include_revoked": "false"})
    assert active.json()["data"] == []

    rows = await audit_for(db_pool, key["id"])
    assert [r["action"] for r in rows] == ["key.create", "key.revoke", "key.revoke"]
    assert all(secret not in (r["after"] or "") for r in rows)
    assert json.loads(rows[1]["before"])["revoked_at"] is None


async def test_list_tenants_paginates(admin: httpx.AsyncClient) -> None:
    ids = {(await create_tenant(admin))["id"] for _ in range(3)}
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        page = (await admin.get("/admin/v1/tenants", params=params)).json()
        seen += [t["id"] for t in page["data"]]
        if not page["has_more"]:
            break
        params["after"] = page["last_id"]
    assert ids <= set(seen) and len(seen) == len(set(seen))
    suspended = (await admin.get("/admin/v1/tenants", params={"status": "suspended"})).json()["data"]
    assert all(t["status"] == "suspended" for t in suspended)


async def test_failed_mutations_are_audited_as_errors(
    admin: httpx.AsyncClient, db_pool: asyncpg.Pool
) -> None:
    tenant = await create_tenant(admin)
    assert_error(await admin.post("/admin/v1/tenants", json={"name": tenant["name"]}), 409, "name")
    row = await db_pool.fetchrow(
        "SELECT result, after::text AS after FROM audit_log WHERE action = 'tenant.create' "
        "AND result = 'error' ORDER BY id DESC LIMIT 1"
    )
    assert row is not None and tenant["name"] in row["after"]
    missing = str(uuid.uuid4())
    assert_error(await admin.post(f"/admin/v1/tenants/{missing}/suspend"), 404, "tenant_id")
    assert [r["result"] for r in await audit_for(db_pool, missing)] == ["error"]


async def test_bad_input_on_every_route(admin: httpx.AsyncClient) -> None:
    tenant = await create_tenant(admin)
    tid, nobody = tenant["id"], str(uuid.uuid4())
    post, patch, get = admin.post, admin.patch, admin.get
    # tenants
    assert_error(await post("/admin/v1/tenants", json={}), 400, "name")
    assert_error(await post("/admin/v1/tenants", json={"name": 42}), 400, "name")
    assert_error(await post("/admin/v1/tenants", json={"name": "x", "rpm": "fast"}), 400, "rpm")
    assert_error(await post("/admin/v1/tenants", json={"name": "x", "rpm": 0}), 400, "rpm")
    assert_error(await post("/admin/v1/tenants", json={"name": "x", "stripe_customer_id": "bob"}), 400,
                 "stripe_customer_id")
    assert_error(await post("/admin/v1/tenants", json={"name": "x", "plan": "gold"}), 400, "plan")
    assert_error(await get("/admin/v1/tenants", params={"limit": 1000}), 400, "limit")
    assert_error(await get("/admin/v1/tenants", params={"after": nobody}), 400, "after")
    assert_error(await get("/admin/v1/tenants", params={"status": "gone"}), 400, "status")
    assert_error(await get(f"/admin/v1/tenants/{nobody}"), 404)
    assert_error(await get("/admin/v1/tenants/123"), 400, "tenant_id")
    assert_error(await patch(f"/admin/v1/tenants/{nobody}", json={"rpm": 5}), 404)
    assert_error(await patch(f"/admin/v1/tenants/{tid}", json={"tpm": -1}), 400, "tpm")
    assert_error(await patch(f"/admin/v1/tenants/{tid}", json={"status": "suspended"}), 400, "status")
    assert_error(await patch(f"/admin/v1/tenants/{tid}", content=b"[", headers={"content-type": "application/json"}), 400)
    assert_error(await post(f"/admin/v1/tenants/{nobody}/reactivate"), 404)
    # keys
    keys_url = f"/admin/v1/tenants/{tid}/keys"
    assert_error(await post(keys_url, json={}), 400, "name")
    assert_error(await post(keys_url, json={"name": "k", "scopes": "all"}), 400, "scopes")
    assert_error(await post(keys_url, json={"name": "k", "scopes": ["a b"]}), 400, "scopes.0")
    assert_error(await post(keys_url, json={"name": "k", "expires_at": "2001-01-01T00:00:00Z"}), 400,
                 "expires_at")
    assert_error(await post(keys_url, json={"name": "k", "expires_at": "tomorrow"}), 400, "expires_at")
    assert_error(await post(f"/admin/v1/tenants/{nobody}/keys", json={"name": "k"}), 404, "tenant_id")
    assert_error(await get(f"/admin/v1/tenants/{nobody}/keys"), 404, "tenant_id")
    assert_error(await get(keys_url, params={"after": nobody}), 400, "after")
    assert_error(await get(f"/admin/v1/keys/{nobody}"), 404, "key_id")
    assert_error(await get("/admin/v1/keys/zzz"), 400, "key_id")
    assert_error(await post(f"/admin/v1/keys/{nobody}/revoke"), 404, "key_id")
    # audit
    assert_error(await get("/admin/v1/audit", params={"after": 0}), 400, "after")
    assert_error(await get("/admin/v1/audit", params={"since": "yesterday"}), 400, "since")


async def test_audit_query_filters_and_pages(admin: httpx.AsyncClient, client_for: ClientFactory) -> None:
    tenant = await create_tenant(admin)
    for action in ("suspend", "reactivate", "suspend"):
        await admin.post(f"/admin/v1/tenants/{tenant['id']}/{action}")
    reader = client_for(scopes="admin:read", subject="auditor")
    first = (await reader.get("/admin/v1/audit", params={"target_id": tenant["id"], "limit": 2})).json()
    assert [e["action"] for e in first["data"]] == ["tenant.suspend", "tenant.reactivate"]
    assert first["has_more"] is True
    rest = (
        await reader.get(
            "/admin/v1/audit",
            params={"target_id": tenant["id"], "limit": 2, "after": first["last_id"]},
        )
    ).json()
    assert [e["action"] for e in rest["data"]] == ["tenant.suspend", "tenant.create"]
    assert rest["has_more"] is False
    only = (await reader.get("/admin/v1/audit", params={"target_id": tenant["id"], "action": "tenant.create"})).json()
    assert len(only["data"]) == 1 and only["data"][0]["after"]["name"] == tenant["name"]
    assert (await reader.post(f"/admin/v1/tenants/{tenant['id']}/reactivate")).status_code == 403


async def test_key_limits_update_is_audited_and_validated(admin: httpx.AsyncClient, db_pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(admin)
    created = await admin.post(f"/admin/v1/tenants/{tenant['id']}/keys", json={"name": "limited", "rpm": 10})
    assert created.status_code == 201, created.text
    key_id = created.json()["key"]["id"]
    patched = await admin.patch(f"/admin/v1/keys/{key_id}", json={"tpm": 5000, "rpm": None})
    assert patched.status_code == 200, patched.text
    assert patched.json()["tpm"] == 5000 and patched.json()["rpm"] is None
    assert_error(await admin.patch(f"/admin/v1/keys/{key_id}", json={"tpm": -1}), 400, param="tpm")
    assert_error(await admin.patch(f"/admin/v1/keys/{key_id}", json={"name": "x"}), 400, param="name")
    assert_error(await admin.patch(f"/admin/v1/keys/{uuid.uuid4()}", json={"tpm": 1}), 404)
    rows = await audit_for(db_pool, key_id)
    assert [r["action"] for r in rows if r["result"] == "success"] == ["key.create", "key.update"]


async def test_a_stripe_customer_bills_one_tenant_only(admin: httpx.AsyncClient, db_pool: asyncpg.Pool) -> None:
    customer = f"cus_{uuid.uuid4().hex[:12]}"
    first = await create_tenant(admin, stripe_customer_id=customer)

    taken = await admin.post("/admin/v1/tenants", json={"name": unique("second"), "stripe_customer_id": customer})
    error = assert_error(taken, 409, "stripe_customer_id")
    assert customer in error["message"] and error["type"] == "invalid_request_error"

    other = await create_tenant(admin)
    patched = await admin.patch(f"/admin/v1/tenants/{other['id']}", json={"stripe_customer_id": customer})
    assert_error(patched, 409, "stripe_customer_id")
    assert await db_pool.fetchval(
        "SELECT count(*) FROM tenants WHERE stripe_customer_id = $1", customer
    ) == 1

    # Setting a tenant's own id again is no conflict; once cleared, the customer is free again.
    same = await admin.patch(f"/admin/v1/tenants/{first['id']}", json={"stripe_customer_id": customer})
    assert same.status_code == 200, same.text
    cleared = await admin.patch(f"/admin/v1/tenants/{first['id']}", json={"stripe_customer_id": None})
    assert cleared.status_code == 200 and cleared.json()["stripe_customer_id"] is None
    moved = await admin.patch(f"/admin/v1/tenants/{other['id']}", json={"stripe_customer_id": customer})
    assert moved.status_code == 200 and moved.json()["stripe_customer_id"] == customer
