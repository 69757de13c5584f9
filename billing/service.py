"""BillingService: the export loop and the webhook processor, each under the supervisor.

Plain async Python; `deployments/billing_actor.py` hosts one per cluster in a detached actor. Start-up
fails fast (ConfigError, one line) on incomplete configuration; after that nothing here can take
the process down: loop failures are logged, counted and restarted with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from billing.config import BillingConfig
from billing.exporter import MeterExporter
from billing.stripe_sender import StripeMeterSender
from billing.webhook_processor import WebhookProcessor
from crosslogic.loop_liveness import LoopLiveness
from crosslogic.metering.metrics import Metrics
from crosslogic.supervisor import supervise

log = logging.getLogger(__name__)


class BillingService:
    def __init__(self, pool: asyncpg.Pool, config: BillingConfig) -> None:
        config.require_export()
        self._pool = pool
        self.config = config
        self.metrics = Metrics("crosslogic_billing")
        self._sender: StripeMeterSender | None = None
        self.exporter: MeterExporter | None = None
        self.webhooks = WebhookProcessor(pool, config, metrics=self.metrics)
        self._tasks: list[asyncio.Task[None]] = []
        self.liveness: LoopLiveness | None = None

    def start(self) -> None:
        """Start the loops (idempotent). Disabled billing runs nothing: metering needs no actor."""
        if self._tasks or not self.config.enabled:
            return
        self._sender = StripeMeterSender(self.config)
        self.exporter = MeterExporter(self._pool, self.config, self._sender, metrics=self.metrics)
        loop = asyncio.get_running_loop()
        # "Running" in /ready means an iteration finished lately, not that the task exists.
        self.liveness = LoopLiveness(
            {"billing-export": self.config.interval_s, "billing-webhooks": self.config.webhook_poll_s}
        )
        exporter, webhooks, beat = self.exporter, self.webhooks, self.liveness.beater
        self._tasks = [
            loop.create_task(supervise("billing_export", lambda: exporter.run_forever(beat("billing-export")),
                                       metrics=self.metrics), name="billing-export"),
            loop.create_task(supervise("billing_webhooks", lambda: webhooks.run_forever(beat("billing-webhooks")),
                                       metrics=self.metrics), name="billing-webhooks"),
        ]
        log.info("billing export started (owner %s)", self.exporter.owner)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._sender is not None:
            await self._sender.aclose()
            self._sender = None

    def status(self) -> dict[str, Any]:
        """For `/ready` and the actor's metrics: the loops running (an iteration finished within
        3 intervals), each loop's liveness, and the counters."""
        loops = self.liveness.view() if self.liveness is not None else {}
        status: dict[str, Any] = {
            "enabled": self.config.enabled,
            "running": [t.get_name() for t in self._tasks
                        if not t.done() and (t.get_name() not in loops or loops[t.get_name()].running)],
            "metrics": self.metrics.snapshot(),
        }
        if self._tasks:
            status["loops"] = {name: state.model_dump() for name, state in loops.items()}
        return status
