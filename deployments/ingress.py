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

from billing.config import BillingConfig
from billing.webhook_routes import webhook_router_if_enabled
from crosslogic.admin.router import build_admin_router
from crosslogic.admin.routes_limits import limits_router
from crosslogic.admin.startup import build_admin_deps
from crosslogic.api.app import build_api
from crosslogic.api.context import ApiContext
from crosslogic.api.headroom import Headroom
from crosslogic.auth.key_authenticator import KeyAuthenticator
from crosslogic.config import AppConfig
from crosslogic.metering import UsageRecorder
from crosslogic.ratelimit import RateLimitConfig, RateLimiter, build_rate_limiter
from crosslogic.registry.placement import check_app_placements, registered_templates
from crosslogic.settings import Settings
from crosslogic.storage.pool import open_database
from deployments.billing_actor import ensure_billing_running
from deployments.gateway import ServeGateway
from deployments.logs import route_core_logs
from deployments.ratelimit_actor import ActorRateLimiter, RayRateLimitMetrics


logger = logging.getLogger("ray.serve")
BILLING_KEEPALIVE_S = 5.0


@serve.ingress()
class IngressServer:
    async def __init__(self, app_config: dict[str, Any], engines: dict[str, DeploymentHandle]) -> None:
        route_core_logs()
        self._config = AppConfig.model_validate(app_config)
        self._settings = Settings.from_env()
        # Fails fast with one line (ConfigError) when PostgreSQL is unreachable or a migration fails;
        # replicas starting together apply migrations once (advisory lock).
        self._pool = await open_database(self._settings)
        # A model whose registered template does not fit its accelerator refuses the whole app,
        # with the numbers in the message `serve status` shows.
        check_app_placements(self._config, await registered_templates(self._pool, self._config))
        self._authenticator = KeyAuthenticator(self._pool)
        await self._authenticator.start()
        local_stack = os.environ.get("CROSSLOGIC_LOCAL_STACK") == "1"
        self._admin = build_admin_deps(self._settings, self._pool, local_stack=local_stack)
        self._billing = BillingConfig.from_env(self._settings)
        self._gateway = ServeGateway(self._config, engines, billing_enabled=self._billing.enabled)
        self._limiter = await self._build_limiter()
        # Metering is always on: usage rows are buffered here and written off the request path.
        self._recorder = UsageRecorder(self._pool)
        self._recorder.start()
        # Billing on: the detached billing actor exports the ledger; Stripe's webhooks come here.
        # A restarted actor runs only __init__, so we keep asking it to run its loops.
        self._billing_keepalive: asyncio.Task[None] | None = None
        if self._billing.enabled:
            await ensure_billing_running()
            self._billing_keepalive = asyncio.get_running_loop().create_task(self._keep_billing_running())

    async def __serve_build_asgi_app__(self) -> FastAPI:
        await self._gateway.start()
        context = ApiContext(
            gateway=self._gateway,
            authenticator=self._authenticator,
            usage=self._recorder,
            region=self._config.region,
            limiter=self._limiter,
            lease_ttl_s=self._config.limits.lease_ttl_s,
            headroom=Headroom() if self._config.limits.overlap_admission else None,
            max_body_bytes=self._config.ingress.max_body_bytes,
            retries_before_first_token=self._config.ingress.retries_before_first_token,
        )
        # Serve's proxy already sets and echoes x-request-id.
        app = build_api(context, echo_request_id=False)
        admin = build_admin_router(self._admin)
        if self._limiter is not None:
            admin.include_router(limits_router(self._admin, self._limiter))
        app.include_router(admin)
        webhooks = webhook_router_if_enabled(self._pool, self._billing)
        if webhooks is not None:
            app.include_router(webhooks)
        return app

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
        )
        metrics = RayRateLimitMetrics()
        if self._settings.redis_url:
            return build_rate_limiter(config, redis_url=self._settings.redis_url, metrics=metrics)
        # No Redis: limits live in the cluster's named actor (exact within this one cluster).
        actor = ActorRateLimiter(config, stream=limits.actor_stream)
        await actor.wait_ready()
        return build_rate_limiter(config, redis_url=None, in_cluster=actor, metrics=metrics)

    async def _keep_billing_running(self) -> None:
        while True:
            await asyncio.sleep(BILLING_KEEPALIVE_S)
            try:
                await asyncio.wait_for(ensure_billing_running(), timeout=30)
            except Exception as exc:  # restarting or unreachable: next round
                logger.warning("billing actor not running: %r", exc)

    async def __del__(self) -> None:
        if self._billing_keepalive is not None:
            self._billing_keepalive.cancel()
        await self._gateway.close()
        await self._recorder.close()  # flushes buffered usage rows
        if self._limiter is not None:
            await self._limiter.close()
        await self._authenticator.close()
        await self._admin.verifier.aclose()
        await self._pool.close()
