"""The floor under CrossLogic's serving overhead: Ray Serve's own cost for the same topology, no engine.

`serving_overhead.py` measures CrossLogic against bare vLLM; this isolates what the Ray Serve
topology alone costs on this machine, with a stand-in engine that yields its chunks instantly:

  plain  : one uvicorn + FastAPI process streaming the chunks itself (what vLLM's server does);
  serve  : Serve's HTTP proxy -> a FastAPI ingress deployment -> a streaming handle call to an
           "engine" deployment (CrossLogic's shape: two Ray hops per chunk);
  serve_haproxy : CrossLogic's default shape: HAProxy -> the ingress replica's own uvicorn ("direct
           ingress") -> a streaming handle call to the engine deployment (one Ray hop per chunk);
  serve_grpc : the same topology with Serve's gRPC transport on both hops (the proxy with
           RAY_SERVE_PROXY_USE_GRPC=1, the ingress's handle with `_by_reference=False`) instead of
           Ray actor calls with one object per streamed item.

Sequential requests; per target: GET /health latency, time to the first streamed chunk, what each
further chunk adds beyond the pacing (chunks come `--pace-ms` apart, like decode steps, so none are
batched), and CPU milliseconds per chunk over every process of the target.

    .venv/bin/python benchmarks/serve_floor.py [--requests 200] [--chunks 64]

Prints a table and writes benchmarks/results/serve_floor.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from process_probe import CLIENT, OUTSIDE, TAG, CpuAccount

from crosslogic.localstack.ray_cluster import free_port

RESULTS = Path(__file__).resolve().parent / "results" / "serve_floor.json"
# The size of one of vLLM's chat chunks for one token.
CHUNK = "data: " + json.dumps({"id": "chatcmpl-x" * 3, "object": "chat.completion.chunk", "created": 0,
                               "model": "smollm2-135m", "choices": [{"index": 0, "delta": {"content": " word"}}]}) + "\n\n"


async def paced_chunks(n: int, pace_ms: float) -> AsyncIterator[str]:
    """n chunks, one every `pace_ms` like decode steps (the first at once): none can be batched."""
    for i in range(n):
        if i and pace_ms:
            await asyncio.sleep(pace_ms / 1000)
        yield CHUNK


def build_fastapi() -> Any:
    """The app both targets serve; `stream` yields CHUNK `n` times (from `app.state.source` when set)."""
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse

    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stream")
    async def stream(n: int, pace_ms: float) -> StreamingResponse:
        source = app.state.source(n, pace_ms) if hasattr(app.state, "source") else paced_chunks(n, pace_ms)
        return StreamingResponse(source, media_type="text/event-stream")

    return app


async def measure(base: str, args: argparse.Namespace, tags: set[str]) -> dict[str, Any]:
    requests, chunks = args.requests, args.chunks
    params = {"n": chunks, "pace_ms": args.pace_ms}
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(20):  # warm-up: connections, code paths
            await http.get(f"{base}/health")
            async with http.stream("GET", f"{base}/stream", params={**params, "pace_ms": 0}) as r:
                async for _ in r.aiter_raw():
                    pass
        health = []
        for _ in range(requests):
            started = time.perf_counter()
            (await http.get(f"{base}/health")).raise_for_status()
            health.append((time.perf_counter() - started) * 1000)
        # Background CPU (controller, GCS, metrics) is not per chunk: measured idle and subtracted.
        idle = CpuAccount(tags)
        await asyncio.sleep(args.idle_s)
        idle_cores = sum(v for g, v in idle.used().items() if g not in (OUTSIDE, CLIENT)) / args.idle_s
        first, per_chunk = [], []
        cpu = CpuAccount(tags)
        streaming_started = time.perf_counter()
        for _ in range(args.stream_requests):
            started = time.perf_counter()
            first_at = None
            received = 0
            async with http.stream("GET", f"{base}/stream", params=params) as r:
                async for part in r.aiter_raw():
                    first_at = first_at or time.perf_counter()
                    received += part.count(b"data: ")
            done = time.perf_counter()
            assert received == chunks, received
            assert first_at is not None
            first.append((first_at - started) * 1000)
            # Beyond the pacing: what each further chunk adds on its way to the client.
            per_chunk.append((done - first_at) * 1000 / max(chunks - 1, 1) - args.pace_ms)
        used = cpu.used()
        elapsed = time.perf_counter() - streaming_started
    serving_cpu = sum(v for g, v in used.items() if g not in (OUTSIDE, CLIENT)) - idle_cores * elapsed

    def p(values: list[float], q: float) -> float:
        return round(sorted(values)[min(len(values) - 1, int(len(values) * q))], 3)

    return {
        "health_ms": {"p50": p(health, 0.5), "p99": p(health, 0.99)},
        "first_chunk_ms": {"p50": p(first, 0.5), "p99": p(first, 0.99)},
        "per_further_chunk_added_ms": {"p50": p(per_chunk, 0.5), "p99": p(per_chunk, 0.99)},
        "server_cpu_ms_per_chunk": round(serving_cpu * 1000 / (args.stream_requests * chunks), 4),
        "cpu_s_by_process": used,
        "idle_cpu_cores": round(idle_cores, 4),
    }


def run_plain(args: argparse.Namespace, tag: str) -> dict[str, Any]:
    port = free_port()
    code = (
        f"import sys, uvicorn; sys.path.insert(0, {str(Path(__file__).parent)!r}); import serve_floor as f; "
        f"uvicorn.run(f.build_fastapi(), host='127.0.0.1', port={port:d}, log_level='warning')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, TAG: tag})
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(f"{base}/health", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        return asyncio.run(measure(base, args, {tag}))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_serve(args: argparse.Namespace, tag: str, grpc: bool = False, haproxy: bool = False) -> dict[str, Any]:
    # Read by every Serve process at import: set before the cluster (and its workers) start.
    os.environ["RAY_SERVE_PROXY_USE_GRPC"] = "1" if grpc else "0"
    from crosslogic.localstack.ray_cluster import haproxy_env

    ingress_env = haproxy_env() if haproxy else {}
    os.environ.update(ingress_env)
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", TAG: tag})
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Engine:
        async def generate(self, n: int, pace_ms: float) -> AsyncIterator[str]:
            async for chunk in paced_chunks(n, pace_ms):
                yield chunk

    app = build_fastapi()

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    @serve.ingress(app)
    class Ingress:
        def __init__(self, engine: Any) -> None:
            handle = engine.options(stream=True, _by_reference=not grpc)
            app.state.source = lambda n, pace_ms: handle.generate.remote(n, pace_ms)

    # address="local" starts a fresh head; its GCS takes a random free port (never 6379).
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             namespace=f"serve-floor-{uuid.uuid4().hex[:6]}", log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Ingress.bind(Engine.bind()), name="floor", route_prefix="/")
        return asyncio.run(measure(f"http://127.0.0.1:{port}", args, {tag}))
    finally:
        serve.shutdown()
        ray.shutdown()
        for key in ingress_env:
            os.environ.pop(key, None)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # Ctrl-C must reach the finally blocks that stop the server and Ray (asyncio.run's own handler
    # only cancels a task, which the HTTP client may swallow).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per measurement")
    parser.add_argument("--chunks", type=int, default=64, help="chunks per streamed response (one per token)")
    parser.add_argument("--stream-requests", type=int, default=30, help="sequential streamed requests")
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle CPU measurement, subtracted")
    parser.add_argument("--pace-ms", type=float, default=10.0, help="time between chunks, like a decode step")
    parser.add_argument("--targets", nargs="+", default=["plain", "serve", "serve_haproxy", "serve_grpc"],
                        choices=["plain", "serve", "serve_haproxy", "serve_grpc"])
    args = parser.parse_args()
    runners = {
        "plain": lambda: run_plain(args, f"floor-{uuid.uuid4().hex}"),
        "serve": lambda: run_serve(args, f"floor-{uuid.uuid4().hex}"),
        "serve_haproxy": lambda: run_serve(args, f"floor-{uuid.uuid4().hex}", haproxy=True),
        "serve_grpc": lambda: run_serve(args, f"floor-{uuid.uuid4().hex}", grpc=True),
    }
    results = {name: runners[name]() for name in args.targets}
    print(f"{'':13s} {'health p50':>11s} {'1st chunk p50':>14s} {'+ per chunk p50':>15s} {'server CPU/chunk':>17s}")
    for name, r in results.items():
        print(f"{name:13s} {r['health_ms']['p50']:9.2f}ms {r['first_chunk_ms']['p50']:12.2f}ms "
              f"{r['per_further_chunk_added_ms']['p50']:13.3f}ms {r['server_cpu_ms_per_chunk']:15.3f}ms")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("w") as out:
        json.dump({"benchmark": "serve_floor", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                               "load_avg_1m": round(os.getloadavg()[0], 2)},
                   "params": vars(args), "results": results}, out, indent=2)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
