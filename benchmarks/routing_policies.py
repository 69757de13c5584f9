"""Routing policies at 64 and 256 replicas, on the engine SIMULATOR (issue 14, item 3).

Three measurements, all driving the real policy code, the ingress's routing state and the router's
LoadTable (benchmarks/sim_fleet.py; two ingress replicas syncing every 0.2 s, engines reporting
every 0.5 s, Serve's max_ongoing_requests back-pressure), with simulated engines on a virtual clock:

1. heterogeneous fleet (speed factors 1.0, 1.0, 0.6, 0.3 in turn) at 80 % of its capacity, unique
   prompts: TTFT of each policy against round robin;
2. prefix-heavy (8 system prompts of ~1 500 tokens, one with 40 % of the traffic; many users in
   multi-turn conversations), homogeneous fleet at 80 % of least_loaded's capacity: prefix-cache hit
   rate, TTFT and replica load balance of each policy;
3. CPU per routing decision (affinity keys included) at 64 and 256 replicas, in-process.

Capacity is measured, not assumed: a closed loop with max_batch clients per replica under
least_loaded, requests per second completed. No Ray: a 2-core machine cannot host 64 replica
processes, and the question here is the policies', not the transport's (benchmarks/router_hop.py
measures that hop).

    .venv/bin/python benchmarks/routing_policies.py [--replicas 64 256] [--duration 60] [--quick]

Prints tables and writes benchmarks/results/routing_policies.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import subprocess
import time
from typing import Any

from benchmarks.sim_fleet import (
    Fleet,
    Request,
    closed_loop_throughput,
    load_balance,
    open_loop,
    percentile,
    run_virtual,
    summarize_ttft,
)
from crosslogic.engine.base import EngineStats
from crosslogic.routing.hints import RoutingHints
from crosslogic.routing.load_table import LoadTable
from crosslogic.routing.local_router import LocalRouter
from crosslogic.routing.policies import POLICIES, make_policy

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "routing_policies.json")
POLICY_ORDER = ["round_robin", "least_loaded_p2c", "least_loaded", "prefix_aware", "session_affinity"]
LOAD = 0.8
SIM = {
    "prefill_tokens_per_s": 8000, "decode_tokens_per_s": 50, "decode_batch_cost": 0.02, "max_batch": 32,
    "max_batched_tokens": 2048, "kv_cache_tokens": 262_144, "block_tokens": 16, "chars_per_token": 4,
    "max_model_len": 16_384, "stream_interval": 16,
}
HETEROGENEOUS = [1.0, 1.0, 0.6, 0.3]
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu order ship bike parcel").split()


def text(rng: random.Random, tokens: int) -> str:
    """About `tokens` tokens (4 characters each) of random words."""
    words = rng.choices(WORDS, k=max(1, tokens * 4 // 6))
    return " ".join(words)


def unique_prompts(rng: random.Random) -> Request:
    tokens = int(min(3000, max(64, rng.lognormvariate(math.log(450), 0.6))))
    return Request(body={
        "messages": [{"role": "user", "content": text(rng, tokens)}],
        "max_tokens": rng.randint(16, 160), "stream": True, "cache_salt": f"tenant-{rng.randrange(10)}",
    })


class Conversations:
    """Few system prompts (one per tenant, one hot), many users each in a multi-turn conversation."""

    WEIGHTS = (0.4, 0.2, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05)

    def __init__(self, users: int, seed: int = 5) -> None:
        rng = random.Random(seed)
        self.systems = [f"System prompt {i}. " + text(rng, 1500) for i in range(len(self.WEIGHTS))]
        self.users = users
        self.system_of = [rng.choices(range(len(self.WEIGHTS)), self.WEIGHTS)[0] for _ in range(users)]
        self.history: list[list[dict[str, str]]] = [[] for _ in range(users)]

    def __call__(self, rng: random.Random) -> Request:
        uid = rng.randrange(self.users)
        if len(self.history[uid]) >= 16:  # 8 turns: the user starts a new conversation
            self.history[uid] = []
        system = self.system_of[uid]
        message = {"role": "user", "content": f"user {uid}: " + text(rng, rng.randint(50, 150))}
        messages = [{"role": "system", "content": self.systems[system]}, *self.history[uid], message]
        history = self.history[uid]

        def done(completion: int) -> None:
            history.extend([message, {"role": "assistant", "content": "tok " * completion}])

        return Request(body={
            "messages": messages, "max_tokens": rng.randint(32, 128), "stream": True,
            "cache_salt": f"tenant-{system}", "user": f"user-{uid}",
        }, on_done=done)


async def _capacity(replicas: int, sim: dict[str, Any], workload: Any, duration_s: float) -> float:
    fleet = Fleet(replicas, sim, "least_loaded")
    await fleet.start()
    try:
        return await closed_loop_throughput(fleet, workload, replicas * sim["max_batch"], duration_s, duration_s / 2)
    finally:
        await fleet.stop()


async def _policy_run(
    replicas: int, sim: dict[str, Any], policy: str, workload: Any, rate: float, duration_s: float, warmup_s: float,
) -> dict[str, Any]:
    import asyncio

    fleet = Fleet(replicas, sim, policy)
    await fleet.start()
    loop = asyncio.get_running_loop()
    at_warmup: list[tuple[int, int]] = []
    loop.call_later(warmup_s, lambda: at_warmup.append(fleet.prefix_cache()))
    try:
        result = await open_loop(fleet, workload, rate, duration_s, warmup_s)
    finally:
        await fleet.stop()
    queries, hits = fleet.prefix_cache()
    q0, h0 = at_warmup[0] if at_warmup else (0, 0)
    decisions = [ns / 1000 for ns in result.decisions_ns]
    return {
        **summarize_ttft(result), **load_balance(result),
        "prefix_hit_rate": round((hits - h0) / (queries - q0), 4) if queries > q0 else 0.0,
        # Wall time inside the simulation (other processes' time included): see decision_cpu.
        "decision_wall_us_mean": round(statistics.fmean(decisions), 2),
    }


def scenario(name: str, replicas: int, sim: dict[str, Any], make_workload: Any, duration_s: float) -> dict[str, Any]:
    wall = time.monotonic()
    capacity = run_virtual(_capacity(replicas, sim, make_workload(), min(duration_s, 30.0)))
    rate = LOAD * capacity
    print(f"\n{name}, {replicas} replicas: capacity {capacity:.1f} req/s (least_loaded, saturated); offered {rate:.1f} req/s")
    out: dict[str, Any] = {"capacity_rps": round(capacity, 2), "offered_rps": round(rate, 2), "policies": {}}
    for policy in POLICY_ORDER:
        started = time.monotonic()
        row = run_virtual(_policy_run(replicas, sim, policy, make_workload(), rate, duration_s, duration_s / 4))
        row["wall_s"] = round(time.monotonic() - started, 1)
        out["policies"][policy] = row
        print(f"  {policy:18s} TTFT p50 {row['ttft_p50_ms']:8.1f}  p90 {row['ttft_p90_ms']:8.1f}  "
              f"p99 {row['ttft_p99_ms']:8.1f} ms  hit rate {row['prefix_hit_rate']:.3f}  "
              f"load max/mean {row['load_max_over_mean']:.2f}  served max/mean {row['served_max_over_mean']:.2f}  "
              f"n={row['requests']}  ({row['wall_s']} s)")
    base = out["policies"]["round_robin"]["ttft_p99_ms"]
    for row in out["policies"].values():
        row["p99_vs_round_robin"] = round(base / row["ttft_p99_ms"], 2) if row["ttft_p99_ms"] else None
    out["wall_s"] = round(time.monotonic() - wall, 1)
    return out


def decision_cpu(replicas: int, calls: int) -> dict[str, Any]:
    """µs per routing decision (affinity keys + ranking) from a busy view, realistic chat bodies."""
    rng = random.Random(7)
    table = LoadTable()
    ids = [f"replica-{i:03d}-{rng.getrandbits(24):06x}" for i in range(replicas)]
    for rid in ids:
        table.report_engine(rid, "m", EngineStats(running=rng.randint(0, 32), waiting=rng.randint(0, 8),
                                                  kv_cache_usage=rng.random()), now=0)
    for n in range(3):
        table.report_ingress(f"ingress-{n}", {rid: rng.randint(0, 16) for rid in ids}, now=0)
    view = table.view(now=0, for_ingress="me").replicas
    conversations = Conversations(users=2000)
    bodies = [conversations(rng).body for _ in range(2000)]
    out: dict[str, Any] = {"body_chars_mean": round(statistics.fmean(len(json.dumps(b)) for b in bodies))}
    for policy in POLICY_ORDER:
        router = LocalRouter(make_policy(policy, rng=random.Random(1)))
        router.view = view
        router.local = {rid: rng.randint(0, 16) for rid in ids}
        wall: list[int] = []
        batch_cpu: list[float] = []
        for batch in range((calls + 2000) // 100):
            cpu_started = time.thread_time_ns()
            for n in range(batch * 100, batch * 100 + 100):
                body = bodies[n % len(bodies)]
                started = time.perf_counter_ns()
                hints = RoutingHints()
                router.fill_keys(hints, "chat", body)
                router.choose(ids, hints)
                wall.append(time.perf_counter_ns() - started)
            batch_cpu.append((time.thread_time_ns() - cpu_started) / 100 / 1000)
        # The first 2000 warm the interpreter, the ring and the index. CPU time (this thread's) is
        # what a decision costs; wall time also holds what other processes took meanwhile.
        us = [w / 1000 for w in wall[2000:]]
        cpu = batch_cpu[20:]
        out[policy] = {"cpu_us_mean": round(statistics.fmean(cpu), 2), "cpu_us_median_batch": round(statistics.median(cpu), 2),
                       "wall_p50_us": round(percentile(us, 0.5), 2), "wall_p99_us": round(percentile(us, 0.99), 2),
                       "n": len(us)}
    return out


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--duration", type=float, default=60.0, help="virtual seconds per run (a quarter is warm-up)")
    parser.add_argument("--calls", type=int, default=20_000, help="decisions timed per policy for the CPU figure")
    parser.add_argument("--quick", action="store_true", help="8 replicas, 20 s: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.replicas, args.duration, args.calls = [8], 20.0, 2000
    assert set(POLICY_ORDER) == set(POLICIES)
    report: dict[str, Any] = {
        "commit": _commit(), "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                                         "python": platform.python_version()},
        "simulator": SIM, "load": LOAD, "heterogeneous_speed_factors": HETEROGENEOUS, "duration_s": args.duration,
        "heterogeneous": {}, "prefix_heavy": {}, "decision_cpu": {},
    }
    for replicas in args.replicas:
        report["decision_cpu"][str(replicas)] = cpu = decision_cpu(replicas, args.calls)
        print(f"\nCPU per routing decision, {replicas} replicas (keys + ranking), us: CPU mean, CPU median of "
              "100-call batches, wall p50, wall p99")
        for policy in POLICY_ORDER:
            c = cpu[policy]
            print(f"  {policy:18s} {c['cpu_us_mean']:8.2f} {c['cpu_us_median_batch']:8.2f} {c['wall_p50_us']:8.2f} "
                  f"{c['wall_p99_us']:8.2f}")
    for replicas in args.replicas:
        hetero = {**SIM, "speed_factors": HETEROGENEOUS}
        report["heterogeneous"][str(replicas)] = scenario(
            "Heterogeneous fleet, unique prompts", replicas, hetero, lambda: unique_prompts, args.duration)
        report["prefix_heavy"][str(replicas)] = scenario(
            "Prefix-heavy (8 system prompts, multi-turn users)", replicas, SIM,
            lambda r=replicas: Conversations(users=64 * r), args.duration)
        os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
        with open(RESULTS, "w") as f:  # after each size: a long run keeps what it measured
            json.dump(report, f, indent=1)
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
