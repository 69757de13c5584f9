"""`Gateway` over Ray Serve deployment handles: how the ingress reaches engines and the router."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import grpc
from ray import exceptions as ray_exceptions
from ray.serve import exceptions as serve_exceptions
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from crosslogic.api.gateway import DependencyStatus, Readiness
from crosslogic.api.readiness_probes import billing_readiness
from crosslogic.config import AppConfig
from crosslogic.engine.base import Endpoint, EngineEvent, ModelCard
from crosslogic.engine.stream_deadline import StreamStalled, with_idle_deadline
from crosslogic.errors import ServiceUnavailableError, UpstreamError
from crosslogic.regions.readiness import regions_readiness
from crosslogic.routing.hints import RoutingHints
from crosslogic.supervisor import LoopRestarts, supervise
from deployments.actor_calls import call_with_timeout
from deployments.router_actor import get_router

logger = logging.getLogger("ray.serve")

# Failures of a replica (not of the request): retryable on another replica.
_REPLICA_FAILURES = (
    ray_exceptions.RayActorError,
    ray_exceptions.ActorUnavailableError,
    ray_exceptions.RayTaskError,
    # The gRPC transport raises what Serve does not translate (it maps UNAVAILABLE only).
    grpc.aio.AioRpcError,
)


class ServeGateway:
    def __init__(
        self, config: AppConfig, handles: dict[str, DeploymentHandle[Any]], *, billing_enabled: bool = False,
        restarts: LoopRestarts | None = None,
    ) -> None:
        self._config = config
        self._restarts = restarts
        self._billing_enabled = billing_enabled
        # By value over gRPC: each event goes straight from the replica to us instead of through
        # Ray's object store (less time to the first token: README, "Why the defaults").
        by_reference = config.ingress.engine_transport == "ray"
        self._handles = {name: h.options(stream=True, _by_reference=by_reference) for name, h in handles.items()}
        self._card_handles = handles
        self._cards: dict[str, ModelCard] = {}
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._refresher = asyncio.get_running_loop().create_task(
            supervise("model_cards_refresh", self._refresh_cards, restarts=self._restarts))

    async def _refresh_cards(self) -> None:
        # Engines start slower than the ingress: a model is listed once one of its replicas answers.
        while True:
            for name, handle in self._card_handles.items():
                if name in self._cards:
                    continue
                try:
                    raw = await asyncio.wait_for(handle.model_card.remote(), timeout=5)
                    self._cards[name] = ModelCard.model_validate(raw)
                except Exception as exc:
                    logger.info("model %s not ready yet: %r", name, exc)
            await asyncio.sleep(1.0 if len(self._cards) < len(self._card_handles) else 30.0)

    def models(self) -> list[ModelCard]:
        return [self._cards[m.served_name] for m in self._config.models if m.served_name in self._cards]

    async def stream(
        self, model: str, endpoint: Endpoint, body: dict[str, Any], request_id: str, hints: RoutingHints
    ) -> AsyncGenerator[EngineEvent, None]:
        handle = self._handles.get(model)
        if handle is None:
            raise ServiceUnavailableError(f"no engine deployment for model '{model}'")
        response = handle.generate.remote(endpoint, body, request_id, hints)
        assert isinstance(response, DeploymentResponseGenerator)  # the handles are options(stream=True)
        finished = False
        events = with_idle_deadline(response, self._config.ingress.engine_stream_idle_timeout_s)
        try:
            async for event in events:
                yield event
            finished = True
        except StreamStalled as stall:
            logger.warning("engine stream for request %s said nothing for %.0fs after it started: aborted",
                           request_id, stall.silent_s)
            raise UpstreamError("The engine stopped answering mid-stream.", code="engine_stalled") from None
        except serve_exceptions.BackPressureError:
            raise ServiceUnavailableError(
                f"model '{model}' is at capacity; retry shortly", code="engine_overloaded"
            ) from None
        except serve_exceptions.DeploymentUnavailableError:
            raise ServiceUnavailableError(f"no healthy engine for model '{model}'") from None
        except _REPLICA_FAILURES as exc:
            logger.warning("engine replica failed on request %s: %s", request_id, type(exc).__name__)
            raise UpstreamError("The engine replica failed while handling the request.") from None
        finally:
            if not finished:
                # Client gone, request failed or stalled: cancel the replica's work (aborts the vLLM request).
                response.cancel()  # type: ignore[no-untyped-call]  # unannotated in Ray
            with contextlib.suppress(Exception):
                await events.aclose()  # type: ignore[attr-defined]

    def _transport(self, model: str) -> str:
        """How calls to this model's engines travel, read from the handle the requests use."""
        by_reference = getattr(self._handles[model].handle_options, "_by_reference", True)
        return "ray" if by_reference else "grpc"

    async def readiness(self) -> Readiness:
        deps: dict[str, DependencyStatus] = {}
        engines: dict[str, Any] = {}
        try:
            engines = await call_with_timeout(get_router().engines.remote(), 2)
            deps["router"] = DependencyStatus(ok=True, detail=f"{len(engines)} engine replicas reporting")
        except Exception as exc:
            deps["router"] = DependencyStatus(ok=False, detail=f"router actor unreachable: {type(exc).__name__}")
        for m in self._config.models:
            fresh = [rid for rid, e in engines.items() if e["model"] == m.served_name and e["fresh"]]
            deps[f"engine:{m.served_name}"] = DependencyStatus(
                ok=bool(fresh) and m.served_name in self._cards,
                detail=f"{len(fresh)} healthy replicas of {m.num_replicas}",
                data={"replicas": {rid: engines[rid]["stats"] for rid in fresh},
                      "transport": self._transport(m.served_name)},
            )
        deps["regions"] = await regions_readiness(
            lambda: call_with_timeout(get_router().regions.remote(), 2)
        )
        if self._billing_enabled:
            deps["billing"] = await _billing_status()
        return Readiness(ready=all(d.ok for d in deps.values()), dependencies=deps)

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher


async def _billing_status() -> DependencyStatus:
    from deployments.billing_actor import get_billing_actor

    try:
        status = await call_with_timeout(get_billing_actor().status.remote(), 5)
    except Exception as exc:
        return DependencyStatus(ok=False, detail=f"billing actor unreachable: {type(exc).__name__}")
    return billing_readiness(status)  # ok only when its loops finished an iteration lately
