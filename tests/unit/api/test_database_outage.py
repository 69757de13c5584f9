"""The API keeps answering cached keys while PostgreSQL is frozen; uncached keys get a quick 503;
every answered request is metered once the database is back; `/ready` says what is going on.

Real parts: the whole /v1 app, the key authenticator, the usage recorder and the readiness probes, on
a pool built like production's (crosslogic.storage.pool.create_pool) whose connections go through a
TCP proxy this test runs in front of the real PostgreSQL. Freezing the proxy stops forwarding bytes
without closing anything: what a hung server or a black-holed network looks like to the ingress.
The engine is a generator behind the Gateway protocol (the engine needs Ray: tests/serve).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from crosslogic.api.app import build_api
from crosslogic.api.context import ApiContext
from crosslogic.api.gateway import Readiness
from crosslogic.api.readiness_probes import DependencyProbes
from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.engine.base import RESPONSE, USAGE, EngineEvent, ModelCard
from crosslogic.metering import UsageRecorder
from crosslogic.routing.hints import RoutingHints
from crosslogic.storage.pool import create_pool
from crosslogic.tenants.api_key_repository import create_api_key
from crosslogic.tenants.models import ApiKeyCreate, CreatedApiKey, TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant

pytestmark = pytest.mark.timeout(120)

MODEL = "outage-m"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
FREEZE_S = 15.0
WORKERS = 4


class FreezableProxy:
    """TCP forwarding 127.0.0.1:<port> -> the PostgreSQL server; `freeze()` holds every byte (and
    every new connection) until `thaw()`, closing nothing."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        self.thaw()
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        await self._flowing.wait()
        try:
            server_r, server_w = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_w.close()
            return
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.create_task(self._pipe(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                await self._flowing.wait()
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


class GeneratorGateway:
    """One chat model whose engine answers at once (with usage, so each request is metered)."""

    def models(self) -> list[ModelCard]:
        return [ModelCard(served_name=MODEL, task="generate", max_model_len=2048, source="test")]

    async def stream(self, model: str, endpoint: Any, body: dict[str, Any], request_id: str,
                     hints: RoutingHints) -> AsyncIterator[EngineEvent]:
        yield (RESPONSE, {"id": request_id, "object": "chat.completion", "model": model, "choices": []})
        yield (USAGE, {"prompt_tokens": 3, "completion_tokens": 2})

    async def readiness(self) -> Readiness:
        return Readiness(ready=True, dependencies={})


async def _key(db: asyncpg.Pool) -> CreatedApiKey:
    tenant = await create_tenant(db, TenantCreate(name=f"outage-{uuid.uuid4().hex[:8]}"))
    return await create_api_key(db, tenant.id, ApiKeyCreate(name="k"))


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[tuple[FreezableProxy, str]]:
    parts = urlsplit(database_url)
    p = FreezableProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await p.start()
    # Everything but the address kept: user and password (the embedded server wants its password).
    netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    netloc += f"127.0.0.1:{p.port}"
    yield p, urlunsplit(parts._replace(netloc=netloc))
    await p.close()


class Traffic:
    def __init__(self, client: httpx.AsyncClient, keys: list[CreatedApiKey]) -> None:
        self._client = client
        self._keys = keys
        self.answered: list[tuple[float, str]] = []  # (when, server request id) of each 200
        self.failed: list[tuple[float, int]] = []

    async def worker(self, index: int, until: float) -> None:
        key = self._keys[index % len(self._keys)]
        while time.monotonic() < until:
            resp = await self._client.post("/v1/chat/completions", json=CHAT,
                                           headers={"authorization": f"Bearer {key.secret}"})
            if resp.status_code == 200:
                self.answered.append((time.monotonic(), resp.headers["x-request-id"]))
            else:
                self.failed.append((time.monotonic(), resp.status_code))

    def rate(self, start: float, end: float) -> float:
        return sum(1 for t, _ in self.answered if start <= t < end) / (end - start)


async def test_cached_keys_are_served_through_a_frozen_database(
    db_pool: asyncpg.Pool, proxy: tuple[FreezableProxy, str]
) -> None:
    tcp, dsn = proxy
    pool = await create_pool(dsn, min_size=2, max_size=10)
    authenticator = KeyAuthenticator(pool)
    await authenticator.start()
    recorder = UsageRecorder(pool)
    recorder.start()
    probes = DependencyProbes(pool, authenticator.db, cached_keys=lambda: authenticator.cached_keys,
                              buffered_usage=lambda: recorder.pending)
    context = ApiContext(gateway=GeneratorGateway(), authenticator=authenticator, usage=recorder,
                         max_body_bytes=1 << 20, retries_before_first_token=0, probes=probes)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=build_api(context)), base_url="http://test")
    cached = [await _key(db_pool), await _key(db_pool)]
    uncached = await _key(db_pool)
    traffic = Traffic(client, cached)
    try:
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json()["dependencies"]["postgres"]["data"]["reachable"]

        # Traffic warms up (keys cached, connections made) for 2 s before the first window opens: a
        # cold start inside the "before" window made its rate swing (129 to 910 answers/s in full runs).
        warm_up_end = time.monotonic() + 2
        t0, before_end, frozen_end = warm_up_end, warm_up_end + 5, warm_up_end + 5 + FREEZE_S
        workers = [asyncio.create_task(traffic.worker(i, frozen_end + 5)) for i in range(WORKERS)]
        await asyncio.sleep(before_end - time.monotonic())
        tcp.freeze()
        await asyncio.sleep(5)  # the first lookup after the freeze has timed out by now

        # An uncached key: a 503 in OpenAI's shape, quickly, not a hang.
        started = time.monotonic()
        resp = await client.post("/v1/chat/completions", json=CHAT,
                                 headers={"authorization": f"Bearer {uncached.secret}"})
        uncached_s = time.monotonic() - started
        assert resp.status_code == 503, resp.text
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
        assert uncached_s < 1.0

        started = time.monotonic()
        ready = await client.get("/ready")
        ready_s = time.monotonic() - started
        postgres = ready.json()["dependencies"]["postgres"]
        assert ready.status_code == 200 and ready_s < 3.0  # still in rotation: the API serves
        assert "unreachable" in postgres["detail"] and "serving cached keys" in postgres["detail"]
        assert postgres["data"]["degraded"] and postgres["data"]["cached_keys"] == 2

        await asyncio.sleep(frozen_end - time.monotonic())
        tcp.thaw()
        await asyncio.gather(*workers)

        before = traffic.rate(t0, before_end)
        during = traffic.rate(before_end, frozen_end)
        after = traffic.rate(frozen_end, frozen_end + 5)
        print(f"\nanswers/s before {before:.0f}, frozen {FREEZE_S:.0f}s {during:.0f}, after {after:.0f};"
              f" uncached 503 in {uncached_s * 1000:.0f} ms; /ready in {ready_s * 1000:.0f} ms;"
              f" stale hits {authenticator.stale_hits}; failures {len(traffic.failed)}")
        assert before > 20
        # Only the first lookup after the freeze waits (its timeout, 2 s of 15): the rest is answered,
        # with no stall. Before the fix answers stopped for the whole outage (6 in 15 s against ~75
        # before). Measured after the warm-up on the EPYC: 0.92-0.93 idle, 1.07 beside two CPU hogs.
        assert during >= 0.5 * before, (before, during)
        frozen_times = [t for t, _ in traffic.answered if before_end <= t < frozen_end]
        gaps = [b - a for a, b in zip([before_end, *frozen_times], [*frozen_times, frozen_end], strict=True)]
        assert max(gaps) <= 3.0, f"answers stalled for {max(gaps):.1f}s during the outage"
        assert not traffic.failed
        # Nothing lost: every answered request is in the ledger once the database is back.
        ids = [rid for _, rid in traffic.answered]
        deadline = time.monotonic() + 30
        while True:
            metered = await db_pool.fetchval(
                "SELECT count(*) FROM usage_ledger WHERE request_id = ANY($1::text[])", ids)
            if metered == len(ids) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert metered == len(ids)
        ready = await client.get("/ready")
        assert ready.json()["dependencies"]["postgres"]["data"]["reachable"]
        resp = await client.post("/v1/chat/completions", json=CHAT,
                                 headers={"authorization": f"Bearer {uncached.secret}"})
        assert resp.status_code == 200
    finally:
        tcp.thaw()
        await client.aclose()
        await recorder.close()
        await authenticator.close()
        await probes.close()
        await pool.close()
