"""Serving overhead: the same streaming chat workload against bare vLLM and against CrossLogic.

In one run, one target after the other (never two engines at once: the machine has 2 cores):
  (a) vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`) on the prepared
      SmolLM2 directory, with the engine settings of serve_config.yaml;
  (b) CrossLogic: a local Ray head, a variant of serve_config.yaml (the chat model only, one replica,
      a free HTTP port), PostgreSQL (DATABASE_URL's server, else 127.0.0.1:5432, else embedded) with a
      throw-away database, and an API key from `ensure_dev_key` kept in a temp dir.
Each target is warmed up, then every concurrency level runs a fixed number of streaming chat requests
with a fixed prompt and exactly `--max-tokens` output tokens (`ignore_eos`), through the official
`openai` client. Per level: TTFT and request latency p50/p99, aggregate output tokens/s, and the CPU
seconds each process group used (where the 2 cores went). Per target also: idle CPU, and sequential
fixed costs (GET /health, GET /v1/models, a 1-token chat). `--targets` adds variants (see VARIANTS:
Serve's throughput mode, vLLM's stream_interval, Redis rate limits); `--profile` adds py-spy profiles.

    .venv/bin/python benchmarks/serving_overhead.py [--levels 1 8 16] [--rounds 4] [--max-tokens 64]
    .venv/bin/python benchmarks/serving_overhead.py --targets bare_vllm crosslogic crosslogic_stream4

Prints a side-by-side table and writes benchmarks/results/serving_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
from openai import AsyncOpenAI
from peer_targets import LITELLM_KEY, litellm_proxy
from process_probe import CLIENT, OUTSIDE, CpuAccount, Profiler, find_processes
from serving_targets import ENGINE_ENV, MODEL, REPO, Variant, bare_vllm, bench_dtype, crosslogic_target, log

from crosslogic.api.timing import parse_server_timing
from crosslogic.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results" / "serving_overhead.json"
# Processes profiled with --profile: the serving path of each target (vLLM's worker is torch compute).
PROFILED = {"vllm api_server", "VLLM::EngineCore", "ProxyActor", "ServeReplica:crosslogic:ingress",
            f"ServeReplica:crosslogic:engine-{MODEL}"}
# CrossLogic as deployed (HAProxy ingress, see crosslogic/localstack/ray_cluster.py; Ray's processes
# off the engine worker's cores, see crosslogic/localstack/cpu_placement.py); without that placement;
# with Serve's ProxyActor ingress instead (every ASGI message a pickled Ray call to the ingress
# replica); with Ray Serve's throughput-optimised mode (gRPC between handles and replicas, user code
# and router on the replica's main loop, buffered request logs, frozen GC); and with vLLM's
# `stream_interval` (a chunk every N tokens; the first token still goes out alone, so TTFT is kept),
# which divides the messages crossing the Ray hop per token by N.
_TUNED_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
VARIANTS: dict[str, Variant] = {
    "crosslogic": Variant(),
    "crosslogic_unplaced": Variant(placement=False),
    "crosslogic_proxy": Variant(ray_env={"CROSSLOGIC_SERVE_INGRESS": "proxy"}),
    "crosslogic_tuned": Variant(ray_env=_TUNED_ENV),
    # Only the two loop hops of the throughput-optimised mode: user code on the replica's main loop,
    # and the handle's router on the caller's loop (no thread crossing per request and message).
    "crosslogic_sameloop": Variant(ray_env={"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
                                            "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}),
    # The engine transport: Ray actor calls and the object store (Serve's default) instead of our
    # default gRPC (`ingress.engine_transport`); and gRPC for every handle of the cluster (Serve's env).
    "crosslogic_raycalls": Variant(ingress={"engine_transport": "ray"}),
    "crosslogic_grpc_env": Variant(ray_env={"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"}, ingress={"engine_transport": "ray"}),
    # Ray's workers (replicas, HAProxy, vLLM's processes) at nice 0 like Ray's daemons, not Ray's 15.
    "crosslogic_nice0": Variant(ray_env={"RAY_worker_niceness": "0"}),
    # Serve's controller reconciling every 0.5 s instead of 0.1 s (its share of the idle stack's CPU).
    "crosslogic_ctl500": Variant(ray_env={"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5"}),
    "crosslogic_stream4": Variant(engine_kwargs={"stream_interval": 4}),
    "crosslogic_tuned_stream4": Variant(ray_env=_TUNED_ENV, engine_kwargs={"stream_interval": 4}),
    # Rate limits in Redis instead of the in-cluster actor (admission and settle are on the request path).
    # Admission alongside the engine call for keys with room (`limits.overlap_admission`, off by default).
    "crosslogic_overlap_admit": Variant(limits={"overlap_admission": True}),
    # The in-cluster limiter through Ray actor calls instead of its stream (`limits.actor_stream`).
    "crosslogic_actor_raycalls": Variant(limits={"actor_stream": False}),
    "crosslogic_redis": Variant(ray_env={"REDIS_URL": os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"}),
    "crosslogic_redis_overlap_admit": Variant(ray_env={"REDIS_URL": os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"},
                                              limits={"overlap_admission": True}),
}
# Bare vLLM targets: result key -> stream interval. Each CrossLogic variant is compared with the
# bare server of the same stream interval when that one ran, else with plain bare vLLM.
BARE = {"bare_vllm": 1, "bare_vllm_stream4": 4}
# Peers in front of bare vLLM (benchmarks/peer_targets.py), compared with bare vLLM as CrossLogic is.
PEERS = ("litellm",)
# The engine's own processes: its compute (and CPU worker polling) is the same behind every target.
ENGINE_PROCESSES = frozenset({"VLLM::Worker", "VLLM::EngineCore"})
# The processes a request passes through besides the engine's: vLLM's OpenAI server, LiteLLM's proxy,
# CrossLogic's HAProxy, ingress and engine replicas (whose AsyncLLM front end does what vLLM's server
# does) and its limiter; Serve's ProxyActor in the proxy-ingress variant. Everything else a target
# runs (Ray's controller, GCS, raylet, dashboard, log monitor, router actor) is background.
SERVING_PATH = frozenset({"vllm api_server", "litellm", "haproxy", "RateLimitActor", "ProxyActor"})
SERVING_PATH_PREFIX = "ServeReplica:"
PROMPT = (
    "You are helping plan a small vegetable garden. List the vegetables that grow well in partial shade, "
    "explain how often each should be watered, and suggest which ones can share a bed. Keep the answer short."
)


# -- the workload ---------------------------------------------------------------------------------


@dataclass
class Sample:
    ttft_s: float
    latency_s: float
    output_tokens: int
    # CrossLogic's Server-Timing stages (ms) of this request, plus `outside`: the client's TTFT
    # minus the ingress's `total` (HTTP server, ingress proxy, client). Empty for bare vLLM.
    stages: dict[str, float]
    # The region that served it (CrossLogic's x-crosslogic-region); "" for bare vLLM and peers.
    region: str = ""


async def one_request(client: AsyncOpenAI, max_tokens: int, headers: dict[str, str] | None = None) -> Sample:
    """One streamed chat request (`headers`: extra request headers, e.g. a region preference)."""
    started = time.perf_counter()
    ttft: float | None = None
    tokens = 0
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens,
        temperature=0.0, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        extra_headers=headers,
    )
    stages = parse_server_timing(stream.response.headers.get("server-timing", ""))
    async for chunk in stream:
        # As vLLM's own `bench serve`: the first chunk carrying a choice is the first token.
        if ttft is None and chunk.choices:
            ttft = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    latency = time.perf_counter() - started
    ttft = ttft if ttft is not None else latency
    if "total" in stages:
        stages["outside"] = ttft * 1000 - stages["total"]
    return Sample(ttft_s=ttft, latency_s=latency, output_tokens=tokens, stages=stages,
                  region=stream.response.headers.get("x-crosslogic-region", ""))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


T = TypeVar("T")


async def closed_loop(concurrency: int, total: int, call: Callable[[], Awaitable[T]]) -> tuple[list[T], list[str]]:
    """`total` awaits of `call` by `concurrency` clients, each starting its next when its last ended:
    (results, errors). A failed call is counted and shown, never the end of the run."""
    left = total
    results: list[T] = []
    errors: list[str] = []

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            try:
                results.append(await call())
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results, errors


async def run_level(client: AsyncOpenAI, concurrency: int, total: int, max_tokens: int, tags: set[str]) -> dict[str, Any]:
    cpu = CpuAccount(tags)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    samples, errors = await closed_loop(concurrency, total, lambda: one_request(client, max_tokens))
    wall = time.perf_counter() - started
    ttft = [s.ttft_s * 1000 for s in samples]
    latency = [s.latency_s * 1000 for s in samples]
    tokens = sum(s.output_tokens for s in samples)
    stage_names = sorted({name for s in samples for name in s.stages})
    return {
        "concurrency": concurrency,
        "requests": total,
        "ok": len(samples),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "wrong_token_counts": sum(1 for s in samples if s.output_tokens != max_tokens),
        "ttft_ms": {"p50": round(quantile(ttft, 0.5), 2), "p90": round(quantile(ttft, 0.9), 2),
                    "p99": round(quantile(ttft, 0.99), 2)},
        "latency_ms": {"p50": round(quantile(latency, 0.5), 2), "p99": round(quantile(latency, 0.99), 2)},
        "output_tokens": tokens,
        "wall_s": round(wall, 3),
        "output_tokens_per_s": round(tokens / wall, 2) if wall else 0.0,
        # Median of each stage over the requests (medians do not add up to the TTFT median exactly).
        "stages_ms_p50": {name: round(quantile([s.stages[name] for s in samples if name in s.stages], 0.5), 2)
                          for name in stage_names},
        "cpu_s_by_process": cpu.used(),
        "load_avg_1m_before": round(load_before, 2),
    }


async def fixed_costs(
    client: AsyncOpenAI, base_url: str, api_key: str, count: int, health_path: str = "/health",
) -> dict[str, Any]:
    """Per-request costs without per-token ones: sequential calls, latency p50/p99 in ms.

    /health is the HTTP path alone (CrossLogic: proxy -> ingress replica, no key); /v1/models adds
    the key check; a 1-token non-streaming chat adds admission, routing and the engine hop.
    """
    root = base_url.removesuffix("/v1")
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {api_key}"}, timeout=60) as http:
        for label, url in (("health", f"{root}{health_path}"), ("models", f"{base_url}/models")):
            samples = []
            for _ in range(count):
                started = time.perf_counter()
                (await http.get(url)).raise_for_status()
                samples.append((time.perf_counter() - started) * 1000)
            out[label] = {"p50": round(quantile(samples, 0.5), 2), "p99": round(quantile(samples, 0.99), 2)}
    samples = []
    for _ in range(count // 2):
        started = time.perf_counter()
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=1)
        samples.append((time.perf_counter() - started) * 1000)
    out["chat_1_token"] = {"p50": round(quantile(samples, 0.5), 2), "p99": round(quantile(samples, 0.99), 2)}
    return out


async def run_workload(
    name: str, base_url: str, api_key: str, args: argparse.Namespace, tags: set[str], health_path: str = "/health",
) -> dict[str, Any]:
    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
    try:
        log(f"{name}: warm-up ({args.warmup} requests, then one burst of {max(args.levels)})")
        for _ in range(args.warmup):
            await one_request(client, args.max_tokens)
        await asyncio.gather(*(one_request(client, args.max_tokens) for _ in range(max(args.levels))))
        idle = CpuAccount(tags)
        await asyncio.sleep(args.idle_s)
        # What each process burns with no request at all (health checks, metrics, report loops).
        idle_cpu = {g: round(v / args.idle_s, 3) for g, v in idle.used().items()}
        fixed = await fixed_costs(client, base_url, api_key, args.probes, health_path)
        log(f"{name}: idle CPU (cores) {idle_cpu}; fixed costs (ms) {fixed}")
        levels = []
        for concurrency in args.levels:
            total = max(args.min_requests, args.rounds * concurrency)
            result = await run_level(client, concurrency, total, args.max_tokens, tags)
            log(f"{name}: {concurrency:>2} clients, {result['ok']}/{total} ok: TTFT p50 {result['ttft_ms']['p50']:.1f} ms, "
                f"{result['output_tokens_per_s']:.1f} tok/s, cpu {result['cpu_s_by_process']}")
            if result["stages_ms_p50"]:
                log(f"{name}: {concurrency:>2} clients, stages p50 (ms): "
                    + ", ".join(f"{k} {v:.2f}" for k, v in result["stages_ms_p50"].items()))
            levels.append(result)
        out: dict[str, Any] = {"base_url": base_url, "idle_cpu_cores": idle_cpu, "fixed_costs_ms": fixed,
                               "levels": levels}
        if args.profile:
            out["profiled_level"] = await profiled_level(name, client, args, tags)
        return out
    finally:
        await client.close()


async def profiled_level(name: str, client: AsyncOpenAI, args: argparse.Namespace, tags: set[str]) -> dict[str, Any]:
    """The top level once more under py-spy (separately: sampling perturbs the figures above)."""
    pids = {group.replace(":", "_").replace(" ", "_"): pid for pid, (group, _) in find_processes(tags).items()
            if group in PROFILED}
    profiler = Profiler(pids, RESULTS.parent / "profiles" / name.replace(" ", "_"))
    concurrency = max(args.levels)
    try:
        result = await run_level(client, concurrency, args.rounds * concurrency, args.max_tokens, tags)
    finally:
        profiles = profiler.stop()
    for group, prof in profiles.items():
        top = ", ".join(f"{p['what']} {p['share']:.0%}" for p in prof.get("self_by_package", [])[:6])
        log(f"{name}: py-spy {group}: {prof['samples']} samples; self time by package: {top}")
    return {**result, "profiles": profiles}


def run_crosslogic(workdir: Path, args: argparse.Namespace, name: str, variant: Variant) -> dict[str, Any]:
    with crosslogic_target(workdir, variant) as target:
        result = asyncio.run(run_workload(name, target.base_url, target.api_key, args, {target.tag}))
    return {**result, "database": target.database, "variant": asdict(variant)}


def run_bare(workdir: Path, args: argparse.Namespace, name: str, model_path: str) -> dict[str, Any]:
    tag = f"bench-{uuid.uuid4().hex}"
    with bare_vllm(model_path, workdir, tag, stream_interval=BARE[name]) as base_url:
        result = asyncio.run(run_workload(name, base_url, "EMPTY", args, {tag}))
    return {**result, "stream_interval": BARE[name]}


def run_peer(workdir: Path, args: argparse.Namespace, name: str, model_path: str) -> dict[str, Any]:
    """LiteLLM's proxy in front of a bare vLLM server of its own (both under one tag: one CPU account)."""
    tag = f"bench-{uuid.uuid4().hex}"
    with bare_vllm(model_path, workdir, tag) as upstream, litellm_proxy(upstream, MODEL, workdir, tag) as base_url:
        # LiteLLM's /health calls the model: its liveliness probe is the HTTP path alone, like ours.
        result = asyncio.run(run_workload(name, base_url, LITELLM_KEY, args, {tag}, "/health/liveliness"))
    return {**result, "upstream": "bare vLLM, stream interval 1"}


def on_serving_path(group: str) -> bool:
    return group in SERVING_PATH or group.startswith(SERVING_PATH_PREFIX)


def cpu_ms_per_request(result: dict[str, Any], serving_path: bool) -> list[float]:
    """Per level: CPU ms per request of the target's serving-path processes (or, not `serving_path`,
    of its background ones), the engine's own processes and the client left out."""
    def counted(group: str) -> bool:
        if group in ENGINE_PROCESSES or group in (CLIENT, OUTSIDE):
            return False
        return on_serving_path(group) == serving_path

    return [round(1000 * sum(v for g, v in level["cpu_s_by_process"].items() if counted(g)) / max(1, level["ok"]), 2)
            for level in result["levels"]]


def idle_cores(result: dict[str, Any]) -> float:
    return round(sum(v for g, v in result["idle_cpu_cores"].items() if g not in (OUTSIDE, CLIENT)), 3)


def peer_table(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's table, each figure beside bare vLLM: every target that ran, bare vLLM first."""
    bare = results["bare_vllm"]
    table: dict[str, Any] = {}
    for name, result in results.items():
        levels = result["levels"]
        one = next((i for i, level in enumerate(levels) if level["concurrency"] == 1), None)
        table[name] = {
            "throughput_ratio_by_clients": {
                str(level["concurrency"]): round(level["output_tokens_per_s"] / b["output_tokens_per_s"], 3)
                for level, b in zip(levels, bare["levels"], strict=True) if b["output_tokens_per_s"]},
            "ttft_overhead_1_client_ms": None if one is None else {
                q: round(levels[one]["ttft_ms"][q] - bare["levels"][one]["ttft_ms"][q], 2) for q in ("p50", "p90")},
            "serving_cpu_ms_per_request_by_clients": dict(zip(
                (str(level["concurrency"]) for level in levels), cpu_ms_per_request(result, True), strict=True)),
            "background_cpu_ms_per_request_by_clients": dict(zip(
                (str(level["concurrency"]) for level in levels), cpu_ms_per_request(result, False), strict=True)),
            "idle_cores": idle_cores(result),
            "idle_cores_beyond_bare": round(idle_cores(result) - idle_cores(bare), 3),
        }
    return table


def print_peer_table(table: dict[str, Any]) -> None:
    print("\n== side by side (bare vLLM = 1.00; overheads over bare vLLM in the same run)")
    for name, row in table.items():
        ratios = " / ".join(f"{v:.3f}" for v in row["throughput_ratio_by_clients"].values())
        cpu = " / ".join(f"{v:.1f}" for v in row["serving_cpu_ms_per_request_by_clients"].values())
        background = " / ".join(f"{v:.1f}" for v in row["background_cpu_ms_per_request_by_clients"].values())
        ttft = row["ttft_overhead_1_client_ms"] or {}
        print(f"  {name:24s} tput ratio {ratios} | TTFT@1 +{ttft.get('p50', 0):.1f} / +{ttft.get('p90', 0):.1f} ms (p50/p90)"
              f" | serving-path CPU ms/req {cpu} (background {background}) | idle {row['idle_cores']:.3f} cores (+{row['idle_cores_beyond_bare']:.3f})")


# -- report ----------------------------------------------------------------------------------------


def compare(bare: dict[str, Any], crosslogic: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for b, c in zip(bare["levels"], crosslogic["levels"], strict=True):
        rows.append({
            "concurrency": b["concurrency"],
            "ttft_overhead_ms_p50": round(c["ttft_ms"]["p50"] - b["ttft_ms"]["p50"], 2),
            "ttft_overhead_ms_p90": round(c["ttft_ms"].get("p90", float("nan")) - b["ttft_ms"].get("p90", float("nan")), 2),
            "ttft_overhead_ms_p99": round(c["ttft_ms"]["p99"] - b["ttft_ms"]["p99"], 2),
            "latency_overhead_ms_p50": round(c["latency_ms"]["p50"] - b["latency_ms"]["p50"], 2),
            "throughput_ratio": round(c["output_tokens_per_s"] / b["output_tokens_per_s"], 3) if b["output_tokens_per_s"] else None,
        })
    return rows


def print_table(bare: dict[str, Any], crosslogic: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    head = (f"{'conc':>4} | {'TTFT p50 ms':>17} | {'TTFT p99 ms':>17} | {'latency p50 ms':>17} | {'latency p99 ms':>17}"
            f" | {'output tok/s':>15} | {'TTFT +p50':>9} | {'tput ratio':>10}")
    print("\n" + head + "\n" + " " * 7 + "(bare / CrossLogic in each column)\n" + "-" * len(head))
    for b, c, r in zip(bare["levels"], crosslogic["levels"], rows, strict=True):
        cells = [f"{b[k][q]:8.1f}/{c[k][q]:8.1f}" for k, q in
                 (("ttft_ms", "p50"), ("ttft_ms", "p99"), ("latency_ms", "p50"), ("latency_ms", "p99"))]
        print(f"{b['concurrency']:>4} | " + " | ".join(cells)
              + f" | {b['output_tokens_per_s']:7.1f}/{c['output_tokens_per_s']:7.1f}"
              + f" | {r['ttft_overhead_ms_p50']:9.1f} | {r['throughput_ratio'] or 0:10.3f}")


def report(bare_name: str, bare: dict[str, Any], name: str, ours: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print(f"\n== {bare_name} vs {name} {VARIANTS.get(name, '(peer)')}")
    print_table(bare, ours, rows)
    for probe, b in bare["fixed_costs_ms"].items():
        o = ours["fixed_costs_ms"][probe]
        print(f"  sequential {probe:13s} p50 {b['p50']:7.2f} / {o['p50']:7.2f} ms  (+{o['p50'] - b['p50']:.2f})")
    idle = [idle_cores(r) for r in (bare, ours)]
    print(f"  idle CPU, all processes of the target: {idle[0]:.2f} / {idle[1]:.2f} cores")


def machine_info() -> dict[str, Any]:
    import ray
    import vllm

    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "cpu_model": cpu_model,
            "mem_total_gb": round(psutil.virtual_memory().total / 2**30, 1), "vllm": vllm.__version__,
            "ray": ray.__version__, "platform": platform.platform(), "commit": source_commit()}


def source_commit() -> str:
    """The commit the benchmark ran on, `+dirty` when the working tree differs from it: results are
    committed beside the code that produced them."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return f"{head}+dirty" if git("status", "--porcelain", "--untracked-files=no") else head


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 16], help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=4, help="requests per client at each level")
    # 64: the p50 of 16 sequential requests moved by +-3 ms between runs here (1-client TTFT ~60 ms),
    # too coarse for a 10 ms overhead target.
    parser.add_argument("--min-requests", type=int, default=64, help="at least this many requests per level")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (ignore_eos)")
    parser.add_argument("--warmup", type=int, default=3, help="sequential warm-up requests per target")
    parser.add_argument("--idle-s", type=float, default=10.0, help="seconds of idle CPU measurement per target")
    parser.add_argument("--probes", type=int, default=100, help="sequential /health and /v1/models calls per target")
    parser.add_argument("--profile", action="store_true",
                        help="after the measured levels, run the top level again under py-spy (profiles in results/profiles)")
    parser.add_argument("--targets", nargs="+", default=["bare_vllm", "crosslogic"], choices=[*BARE, *PEERS, *VARIANTS],
                        help="run in this order, one at a time")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument("--report", type=Path, help="run nothing: rebuild the side-by-side table of this results file")
    args = parser.parse_args()
    if args.report is not None:
        saved = json.loads(args.report.read_text())
        saved["side_by_side"] = peer_table(saved["results"])
        print_peer_table(saved["side_by_side"])
        args.report.write_text(json.dumps(saved, indent=2))
        return

    from crosslogic.devmodels.prepare import resolve_model_source

    # Our own handler, so asyncio.run does not install its task-cancelling one: the openai client
    # can swallow that cancellation, and Ctrl-C must always reach the finally blocks that stop engines.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_path = resolve_model_source(MODEL, Settings.from_env(), progress=log)
    workdir = Path(tempfile.mkdtemp(prefix="clbench-"))
    started = time.monotonic()
    results: dict[str, Any] = {}
    try:
        for target in args.targets:
            if target in BARE:
                results[target] = run_bare(workdir, args, target, model_path)
            elif target in PEERS:
                results[target] = run_peer(workdir, args, target, model_path)
            else:
                results[target] = run_crosslogic(workdir, args, target, VARIANTS[target])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    comparison: dict[str, Any] = {}
    for variant in (v for v in [*PEERS, *VARIANTS] if v in results):
        stream4 = variant in VARIANTS and VARIANTS[variant].engine_kwargs.get("stream_interval") == 4
        matched = "bare_vllm_stream4" if stream4 else "bare_vllm"
        for bare_name in dict.fromkeys(b for b in (matched, "bare_vllm") if b in results):
            comparison[f"{variant}_vs_{bare_name}"] = compare(results[bare_name], results[variant])
            report(bare_name, results[bare_name], variant, results[variant], comparison[f"{variant}_vs_{bare_name}"])
    table = peer_table(results) if "bare_vllm" in results else {}
    if table:
        print_peer_table(table)
    settings = {**vars(args), "output": str(args.output), "model": MODEL, "model_path": model_path, "prompt": PROMPT,
                "engine": {"dtype": bench_dtype(), "max_model_len": 2048, "enforce_eager": True, "max_num_seqs": 32,
                           "env": ENGINE_ENV},
                "targets_run": "one after the other, each warmed up first",
                "crosslogic_rate_limit_backend": "redis (REDIS_URL)" if os.environ.get("REDIS_URL") else
                "in-cluster Ray actor (crosslogic_redis: Redis)"}
    duration = round(time.monotonic() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w") as out:
        json.dump({"benchmark": "serving_overhead", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "duration_s": duration, "machine": machine_info(), "settings": settings,
                   "goals": {"throughput_ratio_at_16_at_least": 0.95, "ttft_overhead_1_client_p50_p90_below": "litellm",
                             "serving_cpu_per_request_at_most": "2x bare vLLM", "idle_cores_beyond_bare_at_most": 0.05},
                   "results": results, "comparison": comparison, "side_by_side": table}, out, indent=2)
    log(f"wrote {args.output} ({duration:.0f}s in all)")


if __name__ == "__main__":
    main()
