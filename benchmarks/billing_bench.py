"""Billing: hot-path cost of recording usage, ledger write rate, export rate, outage catch-up.

1. enqueue: `UsageRecorder.record()` per call (what the request path pays), and building the record.
2. ledger: rows/s the background flusher batch-inserts into PostgreSQL.
3. export: meter events/s from outbox to the local Stripe-protocol server (same process, so the
   server's own CPU is included: a lower bound on what the exporter does against Stripe).
4. catch-up: a 10-minute Stripe outage with steady traffic, simulated by its backlog (the ledger
   rows and the outbox batches the exporter would have aggregated every `interval_s` while every
   send failed), then the time to drain it once Stripe answers again.

    .venv/bin/python benchmarks/billing_bench.py [--enqueue N] [--tenants T] [--rps R]

Uses DATABASE_URL's server (in a throw-away database) or an embedded PostgreSQL. Prints a summary
and writes benchmarks/results/billing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from billing import outbox
from billing.config import BillingConfig
from billing.exporter import MeterExporter
from billing.stripe_sender import StripeMeterSender
from crosslogic.metering import UsageRecord, UsageRecorder, UsageStatus
from tests.stripe_server import StripeTestServer

# The throw-away database (DATABASE_URL's server or embedded) exactly as the auth benchmark makes it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from auth_bench import bench_database

RESULTS = Path(__file__).parent / "results" / "billing.json"
API_KEY = "sk_test_bench_" + "b" * 24
METERS = ("bench_input_tokens", "bench_output_tokens")


def record_for(tenant: uuid.UUID, i: int, at: datetime | None = None) -> UsageRecord:
    return UsageRecord(
        request_id=f"bench-{tenant.hex[:8]}-{i}-{uuid.uuid4().hex[:6]}", tenant_id=tenant,
        model="bench-model", prompt_tokens=100 + i % 50, completion_tokens=20 + i % 7,
        status=UsageStatus.FINISHED, key_id=tenant, region="local", queue_ms=1.0, ttft_ms=10.0,
        total_ms=100.0, created_at=at or datetime.now(UTC),
    )


def percentiles_ns(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda p: ordered[min(len(ordered) - 1, int(p * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50_ns": pick(0.5), "p99_ns": pick(0.99),
            "mean_ns": round(sum(ordered) / len(ordered), 1)}


def bench_enqueue(pool: asyncpg.Pool, n: int) -> dict[str, object]:
    recorder = UsageRecorder(pool, max_buffer=n + 1)  # not started: measure the enqueue alone
    tenant = uuid.uuid4()
    records = [record_for(tenant, i) for i in range(n)]
    record_ns = []
    for r in records:
        t0 = time.perf_counter_ns()
        recorder.record(r)
        record_ns.append(time.perf_counter_ns() - t0)
    build_ns = []
    at = datetime.now(UTC)
    for i in range(min(n, 50_000)):
        rid = f"req-{i}"
        t0 = time.perf_counter_ns()
        UsageRecord(request_id=rid, tenant_id=tenant, model="m", prompt_tokens=i,
                    completion_tokens=i, status=UsageStatus.FINISHED, key_id=tenant,
                    region="local", queue_ms=1.0, ttft_ms=2.0, total_ms=3.0, created_at=at)
        build_ns.append(time.perf_counter_ns() - t0)
    return {"record_call": percentiles_ns(record_ns), "build_record": percentiles_ns(build_ns)}


async def bench_ledger(pool: asyncpg.Pool, tenants: list[uuid.UUID], rows: int) -> dict[str, object]:
    recorder = UsageRecorder(pool, max_buffer=rows + 1, batch_size=1000)
    for i in range(rows):
        recorder.record(record_for(tenants[i % len(tenants)], i))
    t0 = time.perf_counter()
    await recorder.flush()
    elapsed = time.perf_counter() - t0
    return {"rows": rows, "seconds": round(elapsed, 3), "rows_per_s": round(rows / elapsed)}


async def drain(exporter: MeterExporter, pool: asyncpg.Pool) -> tuple[float, int]:
    t0 = time.perf_counter()
    delivered = 0
    while True:
        report = await exporter.run_cycle()
        delivered += report.delivered
        left = await pool.fetchval("SELECT count(*) FROM billing_outbox WHERE status = 'pending'")
        if left == 0:
            return time.perf_counter() - t0, delivered


async def bench_export(
    pool: asyncpg.Pool, config: BillingConfig, tenants: list[uuid.UUID], hours: int
) -> dict[str, object]:
    # One ledger row per tenant and hour -> 2 events each (input and output meters).
    recorder = UsageRecorder(pool, max_buffer=10**7)
    base = datetime.now(UTC) - timedelta(hours=hours)
    for h in range(hours):
        for i, t in enumerate(tenants):
            recorder.record(record_for(t, i, base + timedelta(hours=h)))
    await recorder.flush()
    await outbox.aggregate_ledger(pool, 10**6)
    sender = StripeMeterSender(config)
    elapsed, delivered = await drain(MeterExporter(pool, config, sender), pool)
    await sender.aclose()
    return {"events": delivered, "seconds": round(elapsed, 3),
            "events_per_s": round(delivered / elapsed), "send_concurrency": config.send_concurrency}


async def bench_catch_up(
    pool: asyncpg.Pool, config: BillingConfig, tenants: list[uuid.UUID], rps: int,
    outage_s: int = 600, interval_s: int = 30,
) -> dict[str, object]:
    start = datetime.now(UTC) - timedelta(seconds=outage_s)
    recorder = UsageRecorder(pool, max_buffer=10**7, batch_size=2000)
    batches = 0
    i = 0
    for slot in range(outage_s // interval_s):
        for s in range(interval_s * rps):
            at = start + timedelta(seconds=slot * interval_s + s / rps)
            recorder.record(record_for(tenants[i % len(tenants)], i, at))
            i += 1
        await recorder.flush()
        await outbox.aggregate_ledger(pool, 10**6)  # the exporter kept aggregating; sends failed
        batches += 1
    backlog = await pool.fetchval("SELECT count(*) FROM billing_outbox WHERE status = 'pending'")
    sender = StripeMeterSender(config)
    elapsed, delivered = await drain(MeterExporter(pool, config, sender), pool)
    await sender.aclose()
    return {"outage_s": outage_s, "requests_during_outage": i, "request_rate_per_s": rps,
            "tenants": len(tenants), "aggregation_interval_s": interval_s, "batches": batches,
            "backlog_events": backlog, "delivered": delivered, "catch_up_s": round(elapsed, 3)}


async def main(args: argparse.Namespace) -> dict[str, object]:
    async with bench_database() as (dsn, server_kind):
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=8)
        assert pool is not None
        tenants = [uuid.uuid4() for _ in range(args.tenants)]
        server = StripeTestServer(API_KEY, meters=set(METERS))
        for t in tenants:
            customer = f"cus_{t.hex[:14]}"
            server.customers.add(customer)
            await pool.execute("INSERT INTO tenants (id, name, stripe_customer_id) VALUES ($1, $2, $3)",
                               t, f"bench-{t.hex[:8]}", customer)
        base = await server.start()
        config = BillingConfig(enabled=True, stripe_api_key=API_KEY, stripe_api_base=base,
                               webhook_secret="whsec_bench", input_meter_event=METERS[0],
                               output_meter_event=METERS[1], claim_batch=500)
        try:
            result = {
                "benchmark": "billing", "server": server_kind, "python": platform.python_version(),
                "machine": platform.machine(), "cpus": os.cpu_count(),
                "enqueue": bench_enqueue(pool, args.enqueue),
                "ledger_write": await bench_ledger(pool, tenants, args.ledger_rows),
            }
            await pool.execute("TRUNCATE usage_ledger, billing_outbox")
            result["export"] = await bench_export(pool, config, tenants, hours=10)
            await pool.execute("TRUNCATE usage_ledger, billing_outbox")
            result["catch_up_after_10min_outage"] = await bench_catch_up(pool, config, tenants, args.rps)
            result["stripe_server_calls"] = dict(server.calls)
        finally:
            await server.stop()
            await pool.close()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--enqueue", type=int, default=200_000)
    parser.add_argument("--ledger-rows", type=int, default=50_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--rps", type=int, default=50)
    result = asyncio.run(main(parser.parse_args()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
