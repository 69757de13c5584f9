"""The ingress's side of region control (Ray wiring of crosslogic/regions/routes.py and the region
admin routes): accepted heartbeats go to the router actor's RegionTable; the admin API reads that
live view and pushes drains and deletions to it."""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import APIRouter

from crosslogic.admin.routes_regions import RegionsAdmin
from crosslogic.auth.throttle import AuthThrottleConfig, FailedAuthThrottle
from crosslogic.regions.config import RegionsConfig
from crosslogic.regions.heartbeats import AcceptedHeartbeat, HeartbeatVerifier
from crosslogic.regions.routes import build_heartbeat_router
from deployments.actor_calls import call_with_timeout
from deployments.router_actor import get_router, router_call_failed

# A router actor that does not answer within this is restarting: the caller degrades (503 to the
# agent, which beats again; the registry alone in the admin view).
ACTOR_TIMEOUT_S = 5.0


class RegionControl:
    def __init__(
        self,
        pool: asyncpg.Pool,
        master_secret: bytes | None,
        config: RegionsConfig,
        *,
        stale_after_s: float,
        auth_throttle: AuthThrottleConfig | None = None,
    ) -> None:
        self._config = config
        self._stale_after_s = stale_after_s
        self._master_secret = master_secret
        # Its own failure budgets (the API keys' and the admin API's are separate instances too);
        # the source address is read the same way (client_address config: no client-chosen XFF).
        self._throttle = FailedAuthThrottle(auth_throttle)
        self.verifier = HeartbeatVerifier(pool, master_secret, config=config, throttle=self._throttle)

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            router = get_router(self._stale_after_s)
            return await call_with_timeout(getattr(router, method).remote(*args), ACTOR_TIMEOUT_S)
        except Exception as exc:
            router_call_failed(exc)
            raise

    async def publish(self, accepted: AcceptedHeartbeat) -> None:
        await self._call(
            "report_region", accepted.heartbeat.model_dump(mode="json"), accepted.operator_drained,
            self._config.missed_heartbeats, accepted.secret_generation,
        )

    async def live_view(self) -> dict[str, dict[str, Any]]:
        return dict(await self._call("regions"))

    async def set_drained(self, name: str, drained: bool) -> None:
        await self._call("set_region_drained", name, drained)

    async def forget(self, name: str) -> None:
        await self._call("forget_region", name)

    def heartbeat_router(self) -> APIRouter:
        return build_heartbeat_router(self.verifier, self.publish, client_of=self._throttle.client_of)

    def admin(self) -> RegionsAdmin:
        return RegionsAdmin(self._master_secret, self.live_view, self.set_drained, self.forget)

    async def close(self) -> None:
        await self.verifier.close()
