"""A region's Serve application (`region_config.yaml`: `deployments.region_app:build_region_app`).

The region's engines are deployed exactly as the control plane deploys its own (app_builder) and keep
reporting their queues to this cluster's router actor. Beside them one `RegionService` replica runs
the regional gateway (crosslogic/regions/gateway_server.py, the engines' streams for the control
plane only) and the regional agent (crosslogic/regions/agent.py, heartbeats to the control plane).
No HTTP route: nothing of the region is reachable through Serve's proxy.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle

from crosslogic.config import AppConfig
from crosslogic.engine.base import Endpoint
from crosslogic.errors import ConfigError
from crosslogic.regions.agent import RegionAgent, RegionSnapshot
from crosslogic.regions.app_config import RegionAppConfig
from crosslogic.regions.config import REGION_SECRET_ENV
from crosslogic.regions.gateway_server import build_gateway_app, serve_gateway
from crosslogic.regions.protocol import RemoteReplica
from crosslogic.regions.signing import decode_secret
from crosslogic.routing.hints import RoutingHints
from crosslogic.routing.policies import get_policy
from deployments.actor_calls import call_with_timeout
from deployments.app_builder import _GRPC_MESSAGE_CAP, _engine_app, _with_env
from deployments.gateway import ServeGateway
from deployments.logs import route_core_logs
from deployments.loop_metrics import RayLoopRestarts
from deployments.router_actor import ensure_router_alive, get_router, router_call_failed

logger = logging.getLogger("ray.serve")

# The service calls engines over Serve's direct gRPC channel, as the control plane's ingress does by
# default (config.py: engine_transport), so both ends need the raised message cap.
_ENV = _GRPC_MESSAGE_CAP


def region_secret_from_env() -> bytes:
    text = os.environ.get(REGION_SECRET_ENV, "")
    if not text.strip():
        raise ConfigError(
            f"{REGION_SECRET_ENV} is not set: start the region's Ray cluster with the secret "
            "`crosslogic admin regions create` printed (64 hex characters)"
        )
    try:
        return decode_secret(text)
    except ValueError as exc:
        raise ConfigError(f"{REGION_SECRET_ENV}: {exc}") from None


class RegionService:
    """The region's gateway and agent, in one replica's event loop."""

    # Serve awaits an async constructor; mypy knows only synchronous ones.
    async def __init__(  # type: ignore[misc]
        self, region_config: dict[str, Any], engines: dict[str, DeploymentHandle[Any]]
    ) -> None:
        route_core_logs()
        self._config = RegionAppConfig.model_validate(region_config)
        secret = region_secret_from_env()
        # The control plane's own engine client: same handles, same error mapping (replica failures
        # become UpstreamError), same cancel when the iterator closes early.
        restarts = RayLoopRestarts()
        self._engines = ServeGateway(
            AppConfig(models=self._config.models, router=self._config.router, region=self._config.region), engines,
            restarts=restarts,
        )
        await self._engines.start()
        self._capacity = {m.served_name: m.max_ongoing_requests for m in self._config.models}
        app = build_gateway_app(
            region=self._config.region, secret=secret, stream=self._stream, models=self._served_models,
            skew_s=self._config.clock_skew_s,
        )
        self._server, url = await serve_gateway(app, self._config.gateway)
        self._agent = RegionAgent(
            region=self._config.region, secret=secret, gateway_url=url, config=self._config.agent,
            collect=self._collect, restarts=restarts,
        )
        self._agent.start()

    def _stream(
        self, model: str, endpoint: Endpoint, body: dict[str, Any], request_id: str, /,
        *, trace_context: dict[str, str] | None = None,
    ) -> Any:
        # The trace context rides to the engine replica in the hints, as from the control plane's ingress.
        return self._engines.stream(model, endpoint, body, request_id, RoutingHints(trace_context=trace_context))

    def _served_models(self) -> list[str]:
        return [card.served_name for card in self._engines.models()]

    async def _collect(self) -> RegionSnapshot:
        try:
            router = get_router(self._config.router.stale_after_s)
            engines: dict[str, Any] = await call_with_timeout(router.engines.remote(), 5)
        except Exception as exc:
            router_call_failed(exc)
            raise
        cards = self._engines.models()
        known = {card.served_name for card in cards}
        replicas = [
            RemoteReplica(
                replica_id=rid, model=e["model"], running=e["stats"].get("running", 0),
                waiting=e["stats"].get("waiting", 0),
                kv_cache_usage=min(1.0, max(0.0, float(e["stats"].get("kv_cache_usage", 0.0)))),
                capacity=self._capacity.get(e["model"], 64),
            )
            for rid, e in sorted(engines.items())
            if e["fresh"] and e["model"] in known
        ]
        # A model is offered once one of its replicas reports and its card is known.
        models = sorted({r.model for r in replicas})
        return RegionSnapshot(replicas=replicas, models=models,
                              cards=[card for card in cards if card.served_name in models])

    async def status(self) -> dict[str, Any]:
        """For operators and tests: where the gateway listens and what the control plane last said."""
        last = self._agent.last
        return {
            "region": self._config.region,
            "gateway_url": self._server.url,
            "models": self._served_models(),
            "agent": None if last is None else {
                "ok": last.ok, "at": last.at, "status": last.status, "message": last.message,
                "consecutive_failures": last.consecutive_failures,
            },
        }

    async def check_health(self) -> None:
        if not self._server.running:
            raise RuntimeError("the regional gateway's server stopped")

    async def __del__(self) -> None:
        await self._agent.stop()
        await self._server.stop()
        await self._engines.close()


def build_region_app(args: dict[str, Any]) -> Application:
    config = RegionAppConfig.model_validate(args)
    get_policy(config.router.policy)  # an unknown policy fails the deploy, not the first request
    ensure_router_alive(config.router.stale_after_s)
    engines = {m.served_name: _engine_app(m, config.router, _ENV, config.tracing) for m in config.models}
    service = serve.deployment(
        name="region-service",
        num_replicas=1,
        # Waits on sockets and engine handles only.
        ray_actor_options=_with_env({"num_cpus": 0}, _ENV),
        health_check_period_s=10,
    )(RegionService)
    return service.bind(config.model_dump(mode="json"), engines)
