"""The ingress's gateway across clusters, fed by the router actor (Ray side of crosslogic/regions/regional_gateway.py).

A background task pulls the router actor's region view every `router.view_refresh_interval_s` (and
the local engines' queue state, only while some region is known or a batch runner asks for it), as
the request router's sync loop does; the request path reads memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ray.serve.handle import DeploymentHandle

from crosslogic.config import AppConfig
from crosslogic.regions.gateway_client import RegionClient
from crosslogic.regions.regional_gateway import RegionalGateway
from crosslogic.routing.load_table import ReplicaLoad
from crosslogic.supervisor import LoopRestarts, supervise
from deployments.actor_calls import call_with_timeout
from deployments.gateway import ServeGateway
from deployments.router_actor import ROUTER_CALL_TIMEOUT_S, get_router, router_call_failed

logger = logging.getLogger("ray.serve")
# The engines' view is fetched while someone asked for it this recently (a batch runner with work).
ENGINES_WANTED_S = 5.0


class RouterFedGateway(RegionalGateway):
    def __init__(
        self,
        config: AppConfig,
        engines: dict[str, DeploymentHandle[Any]],
        *,
        billing_enabled: bool = False,
        master_secret: bytes | None = None,
        restarts: LoopRestarts | None = None,
    ) -> None:
        self._serve = ServeGateway(config, engines, billing_enabled=billing_enabled, restarts=restarts)
        self._restarts = restarts
        super().__init__(
            self._serve, local_region=config.region, local_models=list(engines), config=config.regions,
            client=RegionClient(config.regions, master_secret) if master_secret is not None else None,
        )
        self._interval_s = config.router.view_refresh_interval_s
        self._idle_interval_s = config.router.idle_view_refresh_interval_s
        self._stale_after_s = config.router.stale_after_s
        self._sync: asyncio.Task[None] | None = None
        self._engines_wanted_at = float("-inf")  # when `engine_loads` was last asked (monotonic)
        self._engines_at = float("-inf")  # when the engines' view last arrived

    def engine_loads(self, model: str) -> list[ReplicaLoad] | None:
        """This region's engines of `model` as the router actor last reported them (the batch runner's
        view of engine room, crosslogic/batches/engine_room.py); None while there is no recent view.
        Asking keeps the view coming for ENGINES_WANTED_S: only then, or while regions exist, does the
        sync loop fetch it."""
        now = time.monotonic()
        self._engines_wanted_at = now
        if now - self._engines_at > self._stale_after_s:
            return None
        return self._replicas.get(model, [])

    async def start(self) -> None:
        await self._serve.start()
        self._sync = asyncio.get_running_loop().create_task(
            supervise("region_view_sync", self._sync_loop, restarts=self._restarts))

    async def _sync_loop(self) -> None:
        failing = False
        while True:
            wanted = True
            try:
                router = get_router(self._stale_after_s)
                regions = await call_with_timeout(router.regions.remote(), ROUTER_CALL_TIMEOUT_S)
                wanted = bool(regions) or time.monotonic() - self._engines_wanted_at < ENGINES_WANTED_S
                engines = await call_with_timeout(router.engines.remote(), ROUTER_CALL_TIMEOUT_S) if wanted else None
                self.update(regions, engines, time.monotonic())
                if engines is not None:
                    self._engines_at = time.monotonic()
                if failing:
                    logger.info("region view from the router actor is back")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the actor restarting: our copy ages until regions look silent
                if not failing:
                    logger.warning("region view sync with the router actor failed: %r", exc)
                failing = True
                router_call_failed(exc)
                wanted = True
            # With no region registered and no batch runner asking, the round only looks for a new
            # region: a region registering is seen within idle_view_refresh_interval_s.
            await asyncio.sleep(self._interval_s if wanted else self._idle_interval_s)

    async def close(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
        await self._serve.close()
        await super().close()
