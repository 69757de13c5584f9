"""Routing policies, registered by name (`router.policy` in serve_config.yaml).

A policy ranks candidate replicas for one request from the ingress replica's local view: the router
actor's latest `RouterView` plus this ingress replica's own in-flight counts, which are exact and
current. Nothing on this path waits on another process.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

from crosslogic.routing.load_table import ReplicaLoad

# candidates, view, local in-flight, rng -> replica ids, best first
Policy = Callable[[Sequence[str], Mapping[str, ReplicaLoad], Mapping[str, int], random.Random], list[str]]


def load_score(replica_id: str, view: Mapping[str, ReplicaLoad], local: Mapping[str, int]) -> float:
    """Expected queue depth a new request would join on this replica.

    In-flight requests (ours exactly, others' as last reported) are what the replica is busy with;
    the engine's waiting count adds what it could not schedule (KV-cache pressure) on top of them.
    KV-cache use breaks ties. A replica without a fresh report counts only what we know we sent.
    """
    mine = local.get(replica_id, 0)
    entry = view.get(replica_id)
    if entry is None or not entry.fresh:
        return float(mine)
    busy = max(entry.running, mine + entry.remote_in_flight)
    return busy + entry.waiting + entry.kv_cache_usage * 0.5


def least_loaded_p2c(
    candidates: Sequence[str],
    view: Mapping[str, ReplicaLoad],
    local: Mapping[str, int],
    rng: random.Random,
) -> list[str]:
    """Power of two choices: sample two, prefer the less loaded; the rest follow as fallbacks."""
    if len(candidates) <= 1:
        return list(candidates)
    a, b = rng.sample(list(candidates), 2)
    first, second = sorted((a, b), key=lambda r: load_score(r, view, local))
    rest = [r for r in candidates if r not in (first, second)]
    return [first, second, *rest]


def least_loaded(
    candidates: Sequence[str],
    view: Mapping[str, ReplicaLoad],
    local: Mapping[str, int],
    rng: random.Random,
) -> list[str]:
    """Exact least loaded over every candidate; ties broken at random."""
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda r: load_score(r, view, local))


POLICIES: Mapping[str, Policy] = {
    "least_loaded_p2c": least_loaded_p2c,
    "least_loaded": least_loaded,
}


def get_policy(name: str) -> Policy:
    try:
        return POLICIES[name]
    except KeyError:
        from crosslogic.errors import ConfigError

        raise ConfigError(
            f"unknown routing policy {name!r}; known: {', '.join(sorted(POLICIES))}"
        ) from None
