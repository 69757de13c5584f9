"""The application builder `serve_config.yaml` points at: `deployments.app_builder:build_app`."""

from __future__ import annotations

import re
from typing import Any

from ray import serve
from ray.serve.deployment import Application

from crosslogic.config import AppConfig, ModelDeploymentConfig, RouterConfig
from crosslogic.tracing.config import TracingConfig
from deployments.engine_server import EngineServer
from deployments.ingress import INGRESS_ENV, IngressServer
from deployments.router_actor import ensure_router_alive


def deployment_name(served_name: str) -> str:
    return "engine-" + re.sub(r"[^a-zA-Z0-9_-]+", "-", served_name).strip("-")


# gRPC's default cap on one message is 4 MiB, and Serve keeps it for its inter-deployment channel:
# with `engine_transport: grpc` a request near the body limit, or an embeddings answer for a few
# hundred inputs, would fail. Both ends read the cap from their process environment.
_GRPC_MESSAGE_CAP = {"RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(512 * 1024 * 1024)}


def _with_env(options: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """`options` with `env` added to its runtime_env (what the options set themselves wins)."""
    if not env:
        return options
    options = dict(options)
    runtime_env = dict(options.get("runtime_env") or {})
    runtime_env["env_vars"] = {**env, **(runtime_env.get("env_vars") or {})}
    options["runtime_env"] = runtime_env
    return options


def _actor_options(model: ModelDeploymentConfig, env: dict[str, str]) -> dict[str, Any]:
    return _with_env(dict(model.ray_actor_options), {**env, **model.env})


def _engine_app(
    model: ModelDeploymentConfig, router: RouterConfig, env: dict[str, str], tracing: TracingConfig | None = None
) -> Application:
    router = router.for_model(model)  # the model's own policy, if it names one
    deployment = serve.deployment(
        name=deployment_name(model.served_name),
        num_replicas=model.num_replicas,
        max_ongoing_requests=model.max_ongoing_requests,
        ray_actor_options=_actor_options(model, env),
        # vLLM start-up (weights, warm-up) takes minutes on a cold node.
        health_check_period_s=10,
        health_check_timeout_s=60,
        graceful_shutdown_timeout_s=30,
        # A dict, which Serve validates into its RequestRouterConfig (whose __init__ is mis-annotated).
        request_router_config={
            "request_router_class": "deployments.request_router.QueueDepthRouter",
            "request_router_kwargs": {
                "policy": router.policy,
                "refresh_interval_s": router.view_refresh_interval_s,
                "stale_after_s": router.stale_after_s,
                "idle_refresh_interval_s": router.idle_view_refresh_interval_s,
                "affinity": router.affinity.model_dump(mode="json"),
            },
        },
    )(EngineServer)
    return deployment.bind(
        model.model_dump(mode="json"), router.model_dump(mode="json"),
        (tracing or TracingConfig()).model_dump(mode="json"),
    )


def build_app(args: dict[str, Any]) -> Application:
    config = AppConfig.model_validate(args)
    ensure_router_alive(config.router.stale_after_s)
    env = _GRPC_MESSAGE_CAP if config.ingress.engine_transport == "grpc" else {}
    engines = {m.served_name: _engine_app(m, config.router, env, config.tracing) for m in config.models}
    ingress = serve.deployment(
        name="ingress",
        num_replicas=config.ingress.num_replicas,
        max_ongoing_requests=config.ingress.max_ongoing_requests,
        ray_actor_options=_with_env(config.ingress.ray_actor_options or {"num_cpus": 0}, {**env, **INGRESS_ENV}),
    )(IngressServer)
    return ingress.bind(config.model_dump(mode="json"), engines)
