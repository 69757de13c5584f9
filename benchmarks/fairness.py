"""Fairness under saturation (issue 14, item 2): one tenant floods a model's engines, another's TTFT.

Engine simulator replicas on a virtual clock behind the real routing (benchmarks/sim_fleet.py: the
LocalRouter with least_loaded_p2c, the LoadTable), and in front of them the real fair queue
(crosslogic/fairness/fair_queue.py) with its capacity from the `fairness:` config (replicas x
slots_per_replica). Tenant "flood" keeps `--flood-clients` requests in flight at all times (closed
loop: within a concurrency limit, far past what the engines run at once); tenant "steady" sends
Poisson arrivals at `--steady-rate`/s. TTFT counts from arrival at the ingress (queue wait included).

Three runs: steady alone (uncontended), both without the fair queue, both with it. Goal: steady's
p99 TTFT with fairness within 2x of uncontended. Prints and writes benchmarks/results/fairness.json.

    .venv/bin/python -m benchmarks.fairness
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
from typing import Any

from benchmarks.sim_fleet import Fleet, Request, RunResult, percentile, run_virtual
from crosslogic.fairness.config import FairnessConfig
from crosslogic.fairness.fair_queue import FairQueue, QueueFullError

SIM: dict[str, Any] = {"stream_interval": 1000, "max_batch": 32}  # first and last token only: less CPU


def _request(rng: random.Random, tenant: str, max_tokens: int) -> Request:
    # Lengths vary (a quarter to twice the mean): as real ones do, and so slots free one by one
    # rather than a whole batch at once.
    max_tokens = rng.randint(max(1, max_tokens // 4), max_tokens * 2)
    words = " ".join(rng.choice(("alpha", "beta", "gamma", "delta", "omega")) for _ in range(150))
    return Request(body={"messages": [{"role": "user", "content": f"{tenant} {rng.random()} {words}"}],
                         "stream": True, "max_tokens": max_tokens, "cache_salt": tenant})


async def _send(
    fleet: Fleet, queue: FairQueue | None, tenant: str, weight: float, request: Request, ttfts: list[float],
    arrived_after: float, rejected: list[int],
) -> None:
    loop = asyncio.get_running_loop()
    arrived = loop.time()
    slot = None
    if queue is not None:
        try:
            slot = await queue.acquire(tenant, weight)
        except QueueFullError:
            rejected[0] += 1
            return
    one = RunResult()
    try:
        await fleet.send(request, one)
    finally:
        if slot is not None:
            slot.release()
    if one.samples and arrived >= arrived_after:
        sample = one.samples[0]
        ttfts.append(sample.arrived + sample.ttft - arrived)


async def scenario(
    *, replicas: int, flood_clients: int, steady_rate: float, duration_s: float, fair: bool | None,
    slots_per_replica: int, burst_per_replica: int = 4, max_tokens: int = 64, steady_weight: float = 1.0, seed: int = 11,
) -> dict[str, Any]:
    """fair=None: steady alone (no flood, no queue); False: flood without the queue; True: with it."""
    fleet = Fleet(replicas, SIM, "least_loaded_p2c", seed=seed)
    await fleet.start()
    config = FairnessConfig(enabled=True, slots_per_replica=slots_per_replica, burst_per_replica=burst_per_replica,
                            max_wait_s=60.0)
    queue = FairQueue(lambda: replicas * config.slots_per_replica, burst=replicas * config.burst_per_replica,
                      max_wait_s=config.max_wait_s, max_waiting=config.max_waiting) if fair else None
    loop = asyncio.get_running_loop()
    start = loop.time()
    warmup = start + duration_s / 4
    end = start + duration_s
    steady: list[float] = []
    flood: list[float] = []
    rejected = [0]
    rng = random.Random(seed)

    async def flood_client(n: int) -> None:
        own = random.Random(seed * 1000 + n)
        while loop.time() < end:
            await _send(fleet, queue, "flood", 1.0, _request(own, "flood", max_tokens), flood, warmup, rejected)

    tasks = [loop.create_task(flood_client(n)) for n in range(flood_clients if fair is not None else 0)]
    pending: set[asyncio.Task[None]] = set()
    t = start
    while t < end:
        t += rng.expovariate(steady_rate)
        if t - loop.time() > 0:
            await asyncio.sleep(t - loop.time())
        task = loop.create_task(
            _send(fleet, queue, "steady", steady_weight, _request(rng, "steady", max_tokens), steady, warmup, rejected))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending, *tasks)
    await fleet.stop()
    measured = end - warmup
    return {
        "mode": {None: "steady alone", False: "flood, no fair queue", True: "flood, fair queue"}[fair],
        "steady_requests": len(steady),
        "steady_ttft_p50_ms": round(percentile(steady, 0.5) * 1000, 1),
        "steady_ttft_p99_ms": round(percentile(steady, 0.99) * 1000, 1),
        "flood_requests_per_s": round(len(flood) / measured, 1),
        "flood_ttft_p50_ms": round(percentile(flood, 0.5) * 1000, 1) if flood else None,
        "rejected": rejected[0],
    }


def compare(**kwargs: Any) -> dict[str, Any]:
    rows = [run_virtual(scenario(fair=fair, **kwargs)) for fair in (None, False, True)]
    alone = rows[0]["steady_ttft_p99_ms"]
    return {
        "rows": rows,
        "p99_ratio_without_fairness": round(rows[1]["steady_ttft_p99_ms"] / alone, 2),
        "p99_ratio_with_fairness": round(rows[2]["steady_ttft_p99_ms"] / alone, 2),
    }


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--flood-clients", type=int, default=1000)
    parser.add_argument("--steady-rate", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=60.0, help="virtual seconds (a quarter warm-up)")
    parser.add_argument("--slots-per-replica", type=int, default=16)
    parser.add_argument("--burst-per-replica", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/fairness.json")
    args = parser.parse_args()
    result = compare(replicas=args.replicas, flood_clients=args.flood_clients, steady_rate=args.steady_rate,
                     duration_s=args.duration, slots_per_replica=args.slots_per_replica,
                     burst_per_replica=args.burst_per_replica)
    for row in result["rows"]:
        print(row)
    print(f"steady p99 TTFT / uncontended: without fairness {result['p99_ratio_without_fairness']}x, "
          f"with {result['p99_ratio_with_fairness']}x")
    result["settings"] = {**vars(args), "simulator": SIM, "commit": _commit(), "cpu": platform.processor(),
                          "load_average": os.getloadavg()}
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
