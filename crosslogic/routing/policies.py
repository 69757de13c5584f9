"""Routing policies, registered by name (`router.policy` in serve_config.yaml, per model or per app).

A policy ranks candidate replicas for one request from the ingress replica's local view: the router
actor's latest `RouterView` plus this ingress replica's own in-flight counts, which are exact and
current, plus the request's affinity keys in its `RoutingHints` (crosslogic/routing/affinity_keys.py).
Nothing on this path waits on another process.

- least_loaded_p2c (default): two replicas sampled, the less loaded first.
- least_loaded: every candidate scored, the least loaded first.
- prefix_aware: the replica this ingress last sent the longest matching prompt prefix to, if it has
  room; else the home of the prompt's anchor (a chat's instructions and first turn: its
  conversation; a plain prompt's first block) on a consistent-hash ring, with bounded load
  (crosslogic/routing/hash_ring.py); requests without either go least loaded.
- session_affinity: the same, keyed by the session header or OpenAI's `user`.
- round_robin: each candidate in turn, blind to load: a baseline for benchmarks, not for production.

A policy object belongs to one model's request router in one ingress replica (it may keep state:
the affinity index, the ring, the round-robin position) and is used from one event loop.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, get_args

from crosslogic.routing.hash_ring import HashRing, capacity
from crosslogic.routing.hints import RoutingHints
from crosslogic.routing.load_table import ReplicaLoad
from crosslogic.routing.policy_config import AffinityOptions, PolicyName


class RoutingPolicy(Protocol):
    # Which affinity keys the caller must put in the hints before `rank` (computing them costs).
    needs_prefix: bool
    needs_session: bool

    def rank(
        self,
        candidates: Sequence[str],
        view: Mapping[str, ReplicaLoad],
        local: Mapping[str, int],
        hints: RoutingHints | None,
    ) -> list[str]:
        """Replica ids, best first; every candidate once."""
        ...


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


def queue_depth(replica_id: str, view: Mapping[str, ReplicaLoad], local: Mapping[str, int]) -> int:
    """`load_score` in whole requests (no KV-cache tie-break): what the load bound counts."""
    mine = local.get(replica_id, 0)
    entry = view.get(replica_id)
    if entry is None or not entry.fresh:
        return mine
    return max(entry.running, mine + entry.remote_in_flight) + entry.waiting


def least_loaded_p2c(
    candidates: Sequence[str],
    view: Mapping[str, ReplicaLoad],
    local: Mapping[str, int],
    rng: random.Random,
) -> list[str]:
    """Power of two choices: sample two, prefer the less loaded; the rest follow as fallbacks."""
    if len(candidates) <= 1:
        return list(candidates)
    a, b = rng.sample(candidates, 2) if isinstance(candidates, list) else rng.sample(list(candidates), 2)
    first, second = sorted((a, b), key=lambda r: load_score(r, view, local))
    rest = [r for r in candidates if r != first and r != second]
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


class _LoadPolicy:
    """A stateless load policy (least_loaded_p2c, least_loaded) with its own random source."""

    needs_prefix = False
    needs_session = False

    def __init__(
        self,
        choose: Callable[[Sequence[str], Mapping[str, ReplicaLoad], Mapping[str, int], random.Random], list[str]],
        rng: random.Random,
    ) -> None:
        self._choose = choose
        self._rng = rng

    def rank(
        self, candidates: Sequence[str], view: Mapping[str, ReplicaLoad], local: Mapping[str, int],
        hints: RoutingHints | None,
    ) -> list[str]:
        return self._choose(candidates, view, local, self._rng)


class RoundRobin:
    """Each candidate in turn, blind to load: the baseline the benchmarks compare against."""

    needs_prefix = False
    needs_session = False

    def __init__(self) -> None:
        self._next = 0

    def rank(
        self, candidates: Sequence[str], view: Mapping[str, ReplicaLoad], local: Mapping[str, int],
        hints: RoutingHints | None,
    ) -> list[str]:
        if not candidates:
            return []
        at = self._next % len(candidates)
        self._next = at + 1
        return [*candidates[at:], *candidates[:at]]


class _BoundedAffinity:
    """Affinity keys placed by bounded-load consistent hashing, remembering where keys went.

    Keys come shortest prefix first. The index maps a key (a prefix hash, a session hash) to the
    replica this ingress replica last sent it to: that replica holds its cache. The longest
    remembered key whose replica is under the load bound wins; otherwise the first replica under the
    bound clockwise from the first key, which every ingress replica computes alike. Only hashes are
    kept, at most `index_entries`, least recently used dropped first.

    Why the anchor and not the first block is a chat's ring key: on the simulator (64 replicas,
    8 system prompts, multi-turn users, two ingress replicas; figures in README, "Why the
    defaults"), keying on the first block grouped every conversation of a system prompt on its ring
    home and successors, each at the load bound, and an ingress that had not seen a conversation's
    last turn sent it where it last sent the system prompt. Keyed on the
    anchor, conversations spread, each replica keeps the few hot system prompts anyway, and every
    ingress sends a conversation's turns to the same home.
    """

    def __init__(self, options: AffinityOptions, rng: random.Random) -> None:
        self._options = options
        self._rng = rng
        self._index: OrderedDict[int, str] = OrderedDict()
        # Rings by replica set; a retry excluding a replica asks for another set, hence a few.
        self._rings: OrderedDict[frozenset[str], HashRing] = OrderedDict()
        self._base_view: Mapping[str, ReplicaLoad] | None = None
        self._base_count = 0
        self._base_total = 0
        self._base_local = 0

    def _keys(self, hints: RoutingHints | None) -> tuple[int, ...]:
        raise NotImplementedError

    def _ring(self, candidates: Sequence[str]) -> HashRing:
        members = frozenset(candidates)
        ring = self._rings.get(members)
        if ring is None:
            ring = HashRing(members, self._options.ring_vnodes)
            self._rings[members] = ring
            if len(self._rings) > 4:
                self._rings.popitem(last=False)
        else:
            self._rings.move_to_end(members)
        return ring

    def _total_load(self, candidates: Sequence[str], view: Mapping[str, ReplicaLoad], local: Mapping[str, int]) -> int:
        """Requests on the candidates, for the bound's mean: summed over every candidate once per view
        (the router's view changes every refresh, 0.2 s), then moved by our own in-flight count only,
        which is all that changes between refreshes: no Python loop over the replicas per decision."""
        local_sum = sum(local.values())
        if view is not self._base_view or len(candidates) != self._base_count:
            self._base_view, self._base_count = view, len(candidates)
            self._base_total = sum(queue_depth(rid, view, local) for rid in candidates)
            self._base_local = local_sum
        return max(0, self._base_total + local_sum - self._base_local)

    def rank(
        self, candidates: Sequence[str], view: Mapping[str, ReplicaLoad], local: Mapping[str, int],
        hints: RoutingHints | None,
    ) -> list[str]:
        keys = self._keys(hints)
        if not keys or len(candidates) <= 1:
            return least_loaded_p2c(candidates, view, local, self._rng)
        ring = self._ring(candidates)
        cap = capacity(self._total_load(candidates, view, local), len(candidates), self._options.load_bound)

        def has_room(rid: str) -> bool:
            return queue_depth(rid, view, local) < cap

        chosen: str | None = None
        for key in reversed(keys):  # the longest remembered prefix first
            rid = self._index.get(key)
            if rid is not None and rid in ring.members and has_room(rid):
                chosen = rid
                break
        if chosen is None:
            chosen = ring.first(keys[0], has_room)
        if chosen is None:  # only with a view that moved under us: the least loaded then
            chosen = min(candidates, key=lambda rid: queue_depth(rid, view, local))
        self._remember(keys, chosen)
        return [chosen] + [rid for rid in candidates if rid != chosen]

    def _remember(self, keys: tuple[int, ...], rid: str) -> None:
        index = self._index
        for key in keys:
            index[key] = rid
            index.move_to_end(key)
        while len(index) > self._options.index_entries:
            index.popitem(last=False)


class PrefixAware(_BoundedAffinity):
    needs_prefix = True
    needs_session = False

    def _keys(self, hints: RoutingHints | None) -> tuple[int, ...]:
        return (hints.prefix_hashes or ()) if hints is not None else ()


class SessionAffinity(_BoundedAffinity):
    needs_prefix = False
    needs_session = True

    def _keys(self, hints: RoutingHints | None) -> tuple[int, ...]:
        if hints is None or hints.session_hash is None:
            return ()
        return (hints.session_hash,)


PolicyFactory = Callable[[AffinityOptions, random.Random], RoutingPolicy]

POLICIES: Mapping[str, PolicyFactory] = {
    "least_loaded_p2c": lambda options, rng: _LoadPolicy(least_loaded_p2c, rng),
    "least_loaded": lambda options, rng: _LoadPolicy(least_loaded, rng),
    "prefix_aware": PrefixAware,
    "session_affinity": SessionAffinity,
    "round_robin": lambda options, rng: RoundRobin(),
}
assert set(POLICIES) == set(get_args(PolicyName)), "policy_config.PolicyName lists every policy"


def get_policy(name: str) -> PolicyFactory:
    try:
        return POLICIES[name]
    except KeyError:
        from crosslogic.errors import ConfigError

        raise ConfigError(
            f"unknown routing policy {name!r}; known: {', '.join(sorted(POLICIES))}"
        ) from None


def make_policy(
    name: str, options: AffinityOptions | None = None, rng: random.Random | None = None
) -> RoutingPolicy:
    """A fresh policy object (its own state) for one model's request router."""
    return get_policy(name)(options or AffinityOptions(), rng or random.Random())
