"""The billing actor: one detached, named actor per cluster running `BillingService`.

Detached and restarted forever (`max_restarts=-1`): it holds no state, so a restart simply resumes
from PostgreSQL once `start()` or `status()` is called again (the /ready probe does); a second copy
(e.g. during a restart race) is harmless because work is claimed with leases. Its counters are
exported to Ray's metrics as counters, the export lag as a gauge.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from billing.config import BillingConfig
from billing.service import BillingService
from crosslogic.alerts.config import AlertsConfig
from crosslogic.alerts.dispatcher import AlertDispatcher
from crosslogic.alerts.lifecycle import start_alerts
from crosslogic.settings import Settings
from crosslogic.storage.pool import open_database
from crosslogic.supervisor import supervise
from deployments.actor_calls import call_with_timeout
from deployments.loop_metrics import RayLoopRestarts
from deployments.named_actors import named_actor
from deployments.ray_metrics import BILLING_COUNTERS, MetricsExporter, with_zeros

BILLING_ACTOR_NAME = "crosslogic-billing"
NAMESPACE = "crosslogic"
_METRICS_INTERVAL_S = 10.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class BillingActor:
    def __init__(self) -> None:
        self._service: BillingService | None = None
        self._alerts: AlertDispatcher | None = None
        self._exporter: MetricsExporter | None = None
        self._metrics_task: asyncio.Task[None] | None = None

    async def start(self, alerts: dict[str, Any] | None = None) -> dict[str, Any]:
        """Idempotent: open the database, start the loops. Raises ConfigError on bad configuration.

        `alerts`: the app's `alerts:` section (this actor has no app config); the first call that
        brings one installs the process's alert dispatcher, so billing's alerts reach the sinks."""
        if alerts is not None and self._alerts is None:
            self._alerts = start_alerts(AlertsConfig.model_validate(alerts), component="billing")
        if self._service is None:
            settings = Settings.from_env()
            config = BillingConfig.from_env(settings)
            pool = await open_database(settings)
            self._service = BillingService(pool, config)
            self._service.start()
            self._metrics_task = asyncio.get_running_loop().create_task(
                supervise("billing_metrics_export", self._export_metrics, restarts=RayLoopRestarts()))
        return self._service.status()

    async def status(self) -> dict[str, Any]:
        # Also the restart path: a restarted actor runs `__init__` only, so the first status call
        # (the ingress's /ready probe polls it) starts the loops again.
        return await self.start()

    async def _export_metrics(self) -> None:
        # Counters as Ray counters (by delta: kept across a restart of this loop), the export lag as a gauge.
        assert self._service is not None
        if self._exporter is None:
            metrics = self._service.metrics
            self._exporter = MetricsExporter([with_zeros(metrics, BILLING_COUNTERS)], [metrics])
        await self._exporter.run(_METRICS_INTERVAL_S)


def get_billing_actor() -> Any:
    """The cluster's billing actor, created by whoever asks first (the app builder at deploy)."""
    return named_actor(BillingActor, BILLING_ACTOR_NAME, NAMESPACE)


async def ensure_billing_running(
    alerts: dict[str, Any] | None = None, timeout_s: float | None = None
) -> dict[str, Any]:
    """Create the actor if needed and start its loops (and alert delivery, given the `alerts:` config)."""
    call = get_billing_actor().start.remote(alerts)
    return dict(await (call if timeout_s is None else call_with_timeout(call, timeout_s)))
