"""The ingress's `Gateway` across clusters: each request goes to this cluster's engines or to a region.

It wraps the local gateway (Serve handles; `deployments/gateway.py`) and a `RegionClient`, and decides
per request with `choose_placement` from its own copy of the router actor's views, which the Ray side
refreshes off the request path (`update`). With no region known, a request goes straight to the local
gateway as before: no extra work on the local-only path.

Where a request was sent is recorded on its `RoutingHints`: `region` (usage rows, the response's
x-crosslogic-region header) and, for a remote placement, `chosen = "region:<name>"`, so a failure
before the first event moves the relay's retry to another placement.

A region whose gateway failed a request before its first event (unreachable, refused our credential)
is passed over for `FAILED_REGION_COOL_DOWN_S`: its agent may go on beating while its gateway is down,
and until the view drains it each request would pay a failed attempt first. It is still tried when
nothing else can serve.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Collection, Mapping
from contextlib import aclosing
from typing import Any, Protocol

from pydantic import ValidationError

from crosslogic.api.gateway import Readiness
from crosslogic.engine.base import Endpoint, EngineEvent, ModelCard
from crosslogic.errors import CrossLogicError, ServiceUnavailableError
from crosslogic.regions.config import MASTER_SECRET_ENV, RegionsConfig
from crosslogic.regions.gateway_client import RegionClient
from crosslogic.regions.selector import LocalCluster, Placement, choose_placement, live_region, region_key
from crosslogic.regions.state import RegionView
from crosslogic.routing.hints import RoutingHints
from crosslogic.routing.load_table import ReplicaLoad

logger = logging.getLogger(__name__)

ENGINE_DEPENDENCY = "engine:"
# Long enough that a dead region costs an ingress replica one failed attempt per few seconds instead of
# one per request; short enough that a passing fault does not keep a healthy region idle for long.
FAILED_REGION_COOL_DOWN_S = 5.0


class LocalGateway(Protocol):
    def models(self) -> list[ModelCard]: ...

    def stream(
        self, model: str, endpoint: Endpoint, body: dict[str, Any], request_id: str, hints: RoutingHints
    ) -> AsyncGenerator[EngineEvent, None]: ...

    async def readiness(self) -> Readiness: ...


class RegionalGateway:
    def __init__(
        self,
        local: LocalGateway | None,
        *,
        local_region: str,
        local_models: Collection[str],
        config: RegionsConfig,
        client: RegionClient | None,
    ) -> None:
        """`local_models`: the models this cluster deploys (served before their engines report, as
        today). `client` None: no master secret, so no region can be called (logged once)."""
        self._local = local
        self._local_region = local_region
        self._local_models = frozenset(local_models) if local is not None else frozenset()
        self._config = config
        self._client = client
        self._regions: dict[str, RegionView] = {}
        self._replicas: dict[str, list[ReplicaLoad]] = {}  # model -> local replicas, as last reported
        self._region_cards: list[ModelCard] = []
        self._synced_at = time.monotonic()
        self._in_flight: dict[str, int] = {}  # Placement.key -> this ingress's requests in progress
        self._failed_until: dict[str, float] = {}  # region -> monotonic time its cool-down ends
        self._warned_no_secret = False

    # -- the view, refreshed off the request path ----------------------------------------------

    def update(self, regions: Mapping[str, Any], engines: Mapping[str, Any] | None, now: float) -> None:
        """The router actor's `regions()` and `engines()` as they came over (plain dicts)."""
        views: dict[str, RegionView] = {}
        for name, raw in regions.items():
            try:
                views[name] = RegionView.model_validate(raw)
            except ValidationError as exc:
                logger.warning("ignoring region %s: unreadable view (%s)", name, exc.errors()[:1])
        if views and self._client is None:
            if not self._warned_no_secret:
                logger.error("regions %s are reporting but %s is not set on the control plane: requests "
                             "stay local", ", ".join(sorted(views)), MASTER_SECRET_ENV)
                self._warned_no_secret = True
            views = {}
        replicas: dict[str, list[ReplicaLoad]] = {}
        for rid, entry in (engines or {}).items():
            stats = entry.get("stats") or {}
            load = ReplicaLoad(
                replica_id=rid, model=entry["model"], running=int(stats.get("running", 0)),
                waiting=int(stats.get("waiting", 0)), kv_cache_usage=float(stats.get("kv_cache_usage", 0.0)),
                fresh=bool(entry.get("fresh")),
            )
            replicas.setdefault(load.model, []).append(load)
        cards: dict[str, ModelCard] = {}
        for name in sorted(views):
            for card in views[name].cards:
                cards.setdefault(card.served_name, card)
        self._regions, self._replicas, self._synced_at = views, replicas, now
        self._region_cards = [c for name, c in cards.items() if name not in self._local_models]

    def live_regions(self, model: str) -> list[str]:
        age = time.monotonic() - self._synced_at
        return sorted(
            name for name, view in self._regions.items()
            if name != self._local_region and live_region(
                view, model, view_age_s=age, missed_heartbeats=self._config.missed_heartbeats)
        )

    # -- Gateway ---------------------------------------------------------------------------------

    def models(self) -> list[ModelCard]:
        """The local models whose engines started, then models only regions serve (from their cards;
        a region's drained models stay listed: requests then get a 503, not a 404, until it is back)."""
        local = self._local.models() if self._local is not None else []
        return [*local, *self._region_cards] if self._region_cards else local

    def stream(
        self, model: str, endpoint: Endpoint, body: dict[str, Any], request_id: str, hints: RoutingHints
    ) -> AsyncIterator[EngineEvent]:
        if not self._regions and self._local is not None:
            hints.region = self._local_region
            return self._local.stream(model, endpoint, body, request_id, hints)
        return self._placed(model, endpoint, body, request_id, hints)

    def choose(self, model: str, hints: RoutingHints) -> Placement:
        now = time.monotonic()
        cooling = {region_key(name) for name, until in self._failed_until.items() if until > now}
        if len(cooling) < len(self._failed_until):
            self._failed_until = {n: u for n, u in self._failed_until.items() if u > now}
        if cooling:
            try:
                return self._choose(model, hints, hints.exclude | cooling, now)
            except ServiceUnavailableError:
                pass  # nothing but cooling regions: try them anyway
        return self._choose(model, hints, hints.exclude, now)

    def _choose(self, model: str, hints: RoutingHints, exclude: set[str], now: float) -> Placement:
        local = None
        if model in self._local_models:
            local = LocalCluster(self._local_region, self._replicas.get(model, ()))
        return choose_placement(
            model, local=local, regions=self._regions, in_flight=self._in_flight,
            preference=hints.region_preference, exclude=exclude,
            spill_over_queue_depth=self._config.spill_over_queue_depth,
            view_age_s=now - self._synced_at, missed_heartbeats=self._config.missed_heartbeats,
        )

    async def _placed(
        self, model: str, endpoint: Endpoint, body: dict[str, Any], request_id: str, hints: RoutingHints
    ) -> AsyncIterator[EngineEvent]:
        placement = self.choose(model, hints)
        hints.region = placement.region
        if placement.remote:
            assert self._client is not None  # no client, no regions in the view
            hints.routed(placement.key)
            events = self._client.stream(
                self._regions[placement.region], model, endpoint, body, request_id, trace_context=hints.trace_context)
        else:
            assert self._local is not None
            events = self._local.stream(model, endpoint, body, request_id, hints)
        key = placement.key
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        started = False
        try:
            async with aclosing(events):
                async for event in events:
                    started = True
                    yield event
        except CrossLogicError as exc:
            if placement.remote and not started and exc.retryable:
                self._failed_until[placement.region] = time.monotonic() + FAILED_REGION_COOL_DOWN_S
            raise
        finally:
            remaining = self._in_flight[key] - 1
            if remaining:
                self._in_flight[key] = remaining
            else:
                del self._in_flight[key]

    async def readiness(self) -> Readiness:
        result = await self._local.readiness() if self._local is not None else Readiness(ready=True, dependencies={})
        return with_region_engines(result, self.live_regions)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def with_region_engines(result: Readiness, live_regions: Callable[[str], list[str]]) -> Readiness:
    """`engine:<model>` is also ok while an active region serves the model: the API can serve it."""
    for name, dep in result.dependencies.items():
        if not name.startswith(ENGINE_DEPENDENCY):
            continue
        regions = live_regions(name[len(ENGINE_DEPENDENCY):])
        if regions:
            dep.data["regions"] = regions
            dep.detail = f"{dep.detail}; served by region(s) {', '.join(regions)}".lstrip("; ")
            dep.ok = True
    result.ready = all(d.ok for d in result.dependencies.values())
    return result
