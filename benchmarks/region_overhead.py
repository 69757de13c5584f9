"""Region overhead: the TTFT a request pays when a remote region serves it instead of the local engine.

In one run, on one machine:
  - a control plane as `serving_targets.crosslogic_target` brings it up (throw-away database, the chat
    model only, ONE local engine replica), with CROSSLOGIC_REGION_MASTER_SECRET and an admin JWT
    secret in its Ray cluster's environment;
  - ONE region (`crosslogic.localstack.region_stack.RegionStack`: its own Ray cluster with the same
    model, one replica, the regional gateway and agent) created through POST /admin/v1/regions and
    beating to the control plane; measured once the control plane routes to it.
Three variants, interleaved request by request (the order rotating every round, so machine noise and
order effects hit all alike), one client, a fixed prompt, streamed chat with exactly `--max-tokens`
output tokens (`ignore_eos`):
  (a) local:   client -> control plane -> its local engine (header `x-crosslogic-region: local`);
  (b) remote:  client -> control plane -> regional gateway -> the region's engine
               (header `x-crosslogic-region: <region>`);
  (c) gateway: client -> regional gateway -> the region's engine, with a signed GatewayRequest
               (purpose "gateway"), as the control plane calls it: the hop's own cost without the
               control plane (TTFT = the first NDJSON chunk event).
(a) and (b) go through the official `openai` client, and each response's `x-crosslogic-region` header
must name where it was meant to be served (others are counted and left out). (c) through httpx (the
gateway speaks NDJSON, not SSE). Reported per variant: TTFT p50/p90/p99/mean, latency p50/p99, the
Server-Timing stages' medians; and (b)-(a) as the remote region TTFT overhead, (b)-(c) as what the
control plane adds in front of a region, (c)-(a) as gateway path vs local path.

Caveat: the local and the remote engine are different engine processes of the same model on the
same machine, and both Ray clusters (and this client) share its cores; a real region adds the WAN's
round trip on top (connections are kept alive, so one RTT per request before the first token).

    flock /tmp/crosslogic-serve.lock .venv/bin/python benchmarks/region_overhead.py [--requests 40]

Prints a side-by-side table and writes benchmarks/results/region_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from openai import AsyncOpenAI
from serving_overhead import PROMPT, interrupt, machine_info, one_request, quantile
from serving_targets import ENGINE_ENV, MODEL, Variant, bench_dtype, crosslogic_target, log

from crosslogic.admin.local_secret import mint_admin_token
from crosslogic.engine.base import CHUNK, ENGINE_FIRST_MS, ERROR, USAGE
from crosslogic.localstack.region_stack import RegionStack
from crosslogic.regions.config import MASTER_SECRET_ENV
from crosslogic.regions.protocol import GENERATE_PATH, GatewayRequest, decode_event
from crosslogic.regions.signing import decode_secret, sign
from crosslogic.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results" / "region_overhead.json"
REGION = "bench-remote"
# The control plane's own region name (AppConfig.region's default): the local engines.
LOCAL = "local"
VARIANTS = ("local", "remote", "gateway")
LABELS = {"local": "(a) control plane -> local engine", "remote": "(b) control plane -> region gateway -> engine",
          "gateway": "(c) straight to the region gateway"}


@dataclass
class Sample:
    ttft_ms: float
    latency_ms: float
    output_tokens: int
    served_by: str
    # Server-Timing stages (ms) for (a)/(b), plus `outside` = client TTFT - the ingress's `total`;
    # for (c): the engine's own `engine` time to its first chunk and `outside` = TTFT - engine.
    stages: dict[str, float] = field(default_factory=dict)


def chat_body(max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}


async def via_control_plane(client: AsyncOpenAI, region: str, max_tokens: int) -> Sample:
    # serving_overhead's streamed sample (TTFT on the first chunk with a choice, Server-Timing, `outside`).
    sample = await one_request(client, max_tokens, headers={"x-crosslogic-region": region})
    return Sample(sample.ttft_s * 1000, sample.latency_s * 1000, sample.output_tokens, sample.region or "?",
                  sample.stages)


def _has_choice(sse: str) -> bool:
    """Whether a chunk event's SSE text carries a choice (the same first-token rule as the openai path)."""
    for line in sse.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            if json.loads(line[len("data: "):]).get("choices"):
                return True
    return False


async def via_gateway(http: httpx.AsyncClient, region: RegionStack, max_tokens: int) -> Sample:
    call = GatewayRequest(model=MODEL, endpoint="chat", body=chat_body(max_tokens), request_id=f"bench-{uuid.uuid4().hex}")
    payload = call.model_dump_json().encode()
    started = time.perf_counter()
    # Signed per request (as RegionClient does): fresh timestamp and nonce, HMAC over the exact body.
    headers = sign(region.secret, purpose="gateway", region=region.name, method="POST", path=GENERATE_PATH, body=payload)
    ttft: float | None = None
    tokens = 0
    stages: dict[str, float] = {}
    async with http.stream("POST", region.gateway_url + GENERATE_PATH, content=payload,
                           headers={**headers, "content-type": "application/json"}) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line:
                continue
            event = decode_event(line)
            if event[0] == ERROR:
                raise RuntimeError(f"gateway error event: {event[1]}")
            if event[0] == CHUNK:
                if ttft is None and _has_choice(event[1]):
                    ttft = time.perf_counter() - started
                    timing = event[3] if len(event) > 3 and isinstance(event[3], dict) else {}
                    if timing.get(ENGINE_FIRST_MS) is not None:
                        stages["engine"] = float(timing[ENGINE_FIRST_MS])
                # The engine's running usage rides on each chunk; with include_usage no separate
                # usage event may follow (crosslogic/engine/vllm_engine.py).
                if event[2]:
                    tokens = int(event[2].get("completion_tokens", tokens))
            elif event[0] == USAGE:
                tokens = int(event[1].get("completion_tokens", tokens))
    latency = time.perf_counter() - started
    ttft = ttft if ttft is not None else latency
    if "engine" in stages:
        stages["outside"] = ttft * 1000 - stages["engine"]
    return Sample(ttft * 1000, latency * 1000, tokens, region.name, stages)


def summarise(samples: list[Sample], errors: list[str], wrong_region: list[str], max_tokens: int) -> dict[str, Any]:
    ttft = [s.ttft_ms for s in samples]
    latency = [s.latency_ms for s in samples]
    stage_names = sorted({name for s in samples for name in s.stages})
    return {
        "ok": len(samples),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        # Served elsewhere than asked (left out of the figures): the header said so.
        "wrong_region": len(wrong_region),
        "wrong_region_examples": sorted(set(wrong_region))[:3],
        "wrong_token_counts": sum(1 for s in samples if s.output_tokens != max_tokens),
        "ttft_ms": {"p50": round(quantile(ttft, 0.5), 2), "p90": round(quantile(ttft, 0.9), 2),
                    "p99": round(quantile(ttft, 0.99), 2), "mean": round(statistics.fmean(ttft), 2) if ttft else float("nan"),
                    "min": round(min(ttft), 2) if ttft else float("nan"), "max": round(max(ttft), 2) if ttft else float("nan")},
        "latency_ms": {"p50": round(quantile(latency, 0.5), 2), "p99": round(quantile(latency, 0.99), 2)},
        # Median of each stage over the requests (medians do not add up to the TTFT median exactly).
        "stages_ms_p50": {name: round(quantile([s.stages[name] for s in samples if name in s.stages], 0.5), 2)
                          for name in stage_names},
    }


async def wait_routed(client: AsyncOpenAI, timeout_s: float = 120) -> None:
    """Until the control plane sends a request preferring the region there (heartbeat accepted, every
    view refreshed): the first few may still be served locally."""
    deadline = time.monotonic() + timeout_s
    while (sample := await via_control_plane(client, REGION, 1)).served_by != REGION:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the control plane never routed to {REGION} (last served by {sample.served_by})")
        await asyncio.sleep(0.5)


async def measure(base_url: str, api_key: str, region: RegionStack, args: argparse.Namespace) -> dict[str, Any]:
    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
    http = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10))
    expected = {"local": LOCAL, "remote": REGION, "gateway": REGION}

    async def one(variant: str) -> Sample:
        if variant == "gateway":
            return await via_gateway(http, region, args.max_tokens)
        return await via_control_plane(client, expected[variant], args.max_tokens)

    try:
        await wait_routed(client)
        log(f"control plane routes to {REGION}; warm-up ({args.warmup} requests per variant)")
        for _ in range(args.warmup):
            for variant in VARIANTS:
                await one(variant)
        samples: dict[str, list[Sample]] = {v: [] for v in VARIANTS}
        errors: dict[str, list[str]] = {v: [] for v in VARIANTS}
        wrong: dict[str, list[str]] = {v: [] for v in VARIANTS}
        started = time.perf_counter()
        for n in range(args.requests):
            # Rotate who goes first: no variant always follows the same one.
            order = VARIANTS[n % len(VARIANTS):] + VARIANTS[:n % len(VARIANTS)]
            for variant in order:
                try:
                    sample = await one(variant)
                except Exception as exc:  # counted and shown: one failure must not stop the run
                    errors[variant].append(f"{type(exc).__name__}: {str(exc)[:200]}")
                    continue
                if sample.served_by != expected[variant]:
                    wrong[variant].append(f"served by {sample.served_by}")
                else:
                    samples[variant].append(sample)
            if (n + 1) % 10 == 0:
                log(f"{n + 1}/{args.requests} rounds; TTFT p50 so far: "
                    + ", ".join(f"{v} {quantile([s.ttft_ms for s in samples[v]], 0.5):.1f} ms" for v in VARIANTS))
        wall = time.perf_counter() - started
        return {"wall_s": round(wall, 1),
                "variants": {v: summarise(samples[v], errors[v], wrong[v], args.max_tokens) for v in VARIANTS},
                "ttft_ms_samples": {v: [round(s.ttft_ms, 2) for s in samples[v]] for v in VARIANTS}}
    finally:
        await client.close()
        await http.aclose()


def create_region(base: str, admin_secret: str) -> bytes:
    headers = {"authorization": f"Bearer {mint_admin_token(admin_secret, subject='region-overhead-bench')}"}
    created = httpx.post(f"{base}/admin/v1/regions", json={"name": REGION}, headers=headers, timeout=30)
    if created.status_code != 201:
        raise RuntimeError(f"POST /admin/v1/regions: {created.status_code} {created.text}")
    return decode_secret(created.json()["secret"])


def run(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    admin_secret = secrets.token_urlsafe(48)
    variant = Variant(ray_env={"CROSSLOGIC_ADMIN_JWT_SECRET": admin_secret, MASTER_SECRET_ENV: secrets.token_hex(32)})
    with crosslogic_target(workdir, variant) as target:
        base = target.base_url.removesuffix("/v1")
        region = RegionStack(name=REGION, control_plane_url=base, secret=create_region(base, admin_secret),
                             interval_s=2.0, temp_dir=str(workdir / "region"))
        started = time.monotonic()
        try:
            region.start(timeout_s=900, progress=log)
            log(f"region {REGION}: ready in {time.monotonic() - started:.0f}s")
            # As the control plane's cluster (crosslogic_target): its other threads off its engine's core.
            assert region.cluster is not None
            placement = region.cluster.keep_off_engine_cores()
            log(f"region {REGION}: {placement}")
            result = asyncio.run(measure(target.base_url, target.api_key, region, args))
        finally:
            log(f"region {REGION}: stopping")
            region.stop()
    return {**result, "database": target.database, "region_placement": placement, "gateway_url": region.gateway_url}


def overheads(variants: dict[str, Any]) -> dict[str, Any]:
    def diff(a: str, b: str) -> dict[str, float]:
        return {q: round(variants[a]["ttft_ms"][q] - variants[b]["ttft_ms"][q], 2) for q in ("p50", "p90", "p99", "mean")}

    return {"remote_region_ttft_overhead_ms": diff("remote", "local"),
            "control_plane_in_front_of_region_ms": diff("remote", "gateway"),
            "gateway_path_vs_local_path_ms": diff("gateway", "local")}


def print_table(result: dict[str, Any], diffs: dict[str, Any], requests: int) -> None:
    variants = result["variants"]
    head = f"{'variant':48} | {'ok':>7} | {'TTFT p50':>8} | {'p90':>7} | {'p99':>7} | {'mean':>7} | {'latency p50':>11}"
    print(f"\nTTFT in ms, 1 client, {requests} requests per variant, interleaved\n{head}\n{'-' * len(head)}")
    for v in VARIANTS:
        r = variants[v]
        t = r["ttft_ms"]
        print(f"{LABELS[v]:48} | {r['ok']:>3}/{requests:<3} | {t['p50']:8.1f} | {t['p90']:7.1f} | {t['p99']:7.1f}"
              f" | {t['mean']:7.1f} | {r['latency_ms']['p50']:11.1f}")
    print("-" * len(head))
    for name, label in (("remote_region_ttft_overhead_ms", "remote region TTFT overhead (b)-(a)"),
                        ("control_plane_in_front_of_region_ms", "control plane before the region (b)-(c)"),
                        ("gateway_path_vs_local_path_ms", "gateway path vs local path (c)-(a)")):
        d = diffs[name]
        print(f"{label:48} | {'':7} | {d['p50']:+8.1f} | {d['p90']:+7.1f} | {d['p99']:+7.1f} | {d['mean']:+7.1f} |")
    for v in VARIANTS:
        stages = variants[v]["stages_ms_p50"]
        if stages:
            print(f"  {v} stages p50 (ms): " + ", ".join(f"{k} {x:.2f}" for k, x in stages.items()))
        if variants[v]["errors"] or variants[v]["wrong_region"] or variants[v]["wrong_token_counts"]:
            print(f"  {v}: {variants[v]['errors']} errors {variants[v]['error_examples']}, "
                  f"{variants[v]['wrong_region']} served elsewhere, {variants[v]['wrong_token_counts']} wrong token counts")
    print("\nCaveat: the local and the remote engine are different engine processes of the same model on this"
          " machine; the two Ray clusters (and the client) share its cores. A real region adds the WAN round trip.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="measured requests per variant")
    parser.add_argument("--max-tokens", type=int, default=16, help="output tokens per request (ignore_eos)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up requests per variant")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()

    from crosslogic.devmodels.prepare import resolve_model_source

    # Our own handler, so asyncio.run does not install its task-cancelling one: Ctrl-C must always
    # reach the finally blocks that stop both clusters.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_path = resolve_model_source(MODEL, Settings.from_env(), progress=log)
    workdir = Path(tempfile.mkdtemp(prefix="clregion-"))
    started = time.monotonic()
    try:
        result = run(workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    diffs = overheads(result["variants"])
    print_table(result, diffs, args.requests)
    duration = round(time.monotonic() - started, 1)
    settings = {**vars(args), "output": str(args.output), "model": MODEL, "model_path": model_path, "prompt": PROMPT,
                "region": REGION, "variants": LABELS, "clients": 1,
                "order": "interleaved request by request, the first variant rotating every round",
                "engine": {"dtype": bench_dtype(), "max_model_len": 2048, "enforce_eager": True, "max_num_seqs": 32,
                           "env": ENGINE_ENV, "replicas": "1 local (control plane), 1 in the region"},
                "ttft": "client clock to the first streamed chunk with a choice (openai client for a/b, "
                        "httpx NDJSON for c)"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w") as out:
        json.dump({"benchmark": "region_overhead", "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "duration_s": duration, "machine": machine_info(), "settings": settings,
                   "caveat": "local and remote engines are different engine processes of the same model on the same "
                             "machine; the two Ray clusters share its cores; no WAN between them",
                   "overheads": diffs, "results": result}, out, indent=2)
    log(f"wrote {args.output} ({duration:.0f}s in all)")


if __name__ == "__main__":
    main()
