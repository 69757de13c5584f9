"""What tracing costs per /v1 request, off (the default) and on (crosslogic/tracing).

(i)  The instrumentation alone, no app: the calls one streamed request makes on its trace (stages,
     one engine call, settle) and, traced, the root span from a client's traceparent, the ingress's
     8 spans and the engine's `engine.generate` over 16 events, exported by the batch span processor
     over OTLP/HTTP to a strict receiver (tests/otlp_receiver.py) in another process. Variants:
     no tracing code at all (the same work without a trace call), off (the null trace), on and not
     sampled (ratio 0, no traceparent: middleware + root decision), on and sampled (export included:
     each round ends with a flush).
(ii) The in-process /v1 app (tests/unit/api/scripted_api.py: key auth on PostgreSQL, in-memory limiter,
     scripted engines streaming 3 tokens after 10 ms) driven through httpx's ASGI transport: streamed
     chats, variants interleaved round by round; median latency and the median round's CPU per
     request (this process: app, client and exporter thread; the sampled round includes its flush).
     The ingress's 8 spans only (the scripted engines do not trace). Needs DATABASE_URL (a database
     of its own is created, migrated and dropped).

CPU figures (time.process_time) hold better than wall times on a shared machine; both are printed.

`python benchmarks/tracing_overhead.py [--no-app]`; writes benchmarks/results/tracing_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # tests.* helpers (the receiver, the scripted app)

from asgi_stubs import empty_request, null_send, null_settle, per_call_us  # noqa: E402

from crosslogic.engine.base import CHUNK, USAGE, EngineEvent  # noqa: E402
from crosslogic.routing.hints import RoutingHints  # noqa: E402
from crosslogic.tracing.config import TracingConfig  # noqa: E402
from crosslogic.tracing.engine_span import traced_generate  # noqa: E402
from crosslogic.tracing.middleware import TracingMiddleware  # noqa: E402
from crosslogic.tracing.provider import Tracing, start_tracing  # noqa: E402
from crosslogic.tracing.request_trace import request_trace  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results", "tracing_overhead.json")
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
EVENTS: list[EngineEvent] = [
    *[(CHUNK, 'data: {"n":1}\n\n', {"prompt_tokens": 9, "completion_tokens": n}) for n in range(1, 16)],
    (CHUNK, "data: [DONE]\n\n", {"prompt_tokens": 9, "completion_tokens": 15}),
    (USAGE, {"prompt_tokens": 9, "completion_tokens": 15}),
]


class _Decided:
    overlapped = False

    def when_decided(self, callback: Callable[[BaseException | None], None]) -> None:
        callback(None)


class _Outcome:
    status, prompt_tokens, completion_tokens = "finished", 9, 15


async def _engine_events() -> AsyncIterator[EngineEvent]:
    for event in EVENTS:
        yield event


async def _request_app(scope: dict[str, Any], receive: Any, send: Any, tracing: Tracing | None) -> None:
    """What the endpoint, the relay and the engine replica do with one streamed request's trace."""
    trace = request_trace(scope)
    with trace.stage("auth"):
        pass
    trace.identify("tenant", "smollm2-135m", "chat", True)
    admitting = trace.start("admission")
    trace.decided(admitting, _Decided())
    hints = RoutingHints()
    trace.dispatched(hints, 1)
    hints.routed("replica-1")
    events: AsyncIterator[EngineEvent] = _engine_events()
    if tracing is not None:  # the engine replica's side (in its own process in production)
        events = traced_generate(tracing.tracer, events, hints.trace_context, request_id="req_1",
                                 model="smollm2-135m", endpoint="chat", replica="replica-1")
    trace.first_event(False)
    trace.relaying(True)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"req_1")]})
    async for _ in events:
        pass
    trace.finished(_Outcome())
    await trace.settling(null_settle)(_Outcome())
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _untraced_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """`_request_app` without a single tracing call: the code before tracing existed."""
    hints = RoutingHints()
    hints.chosen = "replica-1"
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"req_1")]})
    async for _ in _engine_events():
        pass
    await null_settle(_Outcome())
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _scope(traceparent: bool) -> dict[str, Any]:
    headers = [(b"traceparent", TRACEPARENT)] if traceparent else []
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}


async def bench_instrumentation(calls: int, endpoint: str) -> dict[str, Any]:
    async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _request_app(scope, receive, send, None)

    # A queue that never fills: every span is exported, and its export counted (flushed in the round).
    big = {"enabled": True, "endpoint": endpoint, "batch_delay_s": 0.5, "max_queue_size": 100_000}
    sampled = start_tracing(TracingConfig(**big), "ingress")
    unsampled = start_tracing(TracingConfig(**big, sample_ratio=0.0), "ingress")
    engine = start_tracing(TracingConfig(**big), "engine")
    assert sampled and unsampled and engine

    async def engine_traced(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await _request_app(scope, receive, send, engine)

    variants: dict[str, tuple[Any, bool]] = {
        "no_tracing_code": (_untraced_app, True),
        "off": (bare, True),  # tracing off: no middleware, the null trace (a traceparent is ignored)
        "on_not_sampled": (TracingMiddleware(bare, tracer=unsampled.tracer), False),
        "on_sampled": (TracingMiddleware(engine_traced, tracer=sampled.tracer), True),
    }

    async def round_(app: Any, traceparent: bool) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(calls):
            await app(_scope(traceparent), empty_request, null_send)
        for tracing in (sampled, engine):
            assert tracing.force_flush(60)  # the export (background thread) belongs to the cost
        return time.perf_counter() - wall, time.process_time() - cpu

    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(5):  # interleaved rounds
        for name, (app, traceparent) in variants.items():
            runs[name].append(await round_(app, traceparent))
    out: dict[str, Any] = {}
    for name, r in runs.items():
        out[f"{name}_wall_us"] = per_call_us(statistics.median(w for w, _ in r), calls)
        out[f"{name}_cpu_us"] = per_call_us(statistics.median(c for _, c in r), calls)
    # What the tracing code costs with tracing off: the null trace's calls, against none at all.
    out["off_minus_no_tracing_code_cpu_us"] = round(out["off_cpu_us"] - out["no_tracing_code_cpu_us"], 3)
    for name in ("on_not_sampled", "on_sampled"):
        out[f"{name}_minus_off_cpu_us"] = round(out[f"{name}_cpu_us"] - out["off_cpu_us"], 3)
    for tracing in (sampled, unsampled, engine):
        tracing.shutdown()
    out["spans_per_sampled_request"] = 9
    out["spans_expected"] = 9 * calls * 5
    return out


async def bench_app(requests: int, rounds: int, endpoint: str) -> dict[str, Any]:
    import asyncpg

    from crosslogic.storage.migrations import apply_migrations
    from crosslogic.storage.pool import dsn_with_database
    from tests.unit.api.scripted_api import ScriptedGateway, scripted_api

    # A database of its own, migrated, dropped at the end (as the tests' conftest does).
    server, name = os.environ["DATABASE_URL"], f"crosslogic_bench_{os.getpid()}"
    admin = await asyncpg.connect(dsn_with_database(server, "postgres"))
    await admin.execute(f'CREATE DATABASE "{name}"')
    conn = await asyncpg.connect(dsn_with_database(server, name))
    await apply_migrations(conn)
    await conn.close()
    pool = await asyncpg.create_pool(dsn_with_database(server, name), min_size=1, max_size=4)
    body = {"model": "chat-m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    configs = {
        "off": None,
        "on_not_sampled": TracingConfig(enabled=True, endpoint=endpoint, sample_ratio=0.0),
        "on_sampled": TracingConfig(enabled=True, endpoint=endpoint, batch_delay_s=0.5),
    }
    timings: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    # Not sampled: ratio 0 and no traceparent; off and sampled get a client's sampled traceparent.
    sends_traceparent = {"off": True, "on_not_sampled": False, "on_sampled": True}
    try:
        apps = {}
        stacks = []
        for name, config in configs.items():
            tracing = start_tracing(config, "ingress") if config is not None else None
            context = scripted_api(pool, ScriptedGateway(["chat-m"]), tracer=tracing.tracer if tracing else None)
            apps[name] = (await context.__aenter__(), tracing)
            stacks.append(context)
        for _ in range(rounds):
            for name, (api, tracing) in apps.items():
                headers = {"authorization": f"Bearer {api.secret}"}
                if sends_traceparent[name]:
                    headers["traceparent"] = TRACEPARENT.decode()
                cpu_started = time.process_time()
                for _ in range(requests):
                    started = time.perf_counter()
                    async with api.client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                        await r.aread()
                    timings[name].append(time.perf_counter() - started)
                    assert r.status_code == 200
                if tracing is not None:
                    assert tracing.force_flush(60)  # its export is part of its cost
                cpu[name].append((time.process_time() - cpu_started) / requests)
        for _api, tracing in apps.values():
            if tracing is not None:
                tracing.shutdown()
        for context in stacks:
            await context.__aexit__(None, None, None)
    finally:
        await pool.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    out: dict[str, Any] = {"requests_per_variant": requests * rounds}
    for name, values in timings.items():
        out[f"{name}_p50_ms"] = round(statistics.median(values) * 1000, 4)
        out[f"{name}_mean_ms"] = round(statistics.fmean(values) * 1000, 4)
    for name, per_round in cpu.items():  # the median round's CPU per request
        out[f"{name}_cpu_us_per_request"] = round(statistics.median(per_round) * 1e6, 1)
    for name in ("on_not_sampled", "on_sampled"):
        out[f"{name}_minus_off_cpu_us"] = round(out[f"{name}_cpu_us_per_request"] - out["off_cpu_us_per_request"], 1)
    out["on_sampled_minus_off_p50_us"] = round((out["on_sampled_p50_ms"] - out["off_p50_ms"]) * 1000, 1)
    out["on_not_sampled_minus_off_p50_us"] = round((out["on_not_sampled_p50_ms"] - out["off_p50_ms"]) * 1000, 1)
    return out


def _start_receiver() -> tuple[subprocess.Popen[str], str]:
    code = (f"import sys, time; sys.path.insert(0, {REPO!r}); from tests.otlp_receiver import OtlpReceiver; "
            "r = OtlpReceiver(); print(r.start(), flush=True); sys.stdin.read(); "
            "print(len(r.spans()), len(r.rejected), flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=200, help="per variant and round (ii)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--no-app", action="store_true", help="only (i), no PostgreSQL")
    args = parser.parse_args()
    receiver, endpoint = _start_receiver()
    try:
        result: dict[str, Any] = {"machine": platform.platform(), "cpus": os.cpu_count(), "calls": args.calls,
                                  "instrumentation": asyncio.run(bench_instrumentation(args.calls, endpoint))}
        if not args.no_app:
            result["app"] = asyncio.run(bench_app(args.requests, args.rounds, endpoint))
    finally:
        received, rejected = receiver.communicate("", timeout=60)[0].split()
    result["receiver"] = {"spans": int(received), "rejected": int(rejected)}
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
