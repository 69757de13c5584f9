"""Hot-path cost of API-key authentication (`KeyAuthenticator.authenticate`).

warm: the key is cached; this is every request after the first one per key per replica.
cold: the cache is emptied before each call, so each call does one PostgreSQL lookup by prefix.
Uses DATABASE_URL's server (in a throw-away database) or an embedded PostgreSQL.

    .venv/bin/python benchmarks/auth_bench.py [--warm N] [--cold N]

Prints a summary and writes benchmarks/results/auth.json (one entry per server kind).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.storage.embedded import start_embedded, stop_embedded
from crosslogic.storage.migrations import apply_migrations
from crosslogic.storage.pool import dsn_with_database
from crosslogic.tenants.api_key_repository import create_api_key
from crosslogic.tenants.models import ApiKeyCreate, TenantCreate
from crosslogic.tenants.tenant_repository import create_tenant

RESULTS = Path(__file__).parent / "results" / "auth.json"


@asynccontextmanager
async def bench_database() -> AsyncIterator[tuple[str, str]]:
    """(dsn of a fresh migrated database, description of the server)."""
    server = os.environ.get("DATABASE_URL")
    tmp: Path | None = None
    if server is None:
        tmp = Path(tempfile.mkdtemp(prefix="crosslogic-bench-"))
        server = (await asyncio.to_thread(start_embedded, tmp / "pgdata", durable=False)).dsn()
    name = f"crosslogic_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn_with_database(server, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = dsn_with_database(server, name)
        conn = await asyncpg.connect(dsn)
        await apply_migrations(conn)
        await conn.close()
        yield dsn, "DATABASE_URL server" if tmp is None else "embedded PostgreSQL"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if tmp is not None:
            await asyncio.to_thread(stop_embedded, tmp / "pgdata")
            shutil.rmtree(tmp, ignore_errors=True)


async def timed(n: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    """Per-call latencies in milliseconds."""
    samples = []
    for i in range(n):
        started = time.perf_counter_ns()
        await call(i)
        samples.append((time.perf_counter_ns() - started) / 1e6)
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 4)

    return {"n": len(samples), "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "mean_ms": round(statistics.fmean(samples), 4)}


async def run(warm_n: int, cold_n: int) -> dict[str, object]:
    async with bench_database() as (dsn, server):
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
        tenant = await create_tenant(pool, TenantCreate(name="bench"))
        keys = [
            (await create_api_key(pool, tenant.id, ApiKeyCreate(name=f"k{i}", scopes=["m"]))).secret
            for i in range(64)
        ]
        headers = [f"Bearer {k}" for k in keys]
        auth = KeyAuthenticator(pool, usage_flush_interval_s=3600)
        await auth.start()
        try:
            for h in headers:
                await auth.authenticate(h, "m")  # warm every key
            misses = auth.misses
            warm = await timed(warm_n, lambda i: auth.authenticate(headers[i % len(headers)], "m"))
            assert auth.misses == misses, "warm run hit PostgreSQL"

            async def cold_call(i: int) -> object:
                auth.invalidate_all()
                return await auth.authenticate(headers[i % len(headers)], "m")

            cold = await timed(cold_n, cold_call)
        finally:
            await auth.close()
            await pool.close()
    warm_s, cold_s = summary(warm), summary(cold)
    return {
        "benchmark": "auth",
        "what": "KeyAuthenticator.authenticate per call (header parse, sha256, cache, checks)",
        "server": server,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "warm": warm_s,
        "cold": cold_s,
        "target_warm_p50_ms": 0.1,
        "warm_target_met": warm_s["p50_ms"] < 0.1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warm", type=int, default=50_000, help="warm-cache calls")
    parser.add_argument("--cold", type=int, default=2_000, help="cold-cache calls")
    args = parser.parse_args()
    result = asyncio.run(run(args.warm, args.cold))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # One entry per server kind, so a run against DATABASE_URL does not erase the embedded one.
    runs: dict[str, object] = {}
    if RESULTS.exists():
        runs = json.loads(RESULTS.read_text()).get("runs", {})
    runs[str(result["server"])] = result
    RESULTS.write_text(json.dumps({"benchmark": "auth", "runs": runs}, indent=2) + "\n")
    for phase in ("warm", "cold"):
        s = result[phase]
        assert isinstance(s, dict)
        print(f"{phase:>5}: p50 {s['p50_ms']:.4f} ms  p90 {s['p90_ms']:.4f} ms  "
              f"p99 {s['p99_ms']:.4f} ms  mean {s['mean_ms']:.4f} ms  (n={s['n']})")
    print(f"server: {result['server']}; warm p50 target < 0.1 ms met: {result['warm_target_met']}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
