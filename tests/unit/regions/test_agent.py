"""The regional agent against the real control-plane heartbeat endpoint: the route of
crosslogic/regions/routes.py with the real HeartbeatVerifier on PostgreSQL (registry, master secret,
nonces, audit), served by real uvicorn (`serve_gateway`), with TLS from tests/tls_ca.py."""

from __future__ import annotations

import asyncio
import itertools
import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from heartbeat_support import MASTER, heartbeat_app, region_name, secret_of

from crosslogic.engine.base import ModelCard
from crosslogic.localstack.ray_cluster import free_port
from crosslogic.regions import registry
from crosslogic.regions.agent import BACKOFF_INTERVALS, RegionAgent, RegionSnapshot
from crosslogic.regions.app_config import AgentConfig, GatewayListenConfig
from crosslogic.regions.config import TlsClientConfig
from crosslogic.regions.gateway_server import serve_gateway
from crosslogic.regions.heartbeats import AcceptedHeartbeat, HeartbeatVerifier
from crosslogic.regions.protocol import RemoteReplica, VersionSet
from crosslogic.regions.versions import local_versions
from tests.tls_ca import TlsFiles, make_ca

GATEWAY = "https://gw.eu-test.example:8443"
INTERVAL = 0.2
CARD = ModelCard(served_name="smollm2-135m", task="generate", max_model_len=2048, source="smollm2-135m")


async def snapshot() -> RegionSnapshot:
    return RegionSnapshot(
        replicas=[RemoteReplica(replica_id="r1", model="smollm2-135m", running=2, waiting=1, kv_cache_usage=0.25, capacity=64)],
        models=["smollm2-135m"], cards=[CARD],
    )


@dataclass
class ControlPlane:
    """What the real endpoint did: `published` is what reached its `publish` (accepted heartbeats),
    `answered` every answer it gave, (time.monotonic(), HTTP status), in order."""

    url: str = ""
    published: list[AcceptedHeartbeat] = field(default_factory=list)
    answered: list[tuple[float, int]] = field(default_factory=list)

    def statuses(self) -> list[int]:
        return [status for _, status in self.answered]


@asynccontextmanager
async def control_plane(
    db: asyncpg.Pool, *, listen: GatewayListenConfig | None = None, versions: VersionSet | None = None,
    plane: ControlPlane | None = None,
) -> AsyncIterator[ControlPlane]:
    """The heartbeat endpoint under uvicorn until the block ends. `versions`: the control plane's
    (default this machine's); `plane`: carry on an earlier one's record (a restart, same listen config)."""
    plane = plane or ControlPlane()
    verifier = HeartbeatVerifier(db, MASTER, versions=versions)
    built = heartbeat_app(verifier)
    built.published = plane.published
    app = built.app

    async def observed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def answer(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                plane.answered.append((time.monotonic(), int(message["status"])))
            await send(message)

        await app(scope, receive, answer if scope["type"] == "http" else send)

    server, plane.url = await serve_gateway(observed, listen or GatewayListenConfig())  # type: ignore[arg-type]
    try:
        yield plane
    finally:
        await server.stop()
        await verifier.close()


@pytest.fixture
async def region(db_pool: asyncpg.Pool) -> str:
    name = region_name("agent")
    await registry.create_region(db_pool, name)
    return name


@asynccontextmanager
async def agent_running(
    url: str, region: str, *, secret: bytes | None = None, tls: TlsClientConfig | None = None,
    collect: Callable[[], object] = snapshot, versions: VersionSet | None = None,
) -> AsyncIterator[RegionAgent]:
    config = AgentConfig(control_plane_url=url, interval_s=INTERVAL, timeout_s=2, tls=tls or TlsClientConfig())
    agent = RegionAgent(region=region, secret=secret if secret is not None else secret_of(region),
                        gateway_url=GATEWAY, config=config, collect=collect, versions=versions)  # type: ignore[arg-type]
    agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_signed_heartbeats_arrive_at_the_interval(db_pool: asyncpg.Pool, region: str) -> None:
    async with control_plane(db_pool) as plane:
        async with agent_running(plane.url, region) as agent:
            await wait_for(lambda: len(plane.published) >= 6)
        assert set(plane.statuses()) == {200}
    first = plane.published[0]
    beat = first.heartbeat
    assert beat.region == region and beat.gateway_url == GATEWAY and beat.interval_s == INTERVAL
    assert beat.models == ["smollm2-135m"] and beat.cards == [CARD]
    assert beat.replicas[0].running == 2 and beat.replicas[0].capacity == 64
    assert beat.versions == local_versions()
    assert beat.agent_id == agent.agent_id and agent.agent_id.count(":") == 2
    assert first.secret_generation == 1 and not first.operator_drained
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(plane.answered)]
    assert 0.8 * INTERVAL <= statistics.median(gaps) <= 2 * INTERVAL, gaps
    assert agent.last is not None and agent.last.ok and agent.last.status == 200
    record = await registry.get_region(db_pool, region)
    assert record.last_agent_id == agent.agent_id and record.last_gateway_url == GATEWAY


# The region's vLLM differs from the control plane's (one side upgraded before the other).
OTHER_VERSIONS = local_versions().model_copy(update={"vllm": "0.0.1"})


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        # Not registered yet: refused until the operator registers the region.
        (401, "unknown region (unknown_region)"),
        # The control plane runs another vLLM: refused until it restarts on the region's versions.
        (409, "vllm: control plane 0.0.1, region "),
    ],
)
async def test_refused_heartbeats_are_logged_once_and_retried_with_backoff(
    status: int, expected: str, db_pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="crosslogic.regions.agent")
    name = region_name("agent")
    if status == 409:
        await registry.create_region(db_pool, name)
    listen = GatewayListenConfig(port=free_port())
    plane = ControlPlane()
    async with AsyncExitStack() as first:
        await first.enter_async_context(
            control_plane(db_pool, listen=listen, versions=OTHER_VERSIONS if status == 409 else None, plane=plane))
        async with agent_running(plane.url, name) as agent:
            await wait_for(lambda: len(plane.answered) >= 5, timeout=15)
            # The agent records an answer just after the control plane sent it: wait for its count too
            # (read between the two on a loaded machine: 4 after 5 answers).
            await wait_for(lambda: agent.last is not None and agent.last.consecutive_failures >= 5, timeout=15)
            assert agent.last is not None and not agent.last.ok and agent.last.status == status
            assert expected in agent.last.message and agent.last.consecutive_failures >= 5
            assert plane.published == [] and set(plane.statuses()) == {status}
            # The operator fixes the cause; the agent, still running, comes back by itself.
            # (Checked while the control plane still runs: once it stops, the next beat fails to connect.)
            if status == 401:
                await registry.create_region(db_pool, name)
                await wait_for(lambda: len(plane.published) >= 2 and agent.last is not None and agent.last.ok, timeout=10)
            else:
                await first.aclose()
                async with control_plane(db_pool, listen=listen, plane=plane):
                    await wait_for(lambda: len(plane.published) >= 2 and agent.last is not None and agent.last.ok,
                                   timeout=10)
    assert {a.heartbeat.region for a in plane.published} == {name}
    refused = [at for at, answered in plane.answered if answered == status]
    gaps = [b - a for a, b in itertools.pairwise(refused)]
    # 2 intervals after the first refusal, then 4, then capped at BACKOFF_INTERVALS intervals.
    assert gaps[0] >= 1.8 * INTERVAL, gaps
    assert 0.9 * BACKOFF_INTERVALS * INTERVAL <= max(gaps) <= 1.6 * BACKOFF_INTERVALS * INTERVAL, gaps
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and expected in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]  # loud once, not every beat
    assert f"HTTP {status}" in errors[0].getMessage()
    assert any("accepted again" in r.getMessage() for r in caplog.records)


async def test_wrong_secret_is_refused_by_the_control_plane_and_logged(db_pool: asyncpg.Pool, region: str) -> None:
    async with control_plane(db_pool) as plane:
        async with agent_running(plane.url, region, secret=bytes(32)) as agent:
            await wait_for(lambda: len(plane.answered) >= 2)
    assert plane.published == [] and set(plane.statuses()) == {401}
    assert agent.last is not None and agent.last.status == 401 and "invalid_region_signature" in agent.last.message


async def test_unreachable_control_plane_and_failing_collect_never_kill_the_loop() -> None:
    calls = 0

    async def flaky() -> RegionSnapshot:
        nonlocal calls
        calls += 1
        if calls % 2:
            raise RuntimeError("router actor restarting")
        return await snapshot()

    async with agent_running(f"http://127.0.0.1:{free_port()}", region_name("agent"), collect=flaky) as agent:
        await wait_for(lambda: calls >= 4, timeout=15)
        assert agent.last is not None and not agent.last.ok and agent.last.status is None
        assert agent._task is not None and not agent._task.done()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_ca(tmp_path_factory.mktemp("ca"))


async def test_tls_with_ca_bundle_and_client_certificate(tls: TlsFiles, db_pool: asyncpg.Pool, region: str) -> None:
    listen = GatewayListenConfig(tls_certfile=tls.server_cert, tls_keyfile=tls.server_key, client_ca=tls.ca_cert)
    async with control_plane(db_pool, listen=listen) as plane:
        assert plane.url.startswith("https://")
        mutual = TlsClientConfig(ca_bundle=tls.ca_cert, client_cert=tls.client_cert, client_key=tls.client_key)
        async with agent_running(plane.url, region, tls=mutual) as agent:
            await wait_for(lambda: len(plane.published) >= 2)
            assert agent.last is not None and agent.last.ok
        # Without its client certificate the handshake fails: nothing arrives, the agent says why.
        count = len(plane.answered)
        async with agent_running(plane.url, region, tls=TlsClientConfig(ca_bundle=tls.ca_cert)) as agent:
            await wait_for(lambda: agent.last is not None)
            assert not agent.last.ok and agent.last.status is None and "unreachable" in agent.last.message
        # Without the CA bundle the server is not trusted.
        async with agent_running(plane.url, region, tls=TlsClientConfig()) as agent:
            await wait_for(lambda: agent.last is not None)
            assert not agent.last.ok and agent.last.status is None
        assert len(plane.answered) == count
