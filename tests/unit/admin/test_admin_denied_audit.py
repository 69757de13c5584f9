"""Refused admin credentials: throttled per address (429) and audited in aggregate, not per request."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from admin_support import ADMIN_SECRET, admin_token, assert_error
from fastapi import FastAPI

from crosslogic.admin.denied_audit import DeniedAttempts
from crosslogic.admin.deps import AdminDeps
from crosslogic.admin.jwt_auth import AdminAuthConfig, AdminJWTVerifier
from crosslogic.admin.router import build_admin_router
from crosslogic.api.errors import install_error_handlers
from crosslogic.auth.throttle import AuthThrottleConfig, FailedAuthThrottle, FailureBudget


@pytest.fixture
async def verifier() -> AsyncIterator[AdminJWTVerifier]:
    verifier = AdminJWTVerifier(AdminAuthConfig(hs256_secret=ADMIN_SECRET))
    yield verifier
    await verifier.aclose()


def admin_app(deps: AdminDeps) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_admin_router(deps))
    return app


def client(app: FastAPI, address: str, token: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(
        transport=transport, base_url="http://admin.test", headers={"authorization": f"Bearer {token}"}
    )


async def denied_rows(db: asyncpg.Pool, address: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT after->>'reason' AS reason, attempts, first_at, last_at FROM audit_log "
        "WHERE result = 'denied' AND client_addr = $1 ORDER BY id",
        address,
    )


async def test_a_thousand_bad_tokens_make_a_handful_of_rows_and_429s(
    db_pool: asyncpg.Pool, verifier: AdminJWTVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    throttle = FailedAuthThrottle(AuthThrottleConfig(per_address=FailureBudget(failures=20)))
    deps = AdminDeps(pool=db_pool, verifier=verifier, throttle=throttle)
    app = admin_app(deps)
    address = "192.0.2.77"
    caplog.set_level(logging.WARNING, logger="crosslogic.admin.auth")
    statuses = []
    for i in range(1_000):
        async with client(app, address, f"not-a-jwt-{i}") as bad:
            response = await bad.get("/admin/v1/tenants")
        statuses.append(response.status_code)
        if i == 20:
            error = assert_error(response, 429)
            assert error["code"] == "too_many_failed_auth"
            assert response.headers["retry-after"] == "3"  # 60 s / 20 failures
            assert 2_000 < int(response.headers["retry-after-ms"]) <= 3_000
    assert statuses == [401] * 20 + [429] * 980
    # A valid token from the same (throttled) address is never refused.
    async with client(app, address, admin_token()) as good:
        assert (await good.get("/admin/v1/tenants", params={"limit": 1})).status_code == 200

    assert deps.denied is not None
    before_flush = await denied_rows(db_pool, address)
    assert [(r["reason"], r["attempts"]) for r in before_flush] == [("malformed", 1), ("throttled", 1)]
    await deps.denied.flush(everything=True)
    rows = await denied_rows(db_pool, address)
    assert [(r["reason"], r["attempts"]) for r in rows] == [
        ("malformed", 1), ("throttled", 1), ("malformed", 19), ("throttled", 979),
    ]
    summary = rows[-1]
    assert summary["first_at"] is not None and summary["first_at"] <= summary["last_at"]
    warnings = [r for r in caplog.records if "admin_auth_failed" in r.getMessage()]
    assert len(warnings) == 4  # one per window opened, one summary per window closed


async def test_windows_close_by_themselves(db_pool: asyncpg.Pool, verifier: AdminJWTVerifier) -> None:
    deps = AdminDeps(
        pool=db_pool, verifier=verifier, denied=DeniedAttempts(db_pool, window_s=0.2)
    )
    app = admin_app(deps)
    address = "192.0.2.78"
    for _ in range(5):
        async with client(app, address, "x.y.z") as bad:
            assert_error(await bad.get("/admin/v1/tenants"), 401)
    await asyncio.sleep(0.5)
    assert [(r["reason"], r["attempts"]) for r in await denied_rows(db_pool, address)] == [
        ("malformed", 1), ("malformed", 4),
    ]
    assert deps.denied is not None and deps.denied.open_windows == 0
    # A new window opens with a row of its own.
    async with client(app, address, "x.y.z") as bad:
        await bad.get("/admin/v1/tenants")
    assert len(await denied_rows(db_pool, address)) == 3
    await deps.denied.close()


async def test_rotating_forwarded_for_does_not_open_new_windows(
    db_pool: asyncpg.Pool, verifier: AdminJWTVerifier
) -> None:
    """Behind HAProxy uvicorn takes the peer from a client-written X-Forwarded-For: not a source."""
    deps = AdminDeps(pool=db_pool, verifier=verifier, denied=DeniedAttempts(db_pool, window_s=60))
    app = admin_app(deps)
    for i in range(50):
        spoofed = f"198.18.{i}.9"
        transport = httpx.ASGITransport(app=app, client=(spoofed, 40000))
        headers = {"authorization": "Bearer nope", "x-forwarded-for": spoofed}
        async with httpx.AsyncClient(transport=transport, base_url="http://a.test", headers=headers) as c:
            assert (await c.get("/admin/v1/tenants")).status_code in (401, 429)
    assert deps.denied is not None
    assert deps.denied.open_windows <= 2  # ("loopback", malformed) and ("loopback", throttled)
    await deps.denied.close()


async def test_many_sources_share_a_catch_all_row(db_pool: asyncpg.Pool) -> None:
    from crosslogic.audit.log import AuditContext

    denied = DeniedAttempts(db_pool, window_s=60, max_sources_per_window=3)
    for i in range(10):
        ctx = AuditContext(actor="anonymous", request_id=f"r{i}")
        await denied.record(ctx, source=f"100.64.7.{i}", action="GET /x", target_id="/x", reason="bad")
    assert denied.open_windows == 4  # three sources and "*"
    await denied.close()
    rows = await db_pool.fetch(
        "SELECT client_addr, attempts FROM audit_log WHERE client_addr = '*' AND action = 'GET /x' "
        "ORDER BY id DESC LIMIT 2"
    )
    assert sorted(r["attempts"] for r in rows) == [1, 6]


async def _audited_tenant_create(
    db_pool: asyncpg.Pool, verifier: AdminJWTVerifier, peer: str, headers: dict[str, str]
) -> asyncpg.Record:
    """Create a tenant through an admin app as `peer` with extra `headers`; its audit row."""
    app = admin_app(AdminDeps(pool=db_pool, verifier=verifier))
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))
    headers = {"authorization": f"Bearer {admin_token('alice@example.com', 'admin:write')}", **headers}
    async with httpx.AsyncClient(transport=transport, base_url="http://a.test", headers=headers) as c:
        created = await c.post("/admin/v1/tenants", json={"name": f"audited-{len(headers)}-{peer}"})
    assert created.status_code == 201, created.text
    return await db_pool.fetchrow(
        "SELECT client_addr, request_id FROM audit_log WHERE target_id = $1 AND action = 'tenant.create'",
        created.json()["id"],
    )


async def test_audit_rows_record_the_peer_not_a_client_written_forwarded_for(
    db_pool: asyncpg.Pool, verifier: AdminJWTVerifier
) -> None:
    """uvicorn behind HAProxy sets the peer from X-Forwarded-For: an admin write's audit row must
    not carry the address the caller wrote there."""
    spoofed = "198.51.100.77"  # the peer as uvicorn rewrote it
    row = await _audited_tenant_create(db_pool, verifier, spoofed, {"x-forwarded-for": spoofed})
    assert row["client_addr"] == "loopback"


async def test_audit_rows_carry_the_servers_request_id_not_the_clients(
    db_pool: asyncpg.Pool, verifier: AdminJWTVerifier
) -> None:
    """A caller's x-request-id must not become an audit row's id (it could pin rows to any id)."""
    row = await _audited_tenant_create(db_pool, verifier, "203.0.113.9", {"x-request-id": "req_chosen-by-the-client"})
    assert row["request_id"] != "req_chosen-by-the-client"
    assert re.fullmatch(r"req_[0-9a-f]{32}", row["request_id"])
