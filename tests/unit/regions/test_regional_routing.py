"""Requests placed across regions through the whole /v1 app: preference (header > key > tenant),
spill-over, failover before the first token, the serving region on the response and the usage row.

Real parts: the API app, the key authenticator and usage ledger on PostgreSQL, the control plane's
gateway client, and two regional gateways (crosslogic/regions/gateway_server.py under uvicorn) whose
engine streams are generators that name the region that served them. No local engines here (that path
needs Ray: tests/serve).
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from crosslogic.api.app import build_api
from crosslogic.api.context import ApiContext
from crosslogic.api.gateway import DependencyStatus, Readiness
from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.engine.base import CHUNK, RESPONSE, USAGE, EngineEvent, ModelCard
from crosslogic.metering import UsageRecorder
from crosslogic.regions.app_config import GatewayListenConfig
from crosslogic.regions.config import RegionsConfig
from crosslogic.regions.gateway_client import RegionClient
from crosslogic.regions.gateway_server import GatewayServer, build_gateway_app, serve_gateway
from crosslogic.regions.protocol import RemoteReplica
from crosslogic.regions.regional_gateway import RegionalGateway, with_region_engines
from crosslogic.regions.signing import derive_region_secret
from crosslogic.regions.state import RegionView
from crosslogic.routing.hints import RoutingHints
from crosslogic.tenants.api_key_repository import create_api_key
from crosslogic.tenants.models import ApiKeyCreate, TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant

MASTER = secrets.token_bytes(32)
MODEL = "remote-smol"
CARD = ModelCard(served_name=MODEL, task="generate", max_model_len=2048, source="test")
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def engine_of(region: str) -> Callable[..., AsyncIterator[EngineEvent]]:
    async def stream(model: str, endpoint: str, body: dict[str, Any], request_id: str) -> AsyncIterator[EngineEvent]:
        if body.get("stream"):
            yield (CHUNK, f"data: {json.dumps({'region': region})}\n\n", {"prompt_tokens": 4, "completion_tokens": 1})
            yield (CHUNK, "data: [DONE]\n\n", {"prompt_tokens": 4, "completion_tokens": 2})
        else:
            yield (RESPONSE, {"object": "chat.completion", "served_by": region, "choices": []})
        yield (USAGE, {"prompt_tokens": 4, "completion_tokens": 2})

    return stream


def view(name: str, url: str, running: int = 0, state: str = "active", generation: int = 1) -> dict[str, Any]:
    return RegionView(
        name=name, state=state, gateway_url=url, models=[MODEL], cards=[CARD], interval_s=2.0,
        last_heartbeat_age_s=0.1, secret_generation=generation,
        replicas=[RemoteReplica(replica_id=f"{name}-0", model=MODEL, running=running)],
    ).model_dump(mode="json")


@dataclass
class Stack:
    client: httpx.AsyncClient
    gateway: RegionalGateway
    urls: dict[str, str]
    servers: dict[str, GatewayServer]
    pool: asyncpg.Pool
    recorder: UsageRecorder
    secret: str

    def regions(self, **running: int) -> None:
        """Publish a region view as the router actor would (queue depth per region)."""
        self.gateway.update({n: view(n, self.urls[n], running.get(n, 0)) for n in self.urls}, None, time.monotonic())

    async def usage_region(self, response: httpx.Response) -> str:
        await self.recorder.flush()
        request_id = response.headers["x-request-id"]
        return await self.pool.fetchval("SELECT region FROM usage_ledger WHERE request_id = $1", request_id)


@pytest.fixture
async def stack(db_pool: asyncpg.Pool) -> AsyncIterator[Stack]:
    servers: dict[str, GatewayServer] = {}
    for name in ("eu", "us"):
        app = build_gateway_app(region=name, secret=derive_region_secret(MASTER, name, 1),
                                stream=engine_of(name), models=lambda: [MODEL])
        servers[name], _ = await serve_gateway(app, GatewayListenConfig(host="127.0.0.1", port=0))
    tenant = await create_tenant(db_pool, TenantCreate(name=f"regions-{uuid.uuid4().hex[:8]}"))
    key = await create_api_key(db_pool, tenant.id, ApiKeyCreate(name="k"))
    config = RegionsConfig(spill_over_queue_depth=4, connect_timeout_s=2)
    gateway = RegionalGateway(None, local_region="home", local_models=(), config=config,
                              client=RegionClient(config, MASTER))
    authenticator = KeyAuthenticator(db_pool)
    await authenticator.start()
    recorder = UsageRecorder(db_pool)
    context = ApiContext(gateway=gateway, authenticator=authenticator, usage=recorder, region="home",
                         max_body_bytes=1 << 20, retries_before_first_token=1)
    transport = httpx.ASGITransport(app=build_api(context))
    client = httpx.AsyncClient(transport=transport, base_url="http://test",
                               headers={"authorization": f"Bearer {key.secret}"})
    s = Stack(client, gateway, {n: srv.url for n, srv in servers.items()}, servers, db_pool, recorder, key.secret)
    s.regions()
    try:
        yield s
    finally:
        await client.aclose()
        await authenticator.close()
        await recorder.close()
        await gateway.close()
        for server in servers.values():
            await server.stop()


async def chat(stack: Stack, region: str | None = None, **body: Any) -> httpx.Response:
    headers = {"x-crosslogic-region": region} if region is not None else {}
    return await stack.client.post("/v1/chat/completions", json={**CHAT, **body}, headers=headers)


async def test_a_model_only_regions_serve_is_listed_and_served(stack: Stack) -> None:
    listed = (await stack.client.get("/v1/models")).json()["data"]
    assert [m["id"] for m in listed] == [MODEL]
    response = await chat(stack)
    assert response.status_code == 200, response.text
    # Equal queues: the first by name. The response and the usage row name the serving region.
    assert response.json()["served_by"] == "eu" == response.headers["x-crosslogic-region"]
    assert response.headers["x-crosslogic-replica"] == "region:eu"
    assert await stack.usage_region(response) == "eu"


async def test_header_preference_is_honoured_and_streams_relay(stack: Stack) -> None:
    stack.regions(us=3)  # us is deeper, but within the threshold
    response = await chat(stack, "us", stream=True)
    assert response.status_code == 200 and response.headers["x-crosslogic-region"] == "us"
    assert '"region": "us"' in response.text and response.text.rstrip().endswith("data: [DONE]")
    assert await stack.usage_region(response) == "us"


async def test_spill_over_when_the_preferred_region_is_too_deep(stack: Stack) -> None:
    stack.regions(us=5)
    response = await chat(stack, "us")
    assert response.headers["x-crosslogic-region"] == "eu"


async def test_unknown_or_drained_preference_falls_back(stack: Stack) -> None:
    assert (await chat(stack, "mars")).headers["x-crosslogic-region"] == "eu"
    stack.gateway.update({"eu": view("eu", stack.urls["eu"], state="drained"), "us": view("us", stack.urls["us"], 9)},
                         None, time.monotonic())
    assert (await chat(stack, "eu")).headers["x-crosslogic-region"] == "us"


async def test_a_malformed_preference_is_a_400(stack: Stack) -> None:
    for bad in ("EU west", "-eu", "e" * 64, "eu/../us"):
        response = await chat(stack, bad)
        assert response.status_code == 400, (bad, response.text)
        error = response.json()["error"]
        assert error["param"] == "x-crosslogic-region" and error["type"] == "invalid_request_error"


async def test_key_then_tenant_preference(stack: Stack) -> None:
    tenant = await create_tenant(stack.pool, TenantCreate(name=f"pref-{uuid.uuid4().hex[:8]}", preferred_region="us"))
    plain = await create_api_key(stack.pool, tenant.id, ApiKeyCreate(name="tenant-pref"))
    pinned = await create_api_key(stack.pool, tenant.id, ApiKeyCreate(name="key-pref", preferred_region="eu"))
    stack.regions(eu=2, us=2)

    async def served(key: str, header: str | None = None) -> str:
        headers = {"authorization": f"Bearer {key}", **({"x-crosslogic-region": header} if header else {})}
        response = await stack.client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == 200, response.text
        return response.headers["x-crosslogic-region"]

    assert await served(plain.secret) == "us"  # the tenant's
    assert await served(pinned.secret) == "eu"  # the key's beats the tenant's
    assert await served(pinned.secret, "us") == "us"  # the header beats both


async def test_a_dead_region_fails_over_before_the_first_token(stack: Stack) -> None:
    await stack.servers["eu"].stop()  # the region's cluster died; its last heartbeat is still fresh
    for body in ({}, {"stream": True}):
        response = await chat(stack, "eu", **body)
        assert response.status_code == 200, response.text
        assert response.headers["x-crosslogic-region"] == "us"
        assert await stack.usage_region(response) == "us"


async def test_a_rotated_secret_the_region_does_not_have_yet_fails_over(stack: Stack) -> None:
    stack.gateway.update({"eu": view("eu", stack.urls["eu"], generation=2), "us": view("us", stack.urls["us"], 1)},
                         None, time.monotonic())
    response = await chat(stack, "eu")
    assert response.status_code == 200 and response.headers["x-crosslogic-region"] == "us"


async def test_no_live_region_is_a_503(stack: Stack) -> None:
    assert stack.gateway.live_regions(MODEL) == ["eu", "us"]  # what /ready's engine line counts
    stack.gateway.update({n: view(n, stack.urls[n], state="drained") for n in stack.urls}, None, time.monotonic())
    assert [m["id"] for m in (await stack.client.get("/v1/models")).json()["data"]] == [MODEL]
    assert stack.gateway.live_regions(MODEL) == []
    response = await chat(stack)
    assert response.status_code == 503
    assert "no healthy engine for model" in response.json()["error"]["message"]


async def test_in_flight_streams_count_against_their_region(stack: Stack) -> None:
    """Open streams raise a region's score at once, before any heartbeat reports them."""
    opened: list[AsyncIterator[EngineEvent]] = []
    for _ in range(5):
        hints = RoutingHints(region_preference="eu")
        events = stack.gateway.stream(MODEL, "chat", {"stream": True}, uuid.uuid4().hex, hints)
        await anext(events)
        opened.append(events)
        assert hints.region == "eu"
    hints = RoutingHints(region_preference="eu")
    assert stack.gateway.choose(MODEL, hints).region == "us"  # 5 deep vs 0: spills over
    for events in opened:
        await events.aclose()  # type: ignore[attr-defined]
    assert stack.gateway.choose(MODEL, hints).region == "eu"


def test_an_engine_line_is_ready_while_a_region_serves_the_model() -> None:
    local = Readiness(ready=False, dependencies={
        f"engine:{MODEL}": DependencyStatus(ok=False, detail="0 healthy replicas of 1"),
        "engine:other": DependencyStatus(ok=False, detail="0 healthy replicas of 1"),
        "router": DependencyStatus(ok=True),
    })
    result = with_region_engines(local, lambda model: ["eu", "us"] if model == MODEL else [])
    line = result.dependencies[f"engine:{MODEL}"]
    assert line.ok and line.data["regions"] == ["eu", "us"]
    assert line.detail == "0 healthy replicas of 1; served by region(s) eu, us"
    assert not result.ready  # "other" has neither
    assert with_region_engines(local, lambda model: ["eu"]).ready


async def test_a_region_that_failed_is_passed_over_for_a_while(stack: Stack) -> None:
    await stack.servers["eu"].stop()
    assert (await chat(stack, "eu")).headers["x-crosslogic-region"] == "us"  # failed over once...
    # ...and the next requests preferring eu go to us at once, while eu's view still says active.
    hints = RoutingHints(region_preference="eu")
    assert stack.gateway.live_regions(MODEL) == ["eu", "us"]
    assert stack.gateway.choose(MODEL, hints).region == "us"
    # With nothing else left, a cooling region is still tried.
    stack.gateway.update({"eu": view("eu", stack.urls["eu"]), "us": view("us", stack.urls["us"], state="drained")},
                         None, time.monotonic())
    assert stack.gateway.choose(MODEL, hints).region == "eu"
