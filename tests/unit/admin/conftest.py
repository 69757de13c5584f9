"""An admin app on the session database, and clients holding admin JWTs of chosen scopes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import asyncpg
import httpx
import pytest
from admin_support import ADMIN_SECRET, CLIENT_ADDR, ClientFactory, admin_token
from fastapi import FastAPI

from billing.admin_routes import billing_admin_router
from crosslogic.admin.deps import AdminDeps
from crosslogic.admin.jwt_auth import AdminAuthConfig, AdminJWTVerifier
from crosslogic.admin.router import build_admin_router
from crosslogic.api.errors import install_error_handlers
from crosslogic.auth.throttle import AuthThrottleConfig, FailedAuthThrottle, FailureBudget


@pytest.fixture(scope="session")
async def admin_app(db_pool: asyncpg.Pool) -> AsyncIterator[FastAPI]:
    verifier = AdminJWTVerifier(AdminAuthConfig(hs256_secret=ADMIN_SECRET))
    app = FastAPI(title="CrossLogic admin (test)")
    install_error_handlers(app)
    # Every client here is CLIENT_ADDR: the suite's refused-token tests together must not meet the
    # failed-auth budget (test_admin_denied_audit.py tests that budget on apps of its own).
    throttle = FailedAuthThrottle(AuthThrottleConfig(per_address=FailureBudget(failures=10_000)))
    deps = AdminDeps(pool=db_pool, verifier=verifier, throttle=throttle)
    # As the ingress assembles it: billing's admin routes mounted beside the core's.
    app.include_router(build_admin_router(deps, extra=[billing_admin_router(deps)]))
    yield app
    await verifier.aclose()


@pytest.fixture
async def client_for(admin_app: FastAPI) -> AsyncIterator[ClientFactory]:
    """`client_for(scopes=..., subject=..., token=...)` -> an AsyncClient on the admin app."""
    async with AsyncExitStack() as closing:

        def make(
            scopes: str = "admin:write", subject: str = "alice@example.com", token: str | None = None
        ) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=admin_app, client=(CLIENT_ADDR, 40000))
            headers = {"authorization": f"Bearer {token or admin_token(subject, scopes)}"}
            client = httpx.AsyncClient(transport=transport, base_url="http://admin.test", headers=headers)
            closing.push_async_callback(client.aclose)
            return client

        yield make


@pytest.fixture
async def admin(client_for: ClientFactory) -> httpx.AsyncClient:
    return client_for()
