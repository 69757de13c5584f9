"""A fleet of simulated engine replicas behind simulated ingress replicas, on a virtual clock.

What is real: the routing policies, the ingress's routing state (crosslogic/routing/local_router.py,
as deployments/request_router.py uses it), the router actor's LoadTable, the engine simulator
(crosslogic/engine/simulator.py) with its queue and prefix cache. What is simulated: time, and the
transport (a request reaches its replica at once; Ray is not involved, so 64 or 256 replicas fit
in one process on a 2-core machine).

Time is virtual: `VirtualTimeLoop` is an asyncio loop whose clock jumps to the next timer whenever
nothing is ready, so a 60 s run takes only the CPU its events need, and CPU spent routing costs no
simulated time (it is measured on its own).
"""

from __future__ import annotations

import asyncio
import random
import selectors
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from crosslogic.config import ModelDeploymentConfig
from crosslogic.engine.base import CHUNK, ERROR
from crosslogic.engine.simulator import SimulatorEngine
from crosslogic.routing.hints import RoutingHints
from crosslogic.routing.load_table import LoadTable
from crosslogic.routing.local_router import LocalRouter
from crosslogic.routing.policies import make_policy
from crosslogic.routing.policy_config import AffinityOptions

ENGINE_REPORT_S = 0.5  # RouterConfig defaults
VIEW_REFRESH_S = 0.2
MAX_ONGOING = 64  # Serve's max_ongoing_requests per engine replica (serve_config.yaml)


class _VirtualSelector(selectors.DefaultSelector):
    now = 0.0

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if not events and timeout:
            self.now += timeout
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_virtual(coro: Any) -> Any:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@dataclass
class Request:
    body: dict[str, Any]
    session: str | None = None
    on_done: Callable[[int], None] | None = None  # told the completion tokens


Workload = Callable[[random.Random], Request]


@dataclass
class Sample:
    arrived: float
    ttft: float
    replica: str


@dataclass
class RunResult:
    samples: list[Sample] = field(default_factory=list)
    decisions_ns: list[int] = field(default_factory=list)
    load_samples: dict[str, list[int]] = field(default_factory=dict)
    errors: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


class Fleet:
    def __init__(
        self, replicas: int, sim: dict[str, Any], policy: str, *, ingresses: int = 2,
        options: AffinityOptions | None = None, seed: int = 1,
    ) -> None:
        config = ModelDeploymentConfig.model_validate({
            "served_name": "sim", "source": "simulated", "engine": {"kind": "simulator", "simulator": sim}})
        self.ids = [f"replica-{i:03d}" for i in range(replicas)]
        self.engines = {rid: SimulatorEngine(config, replica_rank=i) for i, rid in enumerate(self.ids)}
        self.table = LoadTable()
        options = options or AffinityOptions()
        self.routers = [
            LocalRouter(make_policy(policy, options, random.Random(seed + n)), options) for n in range(ingresses)]
        self.in_flight = {rid: 0 for rid in self.ids}
        self._tasks: list[asyncio.Task[None]] = []
        self._next_ingress = 0
        self._request_no = 0

    async def start(self) -> None:
        for engine in self.engines.values():
            await engine.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._report_loop()))
        for n, router in enumerate(self.routers):
            self._tasks.append(loop.create_task(self._sync_loop(f"ingress-{n}", router)))
        await asyncio.sleep(VIEW_REFRESH_S + ENGINE_REPORT_S)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for engine in self.engines.values():
            await engine.shutdown()

    async def _report_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:  # every engine reports each interval (phases aside), as EngineServer does
            now = loop.time()
            for rid, engine in self.engines.items():
                self.table.report_engine(rid, "sim", engine.stats(), now)
            await asyncio.sleep(ENGINE_REPORT_S)

    async def _sync_loop(self, ingress_id: str, router: LocalRouter) -> None:
        loop = asyncio.get_running_loop()
        while True:  # QueueDepthRouter._sync_loop without the actor hop
            self.table.report_ingress(ingress_id, dict(router.local), loop.time())
            router.view = self.table.view(loop.time(), for_ingress=ingress_id).replicas
            await asyncio.sleep(VIEW_REFRESH_S)

    def prefix_cache(self) -> tuple[int, int]:
        queries = hits = 0
        for engine in self.engines.values():
            stats = engine.stats()
            queries += stats.prefix_cache_queries
            hits += stats.prefix_cache_hits
        return queries, hits

    async def send(self, request: Request, result: RunResult) -> None:
        loop = asyncio.get_running_loop()
        router = self.routers[self._next_ingress]
        self._next_ingress = (self._next_ingress + 1) % len(self.routers)
        self._request_no += 1
        key = f"req-{self._request_no}"
        hints = RoutingHints(session_key=request.session)
        started = time.perf_counter_ns()
        router.fill_keys(hints, "chat", request.body)
        ranked = router.choose(self.ids, hints)
        result.decisions_ns.append(time.perf_counter_ns() - started)
        # Serve's back-pressure: a replica at max_ongoing_requests is skipped for the next ranked.
        rid = next((r for r in ranked if self.in_flight[r] < MAX_ONGOING), ranked[0])
        router.reserve(key, rid, loop.time())
        router.routed(key, rid)
        self.in_flight[rid] += 1
        arrived = loop.time()
        ttft: float | None = None
        completion = 0
        try:
            async for event in self.engines[rid].generate("chat", request.body, key):
                if event[0] == ERROR:
                    result.errors += 1
                    return
                if event[0] == CHUNK:
                    if ttft is None:
                        ttft = loop.time() - arrived
                    completion = event[2]["completion_tokens"]
        finally:
            self.in_flight[rid] -= 1
            router.completed(rid)
        if ttft is not None:
            result.samples.append(Sample(arrived, ttft, rid))
        if request.on_done is not None:
            request.on_done(completion)

    async def sample_loads(self, result: RunResult, every_s: float, until: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            for rid, count in self.in_flight.items():
                result.load_samples.setdefault(rid, []).append(count)
            await asyncio.sleep(every_s)


async def open_loop(
    fleet: Fleet, make_request: Callable[[random.Random], Request], rate: float, duration_s: float,
    warmup_s: float, seed: int = 7,
) -> RunResult:
    """Poisson arrivals at `rate`/s for `duration_s`; samples kept after `warmup_s`."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    result = RunResult()
    start = loop.time()
    sampler = loop.create_task(fleet.sample_loads(result, 0.5, start + duration_s))
    pending: set[asyncio.Task[None]] = set()
    t = start
    while t < start + duration_s:
        t += rng.expovariate(rate)
        delay = t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(fleet.send(make_request(rng), result))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    await sampler
    cutoff = start + warmup_s
    result.samples = [s for s in result.samples if s.arrived >= cutoff]
    warm = int(warmup_s / 0.5)
    result.load_samples = {rid: v[warm:] for rid, v in result.load_samples.items()}
    return result


async def closed_loop_throughput(fleet: Fleet, make_request: Workload, clients: int, duration_s: float, warmup_s: float) -> float:
    """Completed requests per second with `clients` always waiting: the fleet's capacity."""
    rng, loop, result = random.Random(3), asyncio.get_running_loop(), RunResult()
    start, done = loop.time(), [0]

    async def client() -> None:
        while loop.time() < start + warmup_s + duration_s:
            await fleet.send(make_request(rng), result)
            if loop.time() >= start + warmup_s:
                done[0] += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return done[0] / (loop.time() - start - warmup_s)


def summarize_ttft(result: RunResult) -> dict[str, float]:
    ttfts = [s.ttft * 1000 for s in result.samples]
    return {
        "requests": len(ttfts),
        "ttft_p50_ms": round(percentile(ttfts, 0.50), 1),
        "ttft_p90_ms": round(percentile(ttfts, 0.90), 1),
        "ttft_p99_ms": round(percentile(ttfts, 0.99), 1),
        "ttft_mean_ms": round(statistics.fmean(ttfts), 1) if ttfts else float("nan"),
        "errors": result.errors,
    }


def load_balance(result: RunResult) -> dict[str, float]:
    """Time-averaged requests in flight per replica: max over mean (1.0 = perfectly even); and the
    same for requests served."""
    means = [statistics.fmean(v) for v in result.load_samples.values() if v]
    served: dict[str, int] = {}
    for s in result.samples:
        served[s.replica] = served.get(s.replica, 0) + 1
    counts = [served.get(rid, 0) for rid in result.load_samples]
    mean_load = statistics.fmean(means) if means else 0.0
    mean_served = statistics.fmean(counts) if counts else 0.0
    return {
        "load_max_over_mean": round(max(means) / mean_load, 3) if mean_load else float("nan"),
        "served_max_over_mean": round(max(counts) / mean_served, 3) if mean_served else float("nan"),
    }
