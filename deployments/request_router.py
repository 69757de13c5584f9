"""Serve request router for engine deployments: routes by the router actor's queue-depth view.

It runs inside each ingress replica (in the deployment handle), so the decision is local: a
background task syncs with the router actor every `refresh_interval_s` (pushing this replica's
in-flight counts, pulling everyone else's and the engines' queue state), and `choose_replicas`
only reads memory. No actor round trip on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

from crosslogic.routing.hints import RoutingHints
from crosslogic.routing.load_table import ReplicaLoad, RouterView
from crosslogic.routing.policies import Policy, get_policy

logger = logging.getLogger("ray.serve")


def _hints(pending: PendingRequest | None) -> RoutingHints | None:
    if pending is None:
        return None
    for arg in (*pending.args, *pending.kwargs.values()):
        if isinstance(arg, RoutingHints):
            return arg
    return None


class QueueDepthRouter(FIFOMixin, RequestRouter):
    def initialize_state(
        self,
        policy: str = "least_loaded_p2c",
        refresh_interval_s: float = 0.2,
        stale_after_s: float = 5.0,
    ) -> None:
        self._policy: Policy = get_policy(policy)
        self._refresh_interval_s = refresh_interval_s
        self._stale_after_s = stale_after_s
        self._local: dict[str, int] = {}
        self._view: dict[str, ReplicaLoad] = {}
        self._rng = random.Random()
        self._ingress_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._sync_task: asyncio.Task[None] | None = None
        # Requests count against a replica from the moment we pick it, not from when Serve sends
        # them: a burst routed in one tick would otherwise all see the same counts and pile onto
        # one replica. internal request id -> (replica id, when), corrected in on_request_routed.
        self._reserved: dict[str, tuple[str, float]] = {}

    def _ensure_sync(self) -> None:
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        from deployments.router_actor import get_router

        router: Any = None
        while True:
            try:
                if router is None:
                    router = get_router(self._stale_after_s)
                self._drop_stale_reservations()
                raw = await router.sync_ingress.remote(self._ingress_id, dict(self._local))
                self._view = RouterView.model_validate(raw).replicas
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the actor restarting: keep routing on local counts
                logger.warning("router actor sync failed: %r", exc)
                router = None
                self._view = {}
            await asyncio.sleep(self._refresh_interval_s)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        self._ensure_sync()
        if not candidate_replicas:
            return []
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        hints = _hints(pending_request)
        allowed = [rid for rid in by_id if hints is None or rid not in hints.exclude]
        if not allowed:  # every replica was excluded: any is better than none
            allowed = list(by_id)
        ranked = self._policy(allowed, self._view, self._local, self._rng)
        if pending_request is not None:
            self._reserve(pending_request.metadata.internal_request_id, ranked[0])
        ranks = [[by_id[ranked[0]]]]
        if len(ranked) > 1:
            ranks.append([by_id[rid] for rid in ranked[1:]])
        return ranks

    def _add(self, rid: str, delta: int) -> None:
        count = self._local.get(rid, 0) + delta
        if count > 0:
            self._local[rid] = count
        else:
            self._local.pop(rid, None)

    def _reserve(self, request_key: str, rid: str) -> None:
        previous = self._reserved.get(request_key)
        if previous is not None:
            self._add(previous[0], -1)
        self._add(rid, 1)
        self._reserved[request_key] = (rid, time.monotonic())

    def _drop_stale_reservations(self) -> None:
        # A request cancelled before Serve sent it never reaches on_request_routed.
        cutoff = time.monotonic() - 30.0
        for key in [k for k, (_, at) in self._reserved.items() if at < cutoff]:
            self._add(self._reserved.pop(key)[0], -1)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        rid = replica_id.unique_id
        reserved = self._reserved.pop(pending_request.metadata.internal_request_id, None)
        if reserved is None or reserved[0] != rid:
            if reserved is not None:
                self._add(reserved[0], -1)
            self._add(rid, 1)
        hints = _hints(pending_request)
        if hints is not None:
            hints.chosen = rid

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._add(replica_id.unique_id, -1)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._local.pop(replica_id.unique_id, None)
