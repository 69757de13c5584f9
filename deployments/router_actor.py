"""The router actor: one named actor per cluster holding the load table (`crosslogic.routing`).

Engines push their queue state to it; ingress replicas push their in-flight counts and pull its view
in the same call, off the request path. It also holds the live view of regions (`RegionTable`): the
ingress replica that accepted a region's heartbeat reports it here, and every replica reads it. It
keeps nothing that reports do not rebuild, so a restart (`max_restarts=-1`) costs at most one report
interval of knowledge.
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray.exceptions import RayActorError

from crosslogic.engine.base import EngineStats
from crosslogic.regions.protocol import Heartbeat
from crosslogic.regions.state import RegionTable
from crosslogic.routing.load_table import LoadTable
from deployments.named_actors import forget, named_actor
from deployments.ray_metrics import RegionGauges

ROUTER_NAME = "crosslogic-router"
# Periodic calls (view sync, region view) give up waiting after this; the next round asks again.
ROUTER_CALL_TIMEOUT_S = 5.0
NAMESPACE = "crosslogic"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class RouterActor:
    def __init__(self, stale_after_s: float = 5.0) -> None:
        self._table = LoadTable(stale_after_s=stale_after_s)
        self._regions = RegionTable()
        self._region_gauges = RegionGauges()
        self._started_at = time.time()

    def report_engine(self, replica_id: str, model: str, stats: dict[str, Any]) -> None:
        self._table.report_engine(replica_id, model, EngineStats.model_validate(stats), time.monotonic())

    def remove_replica(self, replica_id: str) -> None:
        self._table.remove_replica(replica_id)

    def sync_ingress(self, ingress_id: str, in_flight: dict[str, int]) -> dict[str, Any]:
        now = time.monotonic()
        self._table.report_ingress(ingress_id, in_flight, now)
        return self._table.view(now, for_ingress=ingress_id).model_dump()

    def engines(self) -> dict[str, Any]:
        return {
            rid: {"model": model, "stats": stats.model_dump(), "fresh": fresh}
            for rid, (model, stats, fresh) in self._table.engines(time.monotonic()).items()
        }

    def report_region(
        self, heartbeat: dict[str, Any], operator_drained: bool, missed_heartbeats: int, secret_generation: int = 1
    ) -> None:
        # Reports and views both happen here: the monotonic clock makes ages immune to clock steps.
        self._regions.report(
            Heartbeat.model_validate(heartbeat), time.monotonic(), operator_drained=operator_drained,
            secret_generation=secret_generation, missed_heartbeats=missed_heartbeats,
        )

    def regions(self) -> dict[str, dict[str, Any]]:
        views = {name: view.model_dump(mode="json") for name, view in self._regions.view(time.monotonic()).items()}
        self._region_gauges.update(views)  # every ingress replica asks several times a second: fresh enough
        return views

    def set_region_drained(self, name: str, drained: bool) -> None:
        self._regions.set_operator_drained(name, drained)

    def forget_region(self, name: str) -> None:
        self._regions.forget(name)

    def ping(self) -> float:
        return self._started_at


def get_router(stale_after_s: float = 5.0) -> Any:
    """The cluster's router actor, created on first use by whichever replica needs it first; one
    handle per process (`named_actors`)."""
    return named_actor(RouterActor, ROUTER_NAME, NAMESPACE, stale_after_s)


def ensure_router_alive(stale_after_s: float, timeout_s: float = 120.0) -> None:
    """Create the router actor and wait until it answers, at deploy (the app builder), before any
    replica looks it up.

    Why: a process that looked the actor up while it was still PENDING_CREATION, and had not created
    it itself, sometimes never saw it become ALIVE (Ray 2.60): every call from that process timed out
    for good while other processes' calls worked (CI: one ingress replica of two on the serve stack;
    the local stack's only ingress, /ready false for 600 s, also under heavy load here). The creator
    learns of the creation from GCS's reply, not from the pub-sub; a replica that finds it ALIVE
    never waits on it. No-op outside a Ray cluster (an app built for inspection).
    """
    if ray.is_initialized():
        ray.get(get_router(stale_after_s).ping.remote(), timeout=timeout_s)


def router_call_failed(exc: BaseException) -> None:
    """After a failed call: a dead actor (killed for good) is looked up, or created, again next time;
    a timeout or a restart keeps the handle, which stays valid across restarts."""
    if isinstance(exc, RayActorError):
        forget(ROUTER_NAME, NAMESPACE)
