"""The router actor: one named actor per cluster holding the load table (`crosslogic.routing`).

Engines push their queue state to it; ingress replicas push their in-flight counts and pull its view
in the same call, off the request path. It keeps nothing that reports do not rebuild, so a restart
(`max_restarts=-1`) costs at most one report interval of knowledge.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from crosslogic.engine.base import EngineStats
from crosslogic.routing.load_table import LoadTable

ROUTER_NAME = "crosslogic-router"
NAMESPACE = "crosslogic"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class RouterActor:
    def __init__(self, stale_after_s: float = 5.0) -> None:
        self._table = LoadTable(stale_after_s=stale_after_s)
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

    def ping(self) -> float:
        return self._started_at


def get_router(stale_after_s: float = 5.0) -> Any:
    """The cluster's router actor, created on first use by whichever replica needs it first."""
    return RouterActor.options(  # type: ignore[attr-defined]
        name=ROUTER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(stale_after_s)
