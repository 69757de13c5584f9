"""Engine replica: one vLLM engine behind the `Engine` interface, reporting its queue to the router."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from crosslogic.config import ModelDeploymentConfig, RouterConfig
from crosslogic.devmodels.prepare import resolve_model_source
from crosslogic.engine.base import Endpoint, EngineEvent
from crosslogic.engine.vllm_engine import VLLMEngine
from crosslogic.localstack.cpu_placement import allow_all_cores
from crosslogic.routing.hints import RoutingHints
from crosslogic.settings import Settings
from deployments.logs import route_core_logs
from deployments.router_actor import get_router

logger = logging.getLogger("ray.serve")


class EngineServer:
    async def __init__(self, model: dict[str, Any], router: dict[str, Any]) -> None:
        route_core_logs()
        # Before vLLM starts its processes: they inherit our CPU mask (see cpu_placement).
        allow_all_cores()
        self._config = ModelDeploymentConfig.model_validate(model)
        self._router_config = RouterConfig.model_validate(router)
        path = resolve_model_source(self._config.source, Settings.from_env(), progress=logger.info)
        self._engine = VLLMEngine(self._config, path)
        await self._engine.start()
        self._replica_id = serve.get_replica_context().replica_id.unique_id
        self._reporter = asyncio.get_running_loop().create_task(self._report_loop())

    async def _report_loop(self) -> None:
        router: Any = None
        while True:
            try:
                if router is None:
                    router = get_router(self._router_config.stale_after_s)
                # Fire and forget: a slow router must never slow the engine.
                router.report_engine.remote(
                    self._replica_id, self._config.served_name, self._engine.stats().model_dump()
                )
            except Exception as exc:
                logger.warning("queue report to the router failed: %r", exc)
                router = None
            await asyncio.sleep(self._router_config.engine_report_interval_s)

    async def generate(
        self, endpoint: Endpoint, body: dict[str, Any], request_id: str, hints: RoutingHints | None = None
    ) -> AsyncIterator[EngineEvent]:
        async for event in self._engine.generate(endpoint, body, request_id):
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
