"""The in-cluster backend on a tiny local Ray: the named actor shared by several clients ("replicas"),
client mistakes surfacing in OpenAI shape, and fail-open when the actor dies, then recovery.

No Serve application and no engine: only the actor. Ray's GCS gets a random port (never Redis's 6379).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import uuid
from collections.abc import Iterator

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray

from crosslogic.errors import ConflictError
from crosslogic.ratelimit import (
    AdmissionRequest,
    FailoverRateLimiter,
    Limits,
    RateLimitBackendError,
    RateLimitConfig,
    Subject,
    build_rate_limiter,
)
from crosslogic.ratelimit.wire import WireClient, WireDown
from crosslogic.ratelimit.wire_protocol import new_secret
from deployments.ratelimit_actor import (
    ActorRateLimiter,
    RayRateLimitMetrics,
    get_ratelimit_actor,
)

pytestmark = pytest.mark.serve

CONFIG = RateLimitConfig(window_s=30.0)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", include_dashboard=False, num_cpus=1,
                 _node_ip_address="127.0.0.1", namespace="crosslogic-test", log_to_driver=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _tenant(**limits: int) -> Subject:
    tenant_id = f"t-{uuid.uuid4().hex[:8]}"
    return Subject(kind="tenant", id=tenant_id, tenant_id=tenant_id, limits=Limits(**limits))


def _request(tenant: Subject, tokens: int = 10) -> AdmissionRequest:
    return AdmissionRequest(request_id=f"r-{uuid.uuid4().hex}", tenant=tenant, reserved_tokens=tokens)


async def _until_stream_lost(limiter: ActorRateLimiter, timeout_s: float = 5.0) -> None:
    """`ray.kill` returns before the actor's process is gone; the stream sees its end then."""
    for _ in range(int(timeout_s / 0.05)):
        if limiter.transport != "stream":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the stream to a killed actor still up after {timeout_s}s")


async def test_replicas_share_one_exact_limit(local_ray: None) -> None:
    # Through Ray actor calls (no stream), once the actor answers, as an ingress replica starts: on
    # a loaded machine its creation alone outlasts the calls' 2 s deadline (CI, load average 12).
    replicas = [ActorRateLimiter(CONFIG, stream=False), ActorRateLimiter(CONFIG, stream=False)]
    for replica in replicas:
        await replica.wait_ready()
    tenant = _tenant(rpm=37, tpm=100_000, max_concurrency=150)
    results = await asyncio.gather(
        *(replicas[i % 2].admit(_request(tenant)) for i in range(120)))
    admitted = [a for a in results if a.admitted]
    assert len(admitted) == 37 and all(a.backend == "actor" for a in admitted)
    settled = await asyncio.gather(*(replicas[1].settle(a, 4) for a in admitted))
    assert all(s.refunded_tokens == 6 and s.lease_released for s in settled)
    state = await replicas[0].state(tenant)
    assert state.requests_in_window == 37 and state.tokens_in_window == 37 * 4
    assert state.active_leases == 0 and state.backend == "actor"


async def test_extend_and_duplicate_through_the_actor(local_ray: None) -> None:
    limiter = ActorRateLimiter(CONFIG)
    tenant = _tenant(max_concurrency=1)
    request = _request(tenant)
    admission = await limiter.admit(request)
    assert admission.admitted and await limiter.extend(admission, 5.0)
    with pytest.raises(ConflictError):
        await limiter.admit(request)
    assert not (await limiter.admit(_request(tenant))).admitted
    assert (await limiter.settle(admission, 0)).lease_released


async def test_dead_actor_fails_open_then_recovers(local_ray: None) -> None:
    config = RateLimitConfig(window_s=30.0, probe_interval_s=0.2, replicas=2)
    actor_client = ActorRateLimiter(config, timeout_s=1.0)
    limiter = FailoverRateLimiter(actor_client, config)
    tenant = _tenant(rpm=10)
    assert (await limiter.admit(_request(tenant))).backend == "actor"

    ray.kill(get_ratelimit_actor(config), no_restart=True)
    # The kill takes effect asynchronously: until the process is gone its stream still answers.
    await _until_stream_lost(actor_client)
    local = [await limiter.admit(_request(tenant)) for _ in range(8)]
    assert all(a.backend == "local" for a in local)
    assert sum(a.admitted for a in local) == 5

    recovered = None
    for _ in range(50):
        await asyncio.sleep(0.1)
        recovered = await limiter.admit(_request(tenant))
        if recovered.backend == "actor":
            break
    assert recovered is not None and recovered.backend == "actor" and recovered.admitted


async def test_full_stack_with_ray_metrics(local_ray: None) -> None:
    """What the ingress builds without REDIS_URL: telemetry on Ray metrics, fail mode, the actor."""
    metrics = RayRateLimitMetrics()
    actor_client = ActorRateLimiter(CONFIG)
    await actor_client.wait_ready()
    limiter = build_rate_limiter(CONFIG, redis_url=None, in_cluster=actor_client, metrics=metrics)
    tenant = _tenant(rpm=1)
    admitted = await limiter.admit(_request(tenant))
    refused = await limiter.admit(_request(tenant))
    assert admitted.admitted and not refused.admitted and limiter.backend_name == "actor"
    assert (await limiter.settle(admitted, 3)).lease_released
    metrics.record_backend_error(backend="actor", operation="admit")
    metrics.record_fail_mode(decision="open")
    await limiter.close()


async def test_calls_go_over_the_stream_and_survive_an_actor_restart(local_ray: None) -> None:
    """After `wait_ready` the calls travel over the stream (not Ray calls). The actor dies and Ray
    restarts it: the call in flight fails as a backend error (never resent), calls go through Ray
    meanwhile, and the stream comes back to the new actor."""
    config = RateLimitConfig(window_s=30.0, namespace="wire-restart")
    limiter = ActorRateLimiter(config, timeout_s=2.0)
    await limiter.wait_ready()
    assert limiter.transport == "stream"
    tenant = _tenant(rpm=100, max_concurrency=50)
    admitted = await asyncio.gather(*(limiter.admit(_request(tenant)) for _ in range(20)))
    assert all(a.admitted and a.backend == "actor" for a in admitted)
    state = await limiter.state(tenant)
    assert state.requests_in_window == 20 and state.active_leases == 20

    ray.kill(get_ratelimit_actor(config), no_restart=False)
    await _until_stream_lost(limiter)
    outcomes: list[str] = []
    for _ in range(100):
        try:
            await limiter.admit(_request(tenant))
            outcomes.append(limiter.transport)
        except RateLimitBackendError:
            outcomes.append("backend error")
        if outcomes[-1] == "stream":
            break
        await asyncio.sleep(0.1)
    print(f"calls after the restart: {outcomes}")
    assert outcomes[-1] == "stream", outcomes
    # The restarted actor starts empty (documented: briefly lenient after a restart), and is served
    # over the new stream.
    assert (await limiter.state(tenant)).requests_in_window <= len(outcomes) < 100
    await limiter.close()


async def test_the_actors_stream_refuses_callers_without_its_secret(local_ray: None) -> None:
    """The stream listens on the node's address: a caller that cannot prove the secret (which only
    travels over Ray, from `stream_address`) gets no answer to any call, and is disconnected."""
    limiter = ActorRateLimiter(CONFIG)
    await limiter.wait_ready()
    assert limiter.transport == "stream"
    tenant = _tenant(rpm=10)
    assert (await limiter.admit(_request(tenant))).admitted
    endpoint = await get_ratelimit_actor(CONFIG).stream_address.remote()

    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    assert set(json.loads(await reader.readexactly(length))) == {"hello", "nonce", "idle_s"}
    call = json.dumps({"id": 1, "op": "state", "args": [tenant.model_dump(mode="json")]}).encode()
    writer.write(struct.pack("!I", len(call)) + call)
    assert await asyncio.wait_for(reader.read(), timeout=5.0) == b""  # closed, the tenant's state unsaid
    writer.close()
    with pytest.raises(WireDown):
        await WireClient.connect(endpoint.host, endpoint.port, secret=new_secret(), timeout_s=2.0)

    proven = await WireClient.connect(endpoint.host, endpoint.port, secret=endpoint.secret, timeout_s=2.0)
    try:
        assert (await proven.call("state", tenant)).requests_in_window == 1
    finally:
        await proven.close()
    assert limiter.transport == "stream" and (await limiter.state(tenant)).requests_in_window == 1
    await limiter.close()
