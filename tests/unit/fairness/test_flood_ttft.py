"""Issue 14's fairness test at small scale (benchmarks/fairness.py at full): one tenant floods a model's
engines (closed loop, 100 requests always in flight on 2 simulator replicas of 32-sequence batches),
another sends 4 requests/s; with the fair queue the second's p99 TTFT stays within 2x of its value
alone, without it it does not. Engine simulator on a virtual clock, the real router and fair queue."""

from __future__ import annotations

from benchmarks.fairness import compare
from crosslogic.fairness.config import FairnessConfig


def test_a_flood_does_not_push_another_tenants_p99_ttft_past_twice_its_own() -> None:
    defaults = FairnessConfig()  # slots_per_replica 16, burst_per_replica 4; the simulator batches 32
    result = compare(replicas=2, flood_clients=100, steady_rate=4, duration_s=20,
                     slots_per_replica=defaults.slots_per_replica, burst_per_replica=defaults.burst_per_replica)
    alone, unfair, fair = result["rows"]
    assert alone["steady_requests"] == unfair["steady_requests"] == fair["steady_requests"] > 40
    assert fair["rejected"] == 0 and fair["flood_requests_per_s"] > 0
    assert result["p99_ratio_with_fairness"] <= 2.0, result
    assert result["p99_ratio_without_fairness"] > 5.0, result  # the flood does hurt without it


async def _two_floods(weights: dict[str, float], clients: int, duration_s: float) -> dict[str, int]:
    import asyncio
    import random

    from benchmarks.fairness import SIM, _request
    from benchmarks.sim_fleet import Fleet, RunResult
    from crosslogic.fairness.fair_queue import FairQueue

    fleet = Fleet(2, SIM, "least_loaded_p2c")
    await fleet.start()
    queue = FairQueue(lambda: 32, burst=8)
    loop = asyncio.get_running_loop()
    end = loop.time() + duration_s
    done = dict.fromkeys(weights, 0)

    async def client(tenant: str, n: int) -> None:
        rng = random.Random(n)
        while loop.time() < end:
            slot = await queue.acquire(tenant, weights[tenant])
            if loop.time() < end:  # not the queues' drain after the end (each tenant's backlog)
                done[tenant] += 1
            try:
                await fleet.send(_request(rng, tenant, 64), RunResult())
            finally:
                slot.release()

    await asyncio.gather(*(client(t, n) for t in weights for n in range(clients)))
    await fleet.stop()
    return done


def test_two_floods_share_the_engines_by_weight() -> None:
    """Slots granted while both flood (80 clients each, 32 slots on 2 simulator replicas), weights 3:1."""
    from benchmarks.sim_fleet import run_virtual

    done = run_virtual(_two_floods({"gold": 3.0, "basic": 1.0}, clients=80, duration_s=30))
    ratio = done["gold"] / done["basic"]
    assert 2.5 <= ratio <= 3.5, done
