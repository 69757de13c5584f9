"""Serve request router for engine deployments: routes by the router actor's queue-depth view, with
the model's policy (crosslogic/routing/policies.py) over crosslogic/routing/local_router.py.

It runs inside each ingress replica (in the deployment handle), so the decision is local: a
background task syncs with the router actor every `refresh_interval_s` (pushing this replica's
in-flight counts, pulling everyone else's and the engines' queue state; `idle_refresh_interval_s`
while nothing moves, until the next request), and `choose_replicas` only reads memory. No actor
round trip on the request path.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

from crosslogic.idle_pacer import IdlePacer
from crosslogic.routing.hints import RoutingHints
from crosslogic.routing.load_table import ReplicaLoad, RouterView
from crosslogic.routing.local_router import LocalRouter
from crosslogic.routing.policies import make_policy
from crosslogic.routing.policy_config import AffinityOptions
from crosslogic.supervisor import supervise
from deployments.loop_metrics import RayLoopRestarts

logger = logging.getLogger("ray.serve")


def _hints(pending: PendingRequest | None) -> RoutingHints | None:
    if pending is None:
        return None
    for arg in (*pending.args, *pending.kwargs.values()):
        if isinstance(arg, RoutingHints):
            return arg
    return None


def _loaded(view: Mapping[str, ReplicaLoad]) -> bool:
    """Some engine is working, or another ingress has requests in flight: their figures move."""
    return any(r.running or r.waiting or r.remote_in_flight for r in view.values())


class QueueDepthRouter(FIFOMixin, RequestRouter):
    # Serve calls it with the deployment's request_router_kwargs (app_builder.py) as these keywords;
    # the base class declares only **kwargs.
    def initialize_state(  # type: ignore[override]
        self,
        policy: str = "least_loaded_p2c",
        refresh_interval_s: float = 0.2,
        stale_after_s: float = 5.0,
        idle_refresh_interval_s: float = 1.0,
        affinity: dict[str, Any] | None = None,
    ) -> None:
        options = AffinityOptions.model_validate(affinity or {})
        # One model's routing state in this ingress replica (policy, view, our in-flight counts).
        self._routing = LocalRouter(make_policy(policy, options, random.Random()), options)
        # Every refresh_interval_s while requests come (or are in flight, or the view shows load
        # anywhere), every idle_refresh_interval_s otherwise; a request ends an idle wait at once.
        self._pacer = IdlePacer(refresh_interval_s, max(refresh_interval_s, idle_refresh_interval_s))
        self._stale_after_s = stale_after_s
        self._ingress_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._sync_task: asyncio.Task[None] | None = None
        self._restarts: RayLoopRestarts | None = None

    def _ensure_sync(self) -> None:
        if self._sync_task is None or self._sync_task.done():
            if self._restarts is None:
                self._restarts = RayLoopRestarts()
            self._sync_task = asyncio.get_running_loop().create_task(
                supervise("router_view_sync", self._sync_loop, restarts=self._restarts))

    async def _sync_loop(self) -> None:
        from deployments.actor_calls import call_with_timeout
        from deployments.router_actor import ROUTER_CALL_TIMEOUT_S, get_router, router_call_failed

        routing = self._routing
        while True:
            try:
                router = get_router(self._stale_after_s)
                routing.drop_stale_reservations(time.monotonic())
                raw = await call_with_timeout(
                    router.sync_ingress.remote(self._ingress_id, dict(routing.local)), ROUTER_CALL_TIMEOUT_S)
                routing.view = RouterView.model_validate(raw).replicas
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the actor restarting: keep routing on local counts
                logger.warning("router actor sync failed: %r", exc)
                router_call_failed(exc)
                routing.view = {}
            await self._pacer.wait(busy=bool(routing.local) or _loaded(routing.view))

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        self._ensure_sync()
        self._pacer.wake()
        if not candidate_replicas:
            return []
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        hints = _hints(pending_request)
        if hints is not None and pending_request is not None and len(pending_request.args) >= 2:
            # EngineServer.generate(endpoint, body, request_id, hints)
            self._routing.fill_keys(hints, pending_request.args[0], pending_request.args[1])
        ranked = self._routing.choose(list(by_id), hints)
        if pending_request is not None:
            self._routing.reserve(pending_request.metadata.internal_request_id, ranked[0], time.monotonic())
        ranks = [[by_id[ranked[0]]]]
        if len(ranked) > 1:
            ranks.append([by_id[rid] for rid in ranked[1:]])
        return ranks

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        rid = replica_id.unique_id
        self._routing.routed(pending_request.metadata.internal_request_id, rid)
        hints = _hints(pending_request)
        if hints is not None:
            hints.routed(rid)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._routing.completed(replica_id.unique_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._routing.replica_gone(replica_id.unique_id)
