"""The fair queue in the request path: a Gateway whose `stream` first takes a slot of the model's
FairQueue for the caller's tenant and gives it back when the engine stream ends (however it ends)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

from crosslogic.api.gateway import Gateway, Readiness
from crosslogic.config import AppConfig
from crosslogic.engine.base import Endpoint, EngineEvent, ModelCard
from crosslogic.fairness.config import FairnessConfig
from crosslogic.fairness.fair_queue import FairQueue
from crosslogic.routing.hints import RoutingHints


class FairQueues:
    """One FairQueue per model. `replicas(model)`: the model's engine replicas; each of
    `ingress_replicas` fills its share of their slots. `external(model)`: slots held elsewhere
    counted against this replica's (none while shares are static)."""

    def __init__(
        self,
        config: FairnessConfig,
        replicas: Callable[[str], int],
        *,
        ingress_replicas: int = 1,
        external: Callable[[str], int] = lambda _model: 0,
    ) -> None:
        self.config = config
        self._replicas = replicas
        self._ingress_replicas = ingress_replicas
        self._external = external
        self._queues: dict[str, FairQueue] = {}

    def queue(self, model: str) -> FairQueue:
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = FairQueue(
                lambda: self._share(model, self.config.slots_per_replica),
                external=lambda: self._external(model),
                burst=self._share(model, self.config.burst_per_replica),
                max_wait_s=self.config.max_wait_s, max_waiting=self.config.max_waiting,
            )
        return queue

    def _share(self, model: str, per_replica: int) -> int:
        return math.ceil(self._replicas(model) * per_replica / self._ingress_replicas)

    def gateway(self, inner: Gateway, tenant: str, weight: float | None) -> Gateway:
        return _FairGateway(inner, self, tenant, weight if weight is not None else self.config.default_weight)


class _FairGateway:
    def __init__(self, inner: Gateway, queues: FairQueues, tenant: str, weight: float) -> None:
        self._inner = inner
        self._queues = queues
        self._tenant = tenant
        self._weight = weight

    def models(self) -> list[ModelCard]:
        return self._inner.models()

    async def readiness(self) -> Readiness:
        return await self._inner.readiness()

    async def stream(
        self, model: str, endpoint: Endpoint, body: dict[str, Any], request_id: str, hints: RoutingHints
    ) -> AsyncIterator[EngineEvent]:
        slot = await self._queues.queue(model).acquire(self._tenant, self._weight)
        try:
            async for event in self._inner.stream(model, endpoint, body, request_id, hints):
                yield event
        finally:
            slot.release()


def fair_queues(config: AppConfig) -> FairQueues | None:
    """The ingress's fair queues from the app config; None when `fairness.enabled` is off."""
    if not config.fairness.enabled:
        return None

    def replicas(model: str) -> int:
        deployment = config.model(model)
        return deployment.num_replicas if deployment is not None else 1

    return FairQueues(config.fairness, replicas, ingress_replicas=config.ingress.num_replicas)
