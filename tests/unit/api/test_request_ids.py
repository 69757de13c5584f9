"""Ids that key money are the server's; the client's id is metadata (crosslogic/api/request_ids.py).

The middleware is driven through ASGI with no server; composed with Ray Serve's own RequestIdMiddleware
(the real class, as Serve wraps every app with it) to show which `x-request-id` a client ends up with.
The ledger side runs against the real PostgreSQL.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from crosslogic.api.request_ids import RequestIdMiddleware, edge_middlewares, request_ids
from crosslogic.metering import UsageRecorder, UsageStatus
from crosslogic.metering.records import UsageRecord

SERVER_ID = re.compile(r"req_[0-9a-f]{32}")


class Seen:
    """The innermost app: records what a route handler would see, answers 200."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        request = Request(scope, receive)
        server_id, client_id = request_ids(request)
        self.requests.append({
            "server_id": server_id, "client_id": client_id,
            "x-request-id": request.headers.getlist("x-request-id"),
            "x-client-request-id": request.headers.getlist("x-client-request-id"),
        })
        await JSONResponse({"ok": True})(scope, receive, send)


def _client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
async def standalone() -> AsyncIterator[tuple[httpx.AsyncClient, Seen]]:
    seen = Seen()
    async with _client(RequestIdMiddleware(seen)) as client:
        yield client, seen


def _serve_stack(seen: Seen) -> ASGIApp:
    """How Ray Serve's HAProxy ingress runs our app in a replica: its HTTP server applies the
    callback's middlewares outside its own RequestIdMiddleware, which wraps the app (whose own
    middleware trusts the edge's id)."""
    from ray.serve._private.http_util import _apply_middlewares

    return _apply_middlewares(RequestIdMiddleware(seen, trust_upstream=True), edge_middlewares())


async def test_without_a_client_id_the_server_mints_one(standalone: tuple[httpx.AsyncClient, Seen]) -> None:
    client, seen = standalone
    first, second = await client.get("/"), await client.get("/")
    assert SERVER_ID.fullmatch(first.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert "x-client-request-id" not in first.headers
    assert seen.requests[0]["server_id"] == first.headers["x-request-id"]
    assert seen.requests[0]["client_id"] is None


async def test_the_clients_x_request_id_is_metadata_never_the_key(standalone: tuple[httpx.AsyncClient, Seen]) -> None:
    client, seen = standalone
    # Even a value shaped like a server id: a client must not choose the ledger's key.
    forged = f"req_{uuid.uuid4().hex}"
    for value in ("mine-1", "mine-1", forged):
        resp = await client.get("/", headers={"x-request-id": value})
        assert resp.status_code == 200
        assert resp.headers.get_list("x-request-id") != [value] and SERVER_ID.fullmatch(resp.headers["x-request-id"])
        assert resp.headers["x-client-request-id"] == value
    ids = [r["server_id"] for r in seen.requests]
    assert len(set(ids)) == 3 and forged not in ids
    # What the route handlers see: the server's id under x-request-id, the client's moved aside.
    assert seen.requests[0]["x-request-id"] == [ids[0]] and seen.requests[0]["x-client-request-id"] == ["mine-1"]


async def test_x_client_request_id_is_preferred(standalone: tuple[httpx.AsyncClient, Seen]) -> None:
    client, seen = standalone
    resp = await client.get("/", headers={"x-client-request-id": "openai-style", "x-request-id": "legacy"})
    assert resp.headers["x-client-request-id"] == "openai-style"
    assert seen.requests[0]["client_id"] == "openai-style"


@pytest.mark.parametrize("value", ["a b", "#x", "x" * 512, "  padded  "])
async def test_odd_but_printable_client_ids_are_accepted(standalone: tuple[httpx.AsyncClient, Seen], value: str) -> None:
    client, seen = standalone
    resp = await client.get("/", headers={"x-request-id": value})
    assert resp.status_code == 200
    assert resp.headers["x-client-request-id"] == value.strip() == seen.requests[0]["client_id"]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-request-id", "r\u00e9q".encode()),
        ("x-request-id", "x" * 513),
        ("x-client-request-id", "\u00fc\u00f1\u00ee".encode()),
        ("x-client-request-id", b"tab\there"),
    ],
)
async def test_unusable_client_ids_get_a_400_naming_the_header(
    standalone: tuple[httpx.AsyncClient, Seen], header: str, value: str | bytes
) -> None:
    client, seen = standalone
    resp = await client.get("/", headers={header: value})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == header and error["type"] == "invalid_request_error"
    assert SERVER_ID.fullmatch(resp.headers["x-request-id"])
    assert not seen.requests  # refused before any route ran


async def test_under_serve_the_response_carries_one_x_request_id_the_servers() -> None:
    """Ray Serve's RequestIdMiddleware appends the request's x-request-id to every response: without
    the edge callback that would be the client's value beside ours."""
    seen = Seen()
    async with _client(_serve_stack(seen)) as client:
        resp = await client.get("/", headers={"x-request-id": "client-chosen"})
        plain = await client.get("/")
    for r in (resp, plain):
        assert len(r.headers.get_list("x-request-id")) == 1, r.headers.get_list("x-request-id")
    assert resp.headers["x-request-id"] == seen.requests[0]["server_id"] != "client-chosen"
    assert resp.headers["x-client-request-id"] == "client-chosen"
    assert plain.headers["x-request-id"] == seen.requests[1]["server_id"]
    assert SERVER_ID.fullmatch(plain.headers["x-request-id"])
    # The app trusts the edge's id, never a client's forgery of its shape (the edge replaced it).
    forged = f"req_{uuid.uuid4().hex}"
    async with _client(_serve_stack(seen)) as client:
        resp = await client.get("/", headers={"x-request-id": forged})
    assert seen.requests[2]["server_id"] != forged and seen.requests[2]["client_id"] == forged
    assert resp.headers.get_list("x-request-id") == [seen.requests[2]["server_id"]]


async def test_serve_without_the_edge_still_never_keys_on_the_clients_id() -> None:
    """A deployment without the callback: Serve echoes the client's header too, but the app's id —
    the one the ledger uses — is still minted, and the app's comes first."""
    from ray.serve._private.http_util import _apply_middlewares

    seen = Seen()
    async with _client(_apply_middlewares(RequestIdMiddleware(seen), [])) as client:
        resp = await client.get("/", headers={"x-request-id": "client-chosen"})
    assert seen.requests[0]["server_id"] != "client-chosen"
    assert resp.headers.get_list("x-request-id")[0] == seen.requests[0]["server_id"]


def _record(tenant: uuid.UUID, request_id: str, client_id: str | None) -> UsageRecord:
    return UsageRecord(
        request_id=request_id, client_request_id=client_id, tenant_id=tenant, model="m",
        prompt_tokens=3, completion_tokens=2, status=UsageStatus.FINISHED,
    )


async def test_ledger_keeps_every_request_that_reused_a_client_id(db_pool: asyncpg.Pool) -> None:
    recorder = UsageRecorder(db_pool, flush_interval_s=0.01)
    recorder.start()
    tenant, client_id = uuid.uuid4(), f"reused-{uuid.uuid4().hex[:6]}"
    server_ids = [f"req_{uuid.uuid4().hex}" for _ in range(5)]
    for server_id in server_ids:
        recorder.record(_record(tenant, server_id, client_id))
    recorder.record(_record(tenant, f"req_{uuid.uuid4().hex}", None))
    await recorder.close()
    rows = await db_pool.fetch(
        "SELECT request_id, client_request_id FROM usage_ledger WHERE tenant_id = $1 ORDER BY request_id", tenant
    )
    assert len(rows) == 6
    assert sorted(r["request_id"] for r in rows if r["client_request_id"] == client_id) == sorted(server_ids)
    assert sum(r["client_request_id"] is None for r in rows) == 1


def test_usage_record_checks_the_client_id() -> None:
    tenant = uuid.uuid4()
    assert _record(tenant, "req_1", "c" * 512).client_request_id == "c" * 512
    for bad in ("", "c" * 513):
        with pytest.raises(ValueError, match="client_request_id"):
            _record(tenant, "req_1", bad)
