"""The ingress's capacity at many engine replicas (issue 14, item 3): streamed requests/s and CPU per
request of the request path, CrossLogic beside LiteLLM's proxy, both in front of the ENGINE SIMULATOR,
in one run. A simulator benchmark: no model runs; the simulator decodes fast enough that the engines
never limit, so what is measured is the path in front of them.

Targets (`--targets`, each at every `--replicas` count it supports):
- `litellm@N`: LiteLLM's proxy (one worker, `make litellm-env`) with N deployments of one model, each
  an endpoint of `sim_http_fleet.py` (N simulator replicas in one process), LiteLLM's default routing.
- `crosslogic@N`: the stack as `serving_overhead.py` starts it (HAProxy ingress, one ingress replica,
  the limiter actor, a throw-away database) with one model of N engine-simulator Serve replicas
  (`engine.kind: simulator`, num_cpus 0) behind CrossLogic's request router (least_loaded_p2c). Each
  Serve replica is a Ray worker process: `--crosslogic-max-replicas` (64) bounds N on this machine.

Load: `--clients` concurrent streaming clients send `--requests` chat requests of `--max-tokens` tokens.
Per target: requests/s, latency p50/p99, CPU per request by process group, and the request path's CPU
per request: LiteLLM's proxy process; CrossLogic's HAProxy, Serve proxy, ingress replica, router and
limiter actors. `1000 / path_cpu_ms` is the requests/s one core of that path sustains. The routing
decision alone at 64/256 replicas is `routing_policies.py`'s (in process, virtual clock).

    python benchmarks/ingress_capacity.py --replicas 64 256
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI
from peer_targets import LITELLM_KEY, litellm_proxy
from process_probe import CLIENT, OUTSIDE, CpuAccount
from serving_overhead import closed_loop, machine_info, quantile
from serving_targets import REPO, Variant, crosslogic_target, log, server_process

from crosslogic.localstack.ray_cluster import free_port

RESULTS = Path(__file__).resolve().parent / "results" / "ingress_capacity.json"
MODEL = "sim"
# Fast enough that engines never limit: a step of a full batch takes ~1 ms.
SIMULATOR = {"prefill_tokens_per_s": 1_000_000, "decode_tokens_per_s": 1000, "decode_batch_cost": 0.0,
             "max_batch": 256}
# Process groups on each target's request path (process_probe.group_name).
PATH_GROUPS = {
    "litellm": {"litellm"},
    "crosslogic": {"haproxy", "ProxyActor", "ServeReplica:crosslogic:ingress", "RouterActor", "RateLimitActor"},
}
ENGINE_GROUPS = {"litellm": {"sim_http_fleet.py"}, "crosslogic": {"ServeReplica:crosslogic:engine-sim"}}


@contextlib.contextmanager
def litellm_target(replicas: int, workdir: Path) -> Iterator[tuple[str, str, str]]:
    tag = f"litellm-{replicas}-{os.getpid()}"
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).with_name("sim_http_fleet.py")), "--replicas", str(replicas),
           "--port", str(port), "--model", MODEL, "--settings", json.dumps(SIMULATOR)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with server_process("simulator fleet", cmd, env, workdir / "fleet.log", f"http://127.0.0.1:{port}/health", 120, tag):
        bases = [f"http://127.0.0.1:{port}/r/{i}/v1" for i in range(replicas)]
        with litellm_proxy(bases, MODEL, workdir, tag) as base_url:
            yield base_url, LITELLM_KEY, tag


@contextlib.contextmanager
def crosslogic_fleet(replicas: int, workdir: Path) -> Iterator[tuple[str, str, str]]:
    model = {"served_name": MODEL, "source": "simulated", "num_replicas": replicas, "max_ongoing_requests": 256,
             "ray_actor_options": {"num_cpus": 0}, "engine": {"kind": "simulator", "simulator": SIMULATOR}}
    with crosslogic_target(workdir, Variant(models=[model], placement=False)) as target:
        wait_replicas(target.base_url.removesuffix("/v1"), replicas)
        yield target.base_url, target.api_key, target.tag


def wait_replicas(base: str, replicas: int, timeout_s: float = 1200) -> None:
    """Until every simulator replica reports to the router (`/ready` lists one engine until then)."""
    deadline = time.monotonic() + timeout_s
    detail = ""
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            detail = httpx.get(f"{base}/ready", timeout=10).json()["dependencies"][f"engine:{MODEL}"]["detail"]
            if detail.startswith(f"{replicas} healthy"):
                return
        time.sleep(2)
    raise RuntimeError(f"only {detail!r} after {timeout_s:.0f}s")


async def load(base_url: str, api_key: str, clients: int, requests: int, max_tokens: int,
               tags: set[str]) -> dict[str, Any]:
    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": max_tokens,
            "stream": True}

    async def streamed() -> float:
        started = time.perf_counter()
        async for _ in await client.chat.completions.create(**body):  # type: ignore[call-overload]
            pass
        return time.perf_counter() - started

    for _ in range(5):  # warm-up: connections, caches, the first replica choices
        await streamed()

    cpu = CpuAccount(tags)
    started = time.perf_counter()
    latencies, errors = await closed_loop(clients, requests, streamed)
    wall = time.perf_counter() - started
    used = cpu.used()
    await client.close()
    done = max(1, len(latencies))
    return {"ok": len(latencies), "errors": len(errors), "error_examples": sorted(set(errors))[:3],
            "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 1),
            "latency_ms": {"p50": round(quantile(latencies, 0.5) * 1000, 1),
                           "p99": round(quantile(latencies, 0.99) * 1000, 1)},
            "cpu_ms_per_request": {g: round(s * 1000 / done, 2) for g, s in used.items()}}


def summarise(kind: str, result: dict[str, Any]) -> dict[str, Any]:
    per = result["cpu_ms_per_request"]
    path = sum(v for g, v in per.items() if g in PATH_GROUPS[kind])
    engines = sum(v for g, v in per.items() if g in ENGINE_GROUPS[kind])
    rest = sum(v for g, v in per.items()
               if g not in PATH_GROUPS[kind] | ENGINE_GROUPS[kind] | {CLIENT, OUTSIDE})
    return {"path_cpu_ms": round(path, 2), "engines_cpu_ms": round(engines, 2), "background_cpu_ms": round(rest, 2),
            "client_cpu_ms": per.get(CLIENT, 0.0), "path_requests_per_core_s": round(1000 / path, 1) if path else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--targets", nargs="+", default=["litellm", "crosslogic"], choices=["litellm", "crosslogic"])
    parser.add_argument("--crosslogic-max-replicas", type=int, default=64,
                        help="each CrossLogic replica is a Ray worker process: larger counts are skipped")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="clcap-"))
    results: dict[str, Any] = {}
    started = time.monotonic()
    try:
        for replicas in args.replicas:
            for kind in args.targets:
                if kind == "crosslogic" and replicas > args.crosslogic_max_replicas:
                    log(f"crosslogic@{replicas}: skipped (over --crosslogic-max-replicas)")
                    continue
                name = f"{kind}@{replicas}"
                where = workdir / name
                where.mkdir()
                target = litellm_target if kind == "litellm" else crosslogic_fleet
                log(f"{name}: starting")
                with target(replicas, where) as (base_url, api_key, tag):
                    log(f"{name}: {args.clients} clients, {args.requests} requests")
                    result = asyncio.run(load(base_url, api_key, args.clients, args.requests, args.max_tokens, {tag}))
                result["summary"] = summarise(kind, result)
                results[name] = result
                log(f"{name}: {result['requests_per_s']} req/s, {result['summary']}, errors {result['errors']}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = {"benchmark": "ingress_capacity", "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "duration_s": round(time.monotonic() - started, 1), "machine": machine_info(),
           "settings": {**{k: v for k, v in vars(args).items() if k != "output"}, "simulator": SIMULATOR},
           "results": results}
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'target':<18}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'path CPU ms':>13}{'req/core-s':>12}"
          f"{'engines ms':>12}{'errors':>8}")
    for name, r in results.items():
        s = r["summary"]
        print(f"{name:<18}{r['requests_per_s']:>8}{r['latency_ms']['p50']:>9}{r['latency_ms']['p99']:>9}"
              f"{s['path_cpu_ms']:>13}{s['path_requests_per_core_s'] or '-':>12}{s['engines_cpu_ms']:>12}{r['errors']:>8}")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
