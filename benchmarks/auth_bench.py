"""Hot-path cost of API-key authentication (`KeyAuthenticator.authenticate`).

warm: the key is cached; this is every request after the first one per key per replica.
cold: the cache is emptied before each call, so each call does one PostgreSQL lookup by prefix.
failed: random `sk-cl-` keys from one client address (the attack of issue 10 item 5): with the
failed-auth throttle, only the address's budget of them reaches PostgreSQL, the rest get 429.
--baseline REV also loads `crosslogic/auth/key_authenticator.py` as it was at git revision REV and
measures it in the same run (warm and failed, interleaved in blocks with the current code), for a
before/after on one machine state.
Uses DATABASE_URL's server (in a throw-away database) or an embedded PostgreSQL.

    .venv/bin/python benchmarks/auth_bench.py [--warm N] [--cold N] [--failed N] [--baseline REV]

Prints a summary and writes benchmarks/results/auth.json (one entry per server kind).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg

from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.errors import CrossLogicError
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


def load_baseline(rev: str) -> ModuleType:
    """`crosslogic.auth.key_authenticator` as it was at `rev`, importable beside the current one."""
    source = subprocess.run(
        ["git", "show", f"{rev}:crosslogic/auth/key_authenticator.py"],
        check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="crosslogic-bench-")) / "baseline_key_authenticator.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_key_authenticator", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def warm_run(auth: Any, headers: list[str], n: int, blocks: int) -> list[float]:
    for h in headers:
        await auth.authenticate(h, "m")  # warm every key
    misses = auth.misses
    samples: list[float] = []
    for _ in range(blocks):
        samples += await timed(n // blocks, lambda i: auth.authenticate(headers[i % len(headers)], "m"))
        await asyncio.sleep(0)
    assert auth.misses == misses, "warm run hit PostgreSQL"
    return samples


async def failed_run(auth: Any, n: int, scope: dict[str, Any] | None) -> tuple[list[float], int]:
    """n random keys from one address: latencies, and how many were not 401 (throttled: 429)."""
    bad = [f"Bearer sk-cl-{secrets.token_urlsafe(32)}" for _ in range(n)]
    throttled = 0

    async def call(i: int) -> None:
        nonlocal throttled
        try:
            if scope is None:
                await auth.authenticate(bad[i], "m")
            else:
                await auth.authenticate(bad[i], "m", asgi_scope=scope)
        except CrossLogicError as exc:
            throttled += exc.status_code == 429
        else:
            raise AssertionError("a random key authenticated")

    return await timed(n, call), throttled


async def run(warm_n: int, cold_n: int, failed_n: int, baseline_rev: str | None) -> dict[str, Any]:
    baseline = load_baseline(baseline_rev) if baseline_rev else None
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
        old = None
        if baseline is not None:
            old = baseline.KeyAuthenticator(pool, usage_flush_interval_s=3600)
            await old.start()
        results: dict[str, Any] = {}
        try:
            # Interleaved halves, so drift (other work on the machine) hits both alike.
            warm: list[float] = []
            warm_old: list[float] = []
            for _ in range(2):
                warm += await warm_run(auth, headers, warm_n // 2, 10)
                if old is not None:
                    warm_old += await warm_run(old, headers, warm_n // 2, 10)
            results["warm"] = summary(warm)
            if old is not None:
                results["baseline_warm"] = summary(warm_old)

            async def cold_call(i: int) -> object:
                auth.invalidate_all()
                return await auth.authenticate(headers[i % len(headers)], "m")

            results["cold"] = summary(await timed(cold_n, cold_call))
            client = {"type": "http", "client": ("198.51.100.1", 1), "headers": []}
            lookups = auth.lookups
            failed, throttled = await failed_run(auth, failed_n, client)
            results["failed"] = {
                **summary(failed), "throttled_429": throttled, "db_lookups": auth.lookups - lookups
            }
            if old is not None:
                misses = old.misses  # the baseline has no lookup counter: each miss was one
                failed_old, _ = await failed_run(old, failed_n, None)
                results["baseline_failed"] = {**summary(failed_old), "db_lookups": old.misses - misses}
        finally:
            await auth.close()
            if old is not None:
                await old.close()
            await pool.close()
    return {
        "benchmark": "auth",
        "what": "KeyAuthenticator.authenticate per call (header parse, sha256, cache, checks)",
        "server": server,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "baseline_rev": baseline_rev,
        **results,
        "target_warm_p50_ms": 0.1,
        "warm_target_met": results["warm"]["p50_ms"] < 0.1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warm", type=int, default=50_000, help="warm-cache calls")
    parser.add_argument("--cold", type=int, default=2_000, help="cold-cache calls")
    parser.add_argument("--failed", type=int, default=2_000, help="random keys from one address")
    parser.add_argument("--baseline", metavar="REV", help="also measure key_authenticator.py at REV")
    args = parser.parse_args()
    result = asyncio.run(run(args.warm, args.cold, args.failed, args.baseline))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # One entry per server kind, so a run against DATABASE_URL does not erase the embedded one.
    runs: dict[str, object] = {}
    if RESULTS.exists():
        runs = json.loads(RESULTS.read_text()).get("runs", {})
    runs[str(result["server"])] = result
    RESULTS.write_text(json.dumps({"benchmark": "auth", "runs": runs}, indent=2) + "\n")
    for phase in ("warm", "baseline_warm", "cold", "failed", "baseline_failed"):
        s = result.get(phase)
        if not isinstance(s, dict):
            continue
        extra = f"  db lookups {s['db_lookups']}" if "db_lookups" in s else ""
        print(f"{phase:>15}: p50 {s['p50_ms']:.4f} ms  p90 {s['p90_ms']:.4f} ms  "
              f"p99 {s['p99_ms']:.4f} ms  mean {s['mean_ms']:.4f} ms  (n={s['n']}){extra}")
    print(f"server: {result['server']}; warm p50 target < 0.1 ms met: {result['warm_target_met']}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
