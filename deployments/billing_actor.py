"""The billing actor: one detached, named actor per cluster running `BillingService`.

Detached and restarted forever (`max_restarts=-1`): it holds no state, so a restart simply resumes
from PostgreSQL once `start()` or `status()` is called again (the /ready probe does); a second copy (e.g. during a restart race) is harmless because work is claimed with
leases. Counters are exported to Ray's metrics from `status()` snapshots.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray.util import metrics as ray_metrics

from billing.config import BillingConfig
from billing.service import BillingService
from crosslogic.settings import Settings
from crosslogic.storage.pool import open_database

BILLING_ACTOR_NAME = "crosslogic-billing"
NAMESPACE = "crosslogic"
_METRICS_INTERVAL_S = 10.0


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class BillingActor:
    def __init__(self) -> None:
        self._service: BillingService | None = None
        self._gauges: dict[str, Any] = {}
        self._metrics_task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, Any]:
        """Idempotent: open the database, start the loops. Raises ConfigError on bad configuration."""
        if self._service is None:
            settings = Settings.from_env()
            config = BillingConfig.from_env(settings)
            pool = await open_database(settings)
            self._service = BillingService(pool, config)
            self._service.start()
            self._metrics_task = asyncio.get_running_loop().create_task(self._export_metrics())
        return self._service.status()

    async def status(self) -> dict[str, Any]:
        # Also the restart path: a restarted actor runs `__init__` only, so the first status call
        # (the ingress's /ready probe polls it) starts the loops again.
        return await self.start()

    async def _export_metrics(self) -> None:
        while True:
            await asyncio.sleep(_METRICS_INTERVAL_S)
            assert self._service is not None
            for name, value in self._service.metrics.snapshot().items():
                gauge = self._gauges.get(name)
                if gauge is None:
                    gauge = self._gauges[name] = ray_metrics.Gauge(name, description=name)
                gauge.set(value)


def get_billing_actor() -> Any:
    """The cluster's billing actor, created by whoever asks first (the app builder at deploy)."""
    return BillingActor.options(  # type: ignore[attr-defined]
        name=BILLING_ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()


async def ensure_billing_running() -> dict[str, Any]:
    """Create the actor if needed and start its loops; call once at application start-up."""
    return dict(await get_billing_actor().start.remote())
