"""One model's routing state inside one ingress replica: the view, our in-flight counts, the policy.

deployments/request_router.py (Ray Serve's request router) wraps it and adds only the Serve
plumbing and the sync with the router actor; the simulator benchmarks drive this same object.

In-flight counts move at decision time, not when Serve sends the request: a burst routed in one
tick would otherwise all see the same counts and pile onto one replica. A reservation is corrected
when the request is actually sent (`routed`) and dropped after 30 s if it never was (a request
cancelled before Serve sent it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from crosslogic.routing.affinity_keys import routing_prefix, session_hash
from crosslogic.routing.hints import RoutingHints
from crosslogic.routing.load_table import ReplicaLoad
from crosslogic.routing.policies import RoutingPolicy
from crosslogic.routing.policy_config import AffinityOptions

_RESERVATION_TTL_S = 30.0


class LocalRouter:
    def __init__(self, policy: RoutingPolicy, options: AffinityOptions | None = None) -> None:
        self.policy = policy
        self._options = options or AffinityOptions()
        self.view: Mapping[str, ReplicaLoad] = {}
        self.local: dict[str, int] = {}
        # request key -> (replica id, when reserved)
        self._reserved: dict[str, tuple[str, float]] = {}

    def fill_keys(self, hints: RoutingHints, endpoint: Any, body: Any) -> None:
        """The affinity keys this policy uses, computed once per request (hints live per attempt)."""
        if not isinstance(body, Mapping):
            return
        if self.policy.needs_prefix and hints.prefix_hashes is None:
            hints.prefix_hashes = routing_prefix(
                str(endpoint), body,
                block_chars=self._options.prefix_block_chars, max_chars=self._options.prefix_max_chars,
            )
        if self.policy.needs_session and hints.session_hash is None:
            hints.session_hash = session_hash(body, hints.session_key)

    def choose(self, replica_ids: Sequence[str], hints: RoutingHints | None) -> list[str]:
        """Replica ids best first, skipping those this request already failed on (unless all did)."""
        allowed = [rid for rid in replica_ids if hints is None or rid not in hints.exclude]
        if not allowed:  # every replica was excluded: any is better than none
            allowed = list(replica_ids)
        return self.policy.rank(allowed, self.view, self.local, hints)

    def _add(self, rid: str, delta: int) -> None:
        count = self.local.get(rid, 0) + delta
        if count > 0:
            self.local[rid] = count
        else:
            self.local.pop(rid, None)

    def reserve(self, request_key: str, rid: str, now: float) -> None:
        previous = self._reserved.get(request_key)
        if previous is not None:
            self._add(previous[0], -1)
        self._add(rid, 1)
        self._reserved[request_key] = (rid, now)

    def routed(self, request_key: str, rid: str) -> None:
        """The request was sent to `rid` (perhaps not the replica reserved for it)."""
        reserved = self._reserved.pop(request_key, None)
        if reserved is None or reserved[0] != rid:
            if reserved is not None:
                self._add(reserved[0], -1)
            self._add(rid, 1)

    def completed(self, rid: str) -> None:
        self._add(rid, -1)

    def replica_gone(self, rid: str) -> None:
        self.local.pop(rid, None)

    def drop_stale_reservations(self, now: float) -> None:
        cutoff = now - _RESERVATION_TTL_S
        for key in [k for k, (_, at) in self._reserved.items() if at < cutoff]:
            self._add(self._reserved.pop(key)[0], -1)
