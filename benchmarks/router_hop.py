"""What the routing decision costs: in the ingress (what we do) vs a round trip to a Ray actor (what we avoid).

(i)   in-process: each policy of `crosslogic.routing.policies` ranking N replicas from a RouterView
      plus local in-flight counts, exactly the call `QueueDepthRouter.choose_replicas` makes;
(ii)  actor hop: the same decision taken inside a Ray actor holding the same LoadTable, awaited from
      an asyncio caller — sequentially, and with 16 concurrent callers (what a loaded ingress would
      see if every request asked the actor);
(iii) the view sync the ingress runs every `view_refresh_interval_s` off the request path: a
      round trip to the real `RouterActor.sync_ingress` plus validating the returned view, and the
      actor-side share (LoadTable.view + model_dump) measured in-process.

A tiny local Ray (1 CPU, no dashboard, GCS on a random port, never 6379) is started and shut down.

    .venv/bin/python benchmarks/router_hop.py [--replicas 2 8 32] [--calls N] [--actor-calls N]

Prints a table and writes benchmarks/results/router_hop.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import time
import uuid
from typing import Any

from crosslogic.engine.base import EngineStats
from crosslogic.routing.load_table import LoadTable, RouterView
from crosslogic.routing.policies import POLICIES, make_policy

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "router_hop.json")
OTHER_INGRESSES = 3


def summarize_us(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    count = len(ordered)

    def at(q: float) -> float:
        return round(ordered[min(count - 1, int(count * q))] / 1000, 3)

    return {"p50_us": at(0.50), "p99_us": at(0.99), "mean_us": round(statistics.fmean(ordered) / 1000, 3), "n": count}


def populated_table(replicas: int, seed: int = 7) -> tuple[LoadTable, list[str], dict[str, int]]:
    """A table as a busy cluster has it: every engine reporting, other ingresses with requests out."""
    rng = random.Random(seed)
    now = time.monotonic()
    table = LoadTable()
    ids = [f"replica-{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(replicas)]
    for rid in ids:
        stats = EngineStats(running=rng.randint(0, 32), waiting=rng.randint(0, 8), kv_cache_usage=rng.random())
        table.report_engine(rid, "smollm2-135m", stats, now)
    for n in range(OTHER_INGRESSES):
        table.report_ingress(f"ingress-{n}", {rid: rng.randint(0, 16) for rid in ids}, now)
    local = {rid: rng.randint(0, 16) for rid in ids}
    return table, ids, local


def bench_in_process(replicas: int, calls: int) -> dict[str, Any]:
    table, ids, local = populated_table(replicas)
    view = table.view(time.monotonic(), for_ingress="me").replicas
    rng = random.Random(1)
    out: dict[str, Any] = {}
    for name in POLICIES:
        policy = make_policy(name, rng=rng)
        for _ in range(min(calls, 1000)):  # warm caches and the interpreter's specialisations
            policy.rank(ids, view, local, None)
        samples: list[int] = []
        clock = time.perf_counter_ns
        for _ in range(calls):
            started = clock()
            policy.rank(ids, view, local, None)
            samples.append(clock() - started)
        out[name] = summarize_us(samples)
    # The actor-side share of a sync: building the view for one ingress and serialising it.
    samples = []
    for _ in range(min(calls, 5000)):
        started = time.perf_counter_ns()
        table.view(time.monotonic(), for_ingress="me").model_dump()
        samples.append(time.perf_counter_ns() - started)
    out["view_build_and_dump"] = summarize_us(samples)
    raw = table.view(time.monotonic(), for_ingress="me").model_dump()
    samples = []
    for _ in range(min(calls, 5000)):
        started = time.perf_counter_ns()
        RouterView.model_validate(raw)
        samples.append(time.perf_counter_ns() - started)
    out["view_validate"] = summarize_us(samples)
    return out


def decision_actor_class() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class DecisionActor:
        """The alternative design: the ingress asks the router actor for a target on every request."""

        def __init__(self, replicas: int, policy: str) -> None:
            self._table, self._ids, _ = populated_table(replicas)
            self._policy = make_policy(policy, rng=random.Random(1))

        def choose(self, ingress_id: str, local: dict[str, int]) -> str:
            view = self._table.view(time.monotonic(), for_ingress=ingress_id).replicas
            return self._policy.rank(self._ids, view, local, None)[0]

        def choose_cached_view(self, local: dict[str, int]) -> str:
            # Lower bound: the actor keeps a precomputed view, so the hop is nearly all transport.
            return self._ids[0]

    return DecisionActor


async def timed_calls(call: Any, count: int, concurrency: int) -> tuple[list[int], float]:
    samples: list[int] = []
    per_worker = max(1, count // concurrency)

    async def worker() -> None:
        for _ in range(per_worker):
            started = time.perf_counter_ns()
            await call()
            samples.append(time.perf_counter_ns() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


async def bench_actor(replicas: int, calls: int, policy: str) -> dict[str, Any]:
    from deployments.router_actor import RouterActor

    _, ids, local = populated_table(replicas)
    decider = decision_actor_class().remote(replicas, policy)
    router = RouterActor.remote()  # type: ignore[attr-defined]
    for rid in ids:
        await router.report_engine.remote(rid, "smollm2-135m", EngineStats(running=3, waiting=1).model_dump())

    async def decide() -> None:
        await decider.choose.remote("me", local)

    async def transport_only() -> None:
        await decider.choose_cached_view.remote(local)

    async def sync() -> None:
        RouterView.model_validate(await router.sync_ingress.remote("me", local))

    out: dict[str, Any] = {}
    for label, call in (("decision_round_trip", decide), ("transport_only_round_trip", transport_only),
                        ("sync_ingress_round_trip", sync)):
        await timed_calls(call, min(200, calls), 1)  # warm-up: worker start, connections
        samples, _ = await timed_calls(call, calls, 1)
        out[label] = summarize_us(samples)
    samples, elapsed = await timed_calls(decide, calls, 16)
    out["decision_round_trip_16_concurrent"] = {**summarize_us(samples), "calls_per_s": round(len(samples) / elapsed, 1)}
    import ray

    ray.kill(decider)
    ray.kill(router)
    return out


async def run_actor_benchmarks(replica_counts: list[int], calls: int, policy: str) -> dict[str, Any]:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    # address="local" always starts a fresh head; its GCS takes a random free port (never 6379).
    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1",
             namespace=f"router-hop-{uuid.uuid4().hex[:6]}", log_to_driver=False)
    try:
        return {str(n): await bench_actor(n, calls, policy) for n in replica_counts}
    finally:
        ray.shutdown()


def print_table(in_process: dict[str, Any], actor: dict[str, Any]) -> None:
    rows: list[tuple[str, dict[str, Any]]] = []
    for n, results in in_process.items():
        rows += [(f"N={n:>3} in-process {name}", r) for name, r in results.items()]
    for n, results in actor.items():
        rows += [(f"N={n:>3} actor {name}", r) for name, r in results.items()]
    print(f"{'what':62s} {'p50 µs':>10s} {'p99 µs':>10s} {'mean µs':>10s}")
    for label, r in rows:
        extra = f"  ({r['calls_per_s']:.0f} calls/s)" if "calls_per_s" in r else ""
        print(f"{label:62s} {r['p50_us']:10.2f} {r['p99_us']:10.2f} {r['mean_us']:10.2f}{extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[2, 8, 32], help="engine replicas in the view")
    parser.add_argument("--calls", type=int, default=100_000, help="in-process calls per policy")
    parser.add_argument("--actor-calls", type=int, default=2000, help="actor round trips per measurement")
    parser.add_argument("--policy", default="least_loaded_p2c", choices=sorted(POLICIES))
    parser.add_argument("--no-actor", action="store_true", help="skip the Ray part")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    in_process = {str(n): bench_in_process(n, args.calls) for n in args.replicas}
    actor = {} if args.no_actor else asyncio.run(run_actor_benchmarks(args.replicas, args.actor_calls, args.policy))
    print_table(in_process, actor)
    payload = {
        "benchmark": "router_hop",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2)},
        "params": vars(args),
        "in_process": in_process,
        "actor": actor,
    }
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        f.write(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
