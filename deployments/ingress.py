"""The ingress deployment: the FastAPI app of `crosslogic.api`, wired to Serve handles,
PostgreSQL (API keys, admin plane) and the admin JWT verifier."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from billing.admin_routes import billing_admin_router
from billing.config import BillingConfig
from billing.webhook_routes import webhook_router_if_enabled
from crosslogic.admin.router import build_admin_router
from crosslogic.admin.routes_limits import limits_router
from crosslogic.admin.startup import build_admin_deps
from crosslogic.alerts.lifecycle import start_alerts, stop_alerts
from crosslogic.alerts.readiness_watch import start_readiness_watch
from crosslogic.api.app import build_api
from crosslogic.api.context import ApiContext
from crosslogic.api.headroom import Headroom
from crosslogic.api.readiness_probes import DependencyProbes, service_readiness
from crosslogic.api.request_ids import EDGE_CALLBACK
from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.batches.service import BatchService
from crosslogic.config import AppConfig
from crosslogic.fairness.gateway import fair_queues
from crosslogic.metering import UsageRecorder
from crosslogic.ratelimit import RateLimitConfig, RateLimiter, build_rate_limiter
from crosslogic.registry.placement import check_app_placements, registered_templates
from crosslogic.responses.store import ResponseStore
from crosslogic.settings import Settings
from crosslogic.storage.pool import open_database
from crosslogic.supervisor import supervise
from crosslogic.tracing.provider import start_tracing
from deployments.billing_actor import ensure_billing_running
from deployments.logs import route_core_logs
from deployments.loop_metrics import RayLoopRestarts
from deployments.ratelimit_actor import ActorRateLimiter, RayRateLimitMetrics
from deployments.ray_metrics import RayRequestMetrics, ingress_exporter
from deployments.region_control import RegionControl
from deployments.region_routing import RouterFedGateway

logger = logging.getLogger("ray.serve")
BILLING_KEEPALIVE_S = 5.0
# Serve's HTTP callback: it mints the server's request id in front of Serve's own RequestIdMiddleware,
# which would otherwise take (and echo) the client's x-request-id (crosslogic/api/request_ids.py).
# Read by Serve when the replica's process starts, so it travels in the ingress's runtime_env; under
# the HAProxy ingress each replica's own HTTP server applies it. (The Python proxy reads it from the
# cluster's environment instead.)
_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
INGRESS_ENV = {_CALLBACK_ENV: EDGE_CALLBACK}


def _edge_runs_here() -> bool:
    """Whether the edge middleware runs in this replica's own HTTP server in front of the app (HAProxy
    ingress): only then is the x-request-id the app receives the server's. Behind the Python proxy
    the app mints its own, whatever the proxy's environment says."""
    return (os.environ.get(_CALLBACK_ENV) == EDGE_CALLBACK
            and os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1")


@serve.ingress()
class IngressServer:
    # Serve awaits an async constructor; mypy knows only synchronous ones.
    async def __init__(  # type: ignore[misc]
        self, app_config: dict[str, Any], engines: dict[str, DeploymentHandle[Any]]
    ) -> None:
        route_core_logs()
        self._config = AppConfig.model_validate(app_config)
        self._settings = Settings.from_env()
        # Alerts go to the configured sinks (webhook, PagerDuty) besides the log; refuses to start when
        # PagerDuty is configured without its routing key. The watcher starts with the gateway.
        self._alerts = start_alerts(self._config.alerts, component="ingress", region=self._config.region)
        # None when tracing is off (the default): no middleware, no spans (crosslogic/tracing).
        self._tracing = start_tracing(self._config.tracing, "ingress")
        self._readiness_watch: asyncio.Task[None] | None = None
        # Fails fast with one line (ConfigError) when PostgreSQL is unreachable or a migration fails;
        # replicas starting together apply migrations once (advisory lock).
        self._pool = await open_database(self._settings)
        # A model whose registered template does not fit its accelerator refuses the whole app,
        # with the numbers in the message `serve status` shows.
        check_app_placements(self._config, await registered_templates(self._pool, self._config))
        self._restarts = RayLoopRestarts()  # every background loop of this replica counts its restarts here
        self._authenticator = KeyAuthenticator(
            self._pool, throttle=self._config.auth_throttle, config=self._config.auth, restarts=self._restarts)
        await self._authenticator.start()
        local_stack = os.environ.get("CROSSLOGIC_LOCAL_STACK") == "1"
        self._admin = build_admin_deps(
            self._settings, self._pool, local_stack=local_stack, throttle=self._config.auth_throttle
        )
        self._billing = BillingConfig.from_env(self._settings)
        # Regional agents' heartbeats and the region admin API, over the router actor's live view.
        secret = self._settings.region_master_secret
        master_secret = secret.get_secret_value() if secret is not None else None
        self._regions = RegionControl(
            self._pool, master_secret, self._config.regions,
            stale_after_s=self._config.router.stale_after_s, auth_throttle=self._config.auth_throttle,
        )
        # Local engines through Serve handles, other regions through their gateways (deployments/region_routing.py).
        self._gateway = RouterFedGateway(
            self._config, engines, billing_enabled=self._billing.enabled,
            master_secret=master_secret, restarts=self._restarts,
        )
        self._limiter = await self._build_limiter()
        # Metering is always on: usage rows are buffered here and written off the request path.
        self._recorder = UsageRecorder(self._pool, restarts=self._restarts)
        self._recorder.start()
        # Ledger and key-cache counters to Ray's metrics (the request metrics go straight there).
        exporter = ingress_exporter(self._recorder, self._authenticator)
        interval_s = self._config.metrics.export_interval_s
        self._metrics_export = asyncio.get_running_loop().create_task(
            supervise("metrics_export", lambda: exporter.run(interval_s), restarts=self._restarts))
        # /ready: a real SELECT 1 (shares the authenticator's view of the database) and Redis PING.
        self._probes = DependencyProbes(
            self._pool, self._authenticator.db, cached_keys=lambda: self._authenticator.cached_keys,
            buffered_usage=lambda: self._recorder.pending, redis_url=self._redis_url(),
            redis_fail_open=self._config.limits.fail_mode == "open",
        )
        # Billing on: the detached billing actor exports the ledger; Stripe's webhooks come here.
        # A restarted actor runs only __init__, so we keep asking it to run its loops.
        self._billing_keepalive: asyncio.Task[None] | None = None
        if self._billing.enabled:
            await ensure_billing_running(self._config.alerts.model_dump())
            self._billing_keepalive = asyncio.get_running_loop().create_task(
                supervise("billing_keepalive", self._keep_billing_running, restarts=self._restarts))

    async def __serve_build_asgi_app__(self) -> FastAPI:
        await self._gateway.start()
        # The Batch API: its stores, and this replica's share of the batch work (on spare capacity).
        self._batches = BatchService(
            self._pool, self._config.batches, home=self._settings.home, gateway=self._gateway,
            usage=self._recorder, region=self._config.region,
            retries=self._config.ingress.retries_before_first_token, keys=self._authenticator,
            engine_loads=self._gateway.engine_loads, models=self._config.models)
        if self._config.batches.enabled:
            self._batches.start(self._restarts)
        # model_unavailable / dependency_down / readiness_lost alerts from what /ready reports, every few seconds.
        self._readiness_watch = start_readiness_watch(
            lambda: service_readiness(self._gateway.readiness, self._probes, self._limiter),
            self._config.alerts.readiness)
        context = ApiContext(
            gateway=self._batches.gateway,
            authenticator=self._authenticator,
            usage=self._recorder,
            region=self._config.region,
            limiter=self._limiter,
            lease_ttl_s=self._config.limits.lease_ttl_s,
            headroom=Headroom() if self._config.limits.overlap_admission else None,
            max_body_bytes=self._config.ingress.max_body_bytes,
            retries_before_first_token=self._config.ingress.retries_before_first_token,
            metrics=RayRequestMetrics(per_key_labels=self._config.metrics.per_key_labels),
            probes=self._probes,
            responses=ResponseStore(self._pool),
            files=self._batches.files if self._config.batches.enabled else None,
            batches=self._batches.batches if self._config.batches.enabled else None,
            tracer=self._tracing.tracer if self._tracing is not None else None,
            fairness=fair_queues(self._config),
        )
        app = build_api(context, trust_edge_request_id=_edge_runs_here())
        admin = build_admin_router(self._admin, self._regions.admin(), extra=[billing_admin_router(self._admin)])
        if self._limiter is not None:
            admin.include_router(limits_router(self._admin, self._limiter))
        app.include_router(admin)
        app.include_router(self._regions.heartbeat_router())
        webhooks = webhook_router_if_enabled(self._pool, self._billing)
        if webhooks is not None:
            app.include_router(webhooks)
        return app

    def _redis_url(self) -> str | None:
        url = self._settings.redis_url
        return url.get_secret_value() if url is not None else None

    async def _build_limiter(self) -> RateLimiter | None:
        limits = self._config.limits
        if not limits.enabled:
            return None
        config = RateLimitConfig(
            window_s=limits.window_s,
            namespace=limits.namespace,
            redis_timeout_s=limits.redis_timeout_s,
            fail_mode=limits.fail_mode,
            replicas=self._config.ingress.num_replicas,
            max_entries_per_subject=limits.max_entries_per_subject,
            stream_max_connections=limits.stream_max_connections,
            stream_idle_timeout_s=limits.stream_idle_timeout_s,
        )
        metrics = RayRateLimitMetrics(per_key_labels=self._config.metrics.per_key_labels)
        redis_url = self._redis_url()
        if redis_url:
            return build_rate_limiter(config, redis_url=redis_url, metrics=metrics, restarts=self._restarts)
        # No Redis: limits live in the cluster's named actor (exact within this one cluster).
        actor = ActorRateLimiter(config, stream=limits.actor_stream)
        await actor.wait_ready()
        return build_rate_limiter(
            config, redis_url=None, in_cluster=actor, metrics=metrics, restarts=self._restarts)

    async def _keep_billing_running(self) -> None:
        while True:
            await asyncio.sleep(BILLING_KEEPALIVE_S)
            try:
                await ensure_billing_running(self._config.alerts.model_dump(), timeout_s=30)
            except Exception as exc:  # restarting or unreachable: next round
                logger.warning("billing actor not running: %r", exc)

    async def __del__(self) -> None:
        self._metrics_export.cancel()
        if self._readiness_watch is not None:
            self._readiness_watch.cancel()
        if self._billing_keepalive is not None:
            self._billing_keepalive.cancel()
        await self._batches.close()
        await self._gateway.close()
        await self._recorder.close()  # flushes buffered usage rows
        if self._limiter is not None:
            await self._limiter.close()
        await self._authenticator.close()
        await self._probes.close()
        await self._regions.close()
        await self._admin.verifier.aclose()
        await self._pool.close()
        if self._tracing is not None:
            await asyncio.to_thread(self._tracing.shutdown)  # exports the spans still queued
        await stop_alerts(self._alerts)  # last: what closing raised still goes out
