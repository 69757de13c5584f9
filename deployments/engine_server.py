"""Engine replica: one vLLM engine behind the `Engine` interface, reporting its queue to the router."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from crosslogic.config import ModelDeploymentConfig, RouterConfig
from crosslogic.engine.base import Endpoint, EngineEvent
from crosslogic.engine.factory import build_engine
from crosslogic.localstack.cpu_placement import allow_all_cores
from crosslogic.routing.hints import RoutingHints
from crosslogic.settings import Settings
from crosslogic.supervisor import supervise
from crosslogic.tracing.config import TracingConfig
from crosslogic.tracing.engine_span import traced_generate
from crosslogic.tracing.provider import start_tracing
from deployments.logs import route_core_logs
from deployments.loop_metrics import RayLoopRestarts
from deployments.ray_metrics import EngineGauges
from deployments.router_actor import get_router, router_call_failed

logger = logging.getLogger("ray.serve")


class EngineServer:
    # Serve awaits an async constructor; mypy knows only synchronous ones.
    async def __init__(  # type: ignore[misc]
        self, model: dict[str, Any], router: dict[str, Any], tracing: dict[str, Any] | None = None
    ) -> None:
        route_core_logs()
        # Before vLLM starts its processes: they inherit our CPU mask (see cpu_placement).
        allow_all_cores()
        self._config = ModelDeploymentConfig.model_validate(model)
        self._router_config = RouterConfig.model_validate(router)
        rank = serve.get_replica_context().rank  # the simulator's speed factor (heterogeneous fleets)
        self._engine = build_engine(
            self._config, Settings.from_env(), progress=logger.info, replica_rank=rank.rank if rank is not None else 0)
        await self._engine.start()
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        # Continues traces the ingress hands over in the hints; None when tracing is off.
        self._tracing = start_tracing(TracingConfig.model_validate(tracing or {}), "engine")
        self._gauges = EngineGauges(self._config.served_name, self._replica_id)
        self._reporter = asyncio.get_running_loop().create_task(
            supervise("engine_queue_report", self._report_loop, restarts=RayLoopRestarts()))

    async def _report_loop(self) -> None:
        config = self._router_config
        last: dict[str, Any] | None = None
        last_sent_at = float("-inf")
        while True:
            try:
                stats = self._engine.stats().model_dump()
                now = time.monotonic()
                # An idle engine whose figures did not change re-sends them only every
                # idle_engine_report_interval_s: its silence stays well inside stale_after_s.
                if stats != last or now - last_sent_at >= config.idle_engine_report_interval_s:
                    self._gauges.set(stats)  # the same figures on Ray's metrics (crosslogic_engine_*)
                    # Fire and forget: a slow router must never slow the engine.
                    get_router(config.stale_after_s).report_engine.remote(
                        self._replica_id, self._config.served_name, stats)
                    last, last_sent_at = stats, now
            except Exception as exc:
                logger.warning("queue report to the router failed: %r", exc)
                router_call_failed(exc)
                last = None
            await asyncio.sleep(config.engine_report_interval_s)

    async def generate(
        self, endpoint: Endpoint, body: dict[str, Any], request_id: str, hints: RoutingHints | None = None
    ) -> AsyncIterator[EngineEvent]:
        events = self._engine.generate(endpoint, body, request_id)
        if self._tracing is not None and hints is not None:
            events = traced_generate(
                self._tracing.tracer, events, hints.trace_context, request_id=request_id,
                model=self._config.served_name, endpoint=endpoint, replica=self._replica_id,
            )
        async for event in events:
            yield event

    async def model_card(self) -> dict[str, Any]:
        return self._engine.model_card().model_dump()

    async def stats(self) -> dict[str, Any]:
        return {
            "replica_id": self._replica_id,
            **self._engine.stats().model_dump(),
            "unfinished": self._engine.unfinished_requests(),
        }

    async def check_health(self) -> None:
        await self._engine.check_health()

    async def __del__(self) -> None:
        self._reporter.cancel()
        with contextlib.suppress(Exception):
            get_router(self._router_config.stale_after_s).remove_replica.remote(self._replica_id)
        await self._engine.shutdown()
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.shutdown)  # exports the spans still queued
