"""Cost and accuracy of the rate limiter, per backend.

cost: sequential admit + settle cycles for one key under one tenant (RPM, TPM and concurrency all
  set, so every script path runs), through the stack the ingress uses (telemetry + fail mode + backend):
  p50/p99 of admit, settle and the pair, and the throughput of 32 concurrent clients.
accuracy: two "replicas" (independent clients) with 16 concurrent clients each retry continuously
  against RPM = N for two full windows; admitted in sliding windows of length W vs N. A TPM run reserves random max_tokens,
  settles to a random smaller actual, and checks the window never holds more than TPM.

Backends: redis (REDIS_URL or redis://127.0.0.1:6379/0, keys under a throw-away namespace), memory
(in-process), and with --actor the in-cluster Ray actor (starts a tiny local Ray, GCS on a random port).
connect (--actor): what opening the actor's stream costs, once per connection: the TCP connect, then
the mutual HMAC handshake (crosslogic/ratelimit/wire_protocol.py) until the first call may go.

    .venv/bin/python benchmarks/ratelimit_bench.py [--cycles N] [--window S] [--actor]

Prints a summary and writes benchmarks/results/ratelimit.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from crosslogic.ratelimit import (
    AdmissionRequest,
    FailoverRateLimiter,
    InMemoryRateLimiter,
    Limits,
    MeteredRateLimiter,
    NoopRateLimitMetrics,
    RateLimitConfig,
    RateLimiter,
    Subject,
)
from crosslogic.ratelimit.redis_backend import RedisRateLimiter

RESULTS = Path(__file__).parent / "results" / "ratelimit.json"
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
Factory = Callable[[RateLimitConfig], Awaitable[RateLimiter]]


class FailCounter(NoopRateLimitMetrics):
    """Counts decisions taken without the shared backend: they would blur the figures."""

    def __init__(self) -> None:
        self.degraded = 0

    def record_fail_mode(self, *, decision: str) -> None:
        if decision != "recovered":
            self.degraded += 1


def _stack(backend: RateLimiter, config: RateLimitConfig, metrics: FailCounter) -> RateLimiter:
    return MeteredRateLimiter(FailoverRateLimiter(backend, config, metrics), metrics)


def _subjects(key: Limits, tenant: Limits) -> tuple[Subject, Subject]:
    tid = f"bench-{uuid.uuid4().hex[:8]}"
    return (Subject(kind="tenant", id=tid, tenant_id=tid, limits=tenant),
            Subject(kind="key", id=f"key-{uuid.uuid4().hex[:6]}", tenant_id=tid, limits=key))


def _request(tenant: Subject, key: Subject, tokens: int) -> AdmissionRequest:
    return AdmissionRequest(request_id=uuid.uuid4().hex, tenant=tenant, key=key,
                            reserved_tokens=tokens, model="bench", key_prefix=key.id[:8])


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 4),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 4),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 4),
    }


async def bench_cost(make: Factory, namespace: str, cycles: int) -> dict[str, Any]:
    # A stall of the loaded machine must not flip the stack to its local fallback mid-measurement.
    config = RateLimitConfig(window_s=60.0, namespace=namespace, redis_timeout_s=2.0)
    metrics = FailCounter()
    limiter = _stack(await make(config), config, metrics)
    big = Limits(rpm=10_000_000, tpm=10_000_000_000, max_concurrency=100_000)
    tenant, key = _subjects(big, big)
    admit_s, settle_s, pair_s = [], [], []
    for i in range(cycles + 100):
        t0 = time.perf_counter()
        admission = await limiter.admit(_request(tenant, key, 512))
        t1 = time.perf_counter()
        await limiter.settle(admission, 100)
        t2 = time.perf_counter()
        # Skip the warm-up (connections, script load) and anything the fallback decided.
        if i >= 100 and admission.backend != "local":
            admit_s.append(t1 - t0)
            settle_s.append(t2 - t1)
            pair_s.append(t2 - t0)

    async def client(n: int) -> None:
        for _ in range(n):
            admission = await limiter.admit(_request(tenant, key, 512))
            await limiter.settle(admission, 100)

    concurrency, per_client = 32, max(1, cycles // 32)
    started = time.perf_counter()
    await asyncio.gather(*(client(per_client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await limiter.close()
    return {
        "cycles": len(pair_s),
        "admit": _ms(admit_s),
        "settle": _ms(settle_s),
        "admit_plus_settle": _ms(pair_s),
        "concurrent_32_clients_pairs_per_s": round(concurrency * per_client / elapsed, 1),
        "decisions_without_backend": metrics.degraded,
    }


def _accuracy_config(window_s: float, namespace: str) -> RateLimitConfig:
    # A generous timeout: on a loaded machine a fail-open decision would measure the fallback,
    # not the algorithm (fail-open decisions are counted and reported anyway).
    return RateLimitConfig(window_s=window_s, namespace=namespace, redis_timeout_s=2.0)


async def bench_rpm_accuracy(make: Factory, namespace: str, window_s: float, limit: int) -> dict[str, Any]:
    config = _accuracy_config(window_s, namespace)
    metrics = FailCounter()
    replicas = [_stack(await make(config), config, metrics) for _ in range(2)]
    tenant, key = _subjects(Limits(), Limits(rpm=limit))
    admitted_at: list[float] = []
    attempts = 0
    end = time.monotonic() + 2 * window_s

    async def client(limiter: RateLimiter) -> None:
        nonlocal attempts
        while time.monotonic() < end:
            attempts += 1
            admission = await limiter.admit(_request(tenant, key, 0))
            if admission.admitted:
                admitted_at.append(time.monotonic())
                await limiter.settle(admission, 0)
            else:
                await asyncio.sleep(0.002)

    await asyncio.gather(*(client(replicas[i % 2]) for i in range(32)))
    for limiter in replicas:
        await limiter.close()
    # Sliding windows of length W starting a quarter, half and three quarters of a window after the
    # first admission: their edges fall between the bursts that continuous demand produces (at t0,
    # t0 + W, ...), so client-side latency jitter cannot move an admission across an edge.
    t0 = min(admitted_at)
    windows = {
        f"[t0+{frac}W, t0+{frac + 1}W)": sum(
            1 for t in admitted_at if t0 + frac * window_s <= t < t0 + (frac + 1) * window_s)
        for frac in (0.25, 0.5, 0.75)
    }
    return {"limit": limit, "window_s": window_s, "attempts": attempts,
            "admitted_total": len(admitted_at), "admitted_per_window": windows,
            "exact": all(count == limit for count in windows.values()),
            "decisions_without_backend": metrics.degraded}


async def bench_tpm_accuracy(make: Factory, namespace: str, window_s: float, tpm: int) -> dict[str, Any]:
    config = _accuracy_config(window_s, namespace)
    metrics = FailCounter()
    limiter = _stack(await make(config), config, metrics)
    tenant, key = _subjects(Limits(), Limits(tpm=tpm))
    rng = random.Random(7)
    peak, reserved_total, settled_total, admitted = 0, 0, 0, 0
    # Shorter than the window, so at the end the window still holds every settled request.
    end = time.monotonic() + window_s * 0.8

    async def client() -> None:
        nonlocal peak, reserved_total, settled_total, admitted
        while time.monotonic() < end:
            reserve = rng.randint(100, 2000)
            admission = await limiter.admit(_request(tenant, key, reserve))
            if not admission.admitted:
                await asyncio.sleep(0.005)
                continue
            admitted += 1
            actual = rng.randint(10, reserve)
            reserved_total, settled_total = reserved_total + reserve, settled_total + actual
            await limiter.settle(admission, actual)
            peak = max(peak, (await limiter.state(tenant)).tokens_in_window)

    await asyncio.gather(*(client() for _ in range(16)))
    state = await limiter.state(tenant)
    await limiter.close()
    return {"tpm": tpm, "window_s": window_s, "admitted": admitted, "reserved": reserved_total,
            "settled": settled_total, "tokens_in_window_at_end": state.tokens_in_window,
            "peak_tokens_in_window": peak, "never_over": peak <= tpm,
            "settled_equals_window": state.tokens_in_window == settled_total,
            "decisions_without_backend": metrics.degraded}


@asynccontextmanager
async def redis_backend() -> AsyncIterator[tuple[Factory, str]]:
    namespace = f"crosslogic-bench:{uuid.uuid4().hex[:8]}"

    async def make(config: RateLimitConfig) -> RateLimiter:
        limiter = RedisRateLimiter.from_url(REDIS_URL, config)
        await limiter.load_scripts()
        return limiter

    try:
        yield make, namespace
    finally:
        client = aioredis.Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{namespace}:*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@asynccontextmanager
async def memory_backend() -> AsyncIterator[tuple[Factory, str]]:
    shared: dict[float, InMemoryRateLimiter] = {}

    async def make(config: RateLimitConfig) -> RateLimiter:
        return shared.setdefault(config.window_s, InMemoryRateLimiter(config))

    yield make, "memory"


@asynccontextmanager
async def actor_backend(stream: bool) -> AsyncIterator[tuple[Factory, str]]:
    """The in-cluster actor, called through Ray actor calls (`stream=False`) or over its stream
    (`crosslogic/ratelimit/wire.py`), as the ingress does once `wait_ready` opened it."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    # Otherwise Ray 2.60 turns token auth on and leaves ~/.ray/auth_token behind for every later cluster.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from deployments.ratelimit_actor import ActorRateLimiter

    ray.init(address="local", include_dashboard=False, num_cpus=1, _node_ip_address="127.0.0.1",
             namespace=f"bench-{uuid.uuid4().hex[:6]}", log_to_driver=False)
    actors: dict[float, Any] = {}

    async def make(config: RateLimitConfig) -> RateLimiter:
        from deployments.ratelimit_actor import RateLimitActor

        # One actor per window length: the named actor keeps the config it was created with.
        if config.window_s not in actors:
            actors[config.window_s] = RateLimitActor.remote(config)  # type: ignore[attr-defined]
        limiter = ActorRateLimiter(config, actors[config.window_s], stream=stream)
        await limiter.wait_ready()
        assert limiter.transport == ("stream" if stream else "ray")
        return limiter

    try:
        yield make, "actor"
    finally:
        ray.shutdown()


async def bench_connect(rounds: int) -> dict[str, Any]:
    """TCP connect and handshake to the actor's stream, each timed; the connection closes right after."""
    from crosslogic.ratelimit.wire_protocol import client_handshake
    from deployments.ratelimit_actor import get_ratelimit_actor

    endpoint = await get_ratelimit_actor(RateLimitConfig()).stream_address.remote()
    tcp_s, handshake_s = [], []
    for i in range(rounds + 10):
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        t1 = time.perf_counter()
        await client_handshake(reader, writer, endpoint.secret)
        t2 = time.perf_counter()
        writer.close()
        await writer.wait_closed()
        if i >= 10:
            tcp_s.append(t1 - t0)
            handshake_s.append(t2 - t1)
    return {"rounds": rounds, "tcp_connect": _ms(tcp_s), "handshake": _ms(handshake_s)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    backends = {"redis": redis_backend, "memory": memory_backend}
    if args.actor:
        backends["actor_ray"] = functools.partial(actor_backend, stream=False)
        backends["actor_stream"] = functools.partial(actor_backend, stream=True)
    results: dict[str, Any] = {}
    for name, backend in backends.items():
        async with backend() as (make, namespace):
            results[name] = {
                "cost": await bench_cost(make, namespace, args.cycles),
                "rpm_accuracy": await bench_rpm_accuracy(make, namespace, args.window, args.rpm),
                "tpm_accuracy": await bench_tpm_accuracy(make, namespace, args.window, args.tpm),
            }
            if name == "actor_stream":
                results[name]["connect"] = await bench_connect(200)
        cost = results[name]["cost"]
        print(f"{name:12s} admit p50 {cost['admit']['p50_ms']:.3f} ms p99 {cost['admit']['p99_ms']:.3f}"
              f" | settle p50 {cost['settle']['p50_ms']:.3f} ms"
              f" | pair p50 {cost['admit_plus_settle']['p50_ms']:.3f} ms"
              f" p99 {cost['admit_plus_settle']['p99_ms']:.3f} ms"
              f" | {cost['concurrent_32_clients_pairs_per_s']:.0f} pairs/s (32 clients)")
        if "connect" in results[name]:
            connect = results[name]["connect"]
            print(f"        once per connection: TCP connect p50 {connect['tcp_connect']['p50_ms']:.3f} ms,"
                  f" handshake p50 {connect['handshake']['p50_ms']:.3f} ms"
                  f" p99 {connect['handshake']['p99_ms']:.3f} ms")
        rpm = results[name]["rpm_accuracy"]
        print(f"        RPM={rpm['limit']} per {rpm['window_s']}s window, admitted in sliding windows: "
              f"{list(rpm['admitted_per_window'].values())} ({rpm['attempts']} attempts)")
        tpm = results[name]["tpm_accuracy"]
        print(f"        TPM={tpm['tpm']}: peak in window {tpm['peak_tokens_in_window']}, "
              f"window == settled: {tpm['settled_equals_window']}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3000)
    parser.add_argument("--window", type=float, default=10.0, help="window of the accuracy runs (s)")
    parser.add_argument("--rpm", type=int, default=200)
    parser.add_argument("--tpm", type=int, default=50_000)
    parser.add_argument("--actor", action="store_true",
                        help="also bench the in-cluster actor, through Ray calls and over its stream")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    payload = {
        "benchmark": "ratelimit",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m": round(os.getloadavg()[0], 2)},
        "params": vars(args),
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
