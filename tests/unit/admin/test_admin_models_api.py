"""`/admin/v1/models` on real PostgreSQL: VRAM validation, audit rows, auth, bad input."""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
import httpx
import jwt
from admin_support import ADMIN_SECRET, CLIENT_ADDR, ClientFactory, assert_error

from crosslogic.admin.jwt_auth import LOCAL_AUDIENCE, LOCAL_ISSUER


def template(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "served_name": f"llama-8b-{uuid.uuid4().hex[:8]}",
        "source": "meta-llama/Llama-3.1-8B-Instruct",
        "parameter_count": 8_030_261_248,
        "dtype": "bfloat16",
        "max_model_len": 8192,
        "num_layers": 32,
        "num_kv_heads": 8,
        "head_dim": 128,
        "price_input_per_mtok": "0.15",
        "price_output_per_mtok": "0.60",
    }
    body.update(overrides)
    return body


async def audit_rows(db_pool: asyncpg.Pool, **where: str) -> list[asyncpg.Record]:
    clauses = " AND ".join(f"{column} = ${i}" for i, column in enumerate(where, 1))
    return await db_pool.fetch(f"SELECT * FROM audit_log WHERE {clauses} ORDER BY id", *where.values())


async def test_create_get_delete_with_audit(admin: httpx.AsyncClient, db_pool: asyncpg.Pool) -> None:
    body = template(accelerator="L4", max_num_seqs=1)
    created = await admin.post("/admin/v1/models", json=body, headers={"x-request-id": "req-model-1"})
    assert created.status_code == 201, created.text
    model = created.json()
    assert model["served_name"] == body["served_name"]
    assert model["price_input_per_mtok"] == "0.150000"
    assert 16 < model["vram"]["per_gpu_gib"] < 20
    assert "L4" in model["vram"]["fits_on"] and "T4" not in model["vram"]["fits_on"]

    fetched = await admin.get(f"/admin/v1/models/{model['id']}")
    assert fetched.status_code == 200 and fetched.json()["vram"] == model["vram"]

    (row,) = await audit_rows(db_pool, action="model.create", target_id=model["id"])
    assert row["actor"] == "alice@example.com" and row["result"] == "success"
    # The server's id, never the caller's x-request-id (issue 10: ids are server-owned).
    assert re.fullmatch(r"req_[0-9a-f]{32}", row["request_id"]) and row["client_addr"] == CLIENT_ADDR

    deleted = await admin.delete(f"/admin/v1/models/{model['id']}")
    assert deleted.json() == {"id": model["id"], "object": "model_template.deleted", "deleted": True}
    (row,) = await audit_rows(db_pool, action="model.delete", target_id=model["id"])
    assert row["result"] == "success" and '"served_name"' in row["before"]
    assert_error(await admin.get(f"/admin/v1/models/{model['id']}"), 404)
    assert_error(await admin.delete(f"/admin/v1/models/{model['id']}"), 404)


async def test_70b_on_one_h100_is_refused_and_audited(
    admin: httpx.AsyncClient, db_pool: asyncpg.Pool
) -> None:
    body = template(
        served_name=f"llama-70b-{uuid.uuid4().hex[:8]}",
        parameter_count=70_553_706_496,
        num_layers=80,
        accelerator="H100-80GB",
    )
    error = assert_error(await admin.post("/admin/v1/models", json=body), 400, "accelerator")
    assert "135.9 GiB per GPU" in error["message"] and "72.0 GiB usable" in error["message"]
    rows = await admin.get("/admin/v1/audit", params={"action": "model.create", "result": "error"})
    assert any(e["after"]["error"]["code"] == "model_does_not_fit" for e in rows.json()["data"])
    assert await db_pool.fetchval("SELECT count(*) FROM models WHERE served_name = $1", body["served_name"]) == 0

    body["tensor_parallel_size"] = 4
    accepted = await admin.post("/admin/v1/models", json=body)
    assert accepted.status_code == 201, accepted.text


async def test_duplicate_name_is_409(admin: httpx.AsyncClient) -> None:
    body = template()
    assert (await admin.post("/admin/v1/models", json=body)).status_code == 201
    assert_error(await admin.post("/admin/v1/models", json=body), 409, "served_name")


async def test_bad_input(admin: httpx.AsyncClient) -> None:
    post = admin.post
    missing = template()
    del missing["parameter_count"]
    assert_error(await post("/admin/v1/models", json=missing), 400, "parameter_count")
    assert_error(await post("/admin/v1/models", json=template(parameter_count="lots")), 400, "parameter_count")
    assert_error(await post("/admin/v1/models", json=template(dtype="float8")), 400, "dtype")
    assert_error(await post("/admin/v1/models", json=template(max_model_len=0)), 400, "max_model_len")
    assert_error(await post("/admin/v1/models", json=template(head_dim=None)), 400)
    assert_error(await post("/admin/v1/models", json=template(price_input_per_mtok="-1")), 400)
    assert_error(await post("/admin/v1/models", json=template(colour="blue")), 400, "colour")
    assert_error(await post("/admin/v1/models", json=template(accelerator="TPU")), 400, "accelerator")
    assert_error(await post("/admin/v1/models", json=[1, 2]), 400)
    broken = await post("/admin/v1/models", content=b"{nope", headers={"content-type": "application/json"})
    assert assert_error(broken, 400)["code"] == "invalid_json"
    assert_error(await admin.get("/admin/v1/models/not-a-uuid"), 400, "model_id")
    assert_error(await admin.get(f"/admin/v1/models/{uuid.uuid4()}"), 404)
    assert_error(await admin.get("/admin/v1/models", params={"limit": 0}), 400, "limit")
    assert_error(await admin.get("/admin/v1/models", params={"after": str(uuid.uuid4())}), 400, "after")
    assert_error(await admin.get("/admin/v1/nothing-here"), 404)
    assert_error(await admin.put("/admin/v1/models"), 405)


async def test_list_is_paginated(admin: httpx.AsyncClient) -> None:
    for _ in range(3):
        assert (await admin.post("/admin/v1/models", json=template())).status_code == 201
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"after": after} if after else {})
        page = (await admin.get("/admin/v1/models", params=params)).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [m["id"] for m in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert len(seen) == len(set(seen)) >= 3


async def test_auth_failures_are_denied_and_audited(
    client_for: ClientFactory, db_pool: asyncpg.Pool
) -> None:
    reader = client_for(scopes="admin:read", subject="reader@example.com")
    assert (await reader.get("/admin/v1/models")).status_code == 200
    error = assert_error(await reader.post("/admin/v1/models", json=template()), 403)
    assert error["code"] == "insufficient_scope"
    rows = await audit_rows(db_pool, actor="reader@example.com", result="denied")
    assert rows and rows[-1]["action"] == "POST /admin/v1/models"

    anonymous = client_for()
    del anonymous.headers["authorization"]
    response = await anonymous.get("/admin/v1/models")
    assert_error(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"

    expired = jwt.encode(
        {"sub": "mallory", "iss": LOCAL_ISSUER, "aud": LOCAL_AUDIENCE, "iat": 0, "exp": 1_000,
         "scope": "admin:write"},
        ADMIN_SECRET,
        "HS256",
    )
    assert_error(await client_for(token=expired).delete(f"/admin/v1/models/{uuid.uuid4()}"), 401)
    denied = await db_pool.fetch(
        "SELECT after->>'reason' AS reason FROM audit_log WHERE result = 'denied' AND actor = 'anonymous'"
    )
    assert {"missing", "expired"} <= {row["reason"] for row in denied}


async def test_openapi_documents_every_admin_route(admin: httpx.AsyncClient) -> None:
    spec = (await admin.get("/openapi.json")).json()
    operations = [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]
    admin_ops = [item for item in operations if item[0].startswith("/admin/v1/")]
    # + key limits update; tenants, keys, models, audit, usage, billing dead letters + reconciliation; regions (7)
    assert len(admin_ops) == 27
    for path, method, op in admin_ops:
        assert op["summary"], (path, method)
        assert op["security"] == [{"HTTPBearer": []}]
        assert "422" not in op["responses"] and {"401", "403", "404"} <= set(op["responses"])
        ok = op["responses"].get("200") or op["responses"]["201"]
        assert ok["content"]["application/json"]["schema"], (path, method)
    assert "ErrorBody" in spec["components"]["schemas"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]


async def test_refusal_still_answers_401_when_the_audit_table_is_unreachable(database_url: str) -> None:
    from fastapi import FastAPI

    from crosslogic.admin.deps import AdminDeps
    from crosslogic.admin.jwt_auth import AdminAuthConfig, AdminJWTVerifier
    from crosslogic.admin.router import build_admin_router
    from crosslogic.api.errors import install_error_handlers

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    await pool.close()
    app = FastAPI()
    install_error_handlers(app)
    verifier = AdminJWTVerifier(AdminAuthConfig(hs256_secret=ADMIN_SECRET))
    app.include_router(build_admin_router(AdminDeps(pool=pool, verifier=verifier)))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as client:
        assert_error(await client.get("/admin/v1/tenants"), 401)
