"""`/admin/v1/regions`: register regions, hand out their secrets, drain, rotate and disable them.

The registry (PostgreSQL) says which regions exist; the live view (the router actor's RegionTable,
reached through an injected callable so this module needs no Ray) says how each is doing. A region's
secret is derived, never stored: it is shown once, when created or rotated.
"""

# No `from __future__ import annotations`: FastAPI must resolve the route-local Annotated aliases.
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, status
from pydantic import BaseModel, Field

from crosslogic.admin.deps import AdminCall, AdminDeps, require_scope
from crosslogic.admin.jwt_auth import AdminScope
from crosslogic.api.errors import error_responses
from crosslogic.audit.log import audited
from crosslogic.engine.base import ModelCard
from crosslogic.errors import ConflictError
from crosslogic.regions import registry
from crosslogic.regions.config import MASTER_SECRET_ENV, REGION_SECRET_ENV
from crosslogic.regions.protocol import RemoteReplica, VersionSet
from crosslogic.regions.registry import RegionCreate, RegionRecord
from crosslogic.regions.signing import REGION_NAME_PATTERN, derive_region_secret, encode_secret
from crosslogic.regions.state import RegionView

log = logging.getLogger("crosslogic.admin.regions")

LiveView = Callable[[], Awaitable[dict[str, dict[str, Any]]]]
SetDrained = Callable[[str, bool], Awaitable[None]]
Forget = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class RegionsAdmin:
    """What the region routes need besides the pool. Each callable reaches the router actor in
    the ingress; None (unit tests, a CLI-only app): the registry alone."""

    master_secret: bytes | None = None
    live_view: LiveView | None = None
    set_drained: SetDrained | None = None
    forget: Forget | None = None


RegionStatusName = Literal["active", "drained", "disabled", "unknown"]


class RegionStatus(BaseModel):
    object: str = "region"
    name: str
    state: RegionStatusName = Field(description="unknown: the live view is unavailable")
    reason: str = ""
    secret_generation: int
    operator_drained: bool
    disabled_at: datetime | None
    created_at: datetime
    last_heartbeat_at: datetime | None
    last_heartbeat_age_s: float | None
    gateway_url: str | None
    models: list[str] = Field(default_factory=list)
    replicas: list[RemoteReplica] = Field(default_factory=list)
    # The served models as the region's engines describe them (context length, task).
    cards: list[ModelCard] = Field(default_factory=list)
    versions: VersionSet | None
    agent_id: str | None


class RegionList(BaseModel):
    object: str = "list"
    data: list[RegionStatus]


class RegionSecret(BaseModel):
    region: RegionStatus
    secret: str = Field(description=f"give it to the region as {REGION_SECRET_ENV}; shown once")


def region_status(record: RegionRecord, live: RegionView | None, live_known: bool) -> RegionStatus:
    """A registry row merged with the live view (`live_known`: whether that view could be read)."""
    age: float | None = None
    if record.last_heartbeat_at is not None:
        age = round((datetime.now(UTC) - record.last_heartbeat_at).total_seconds(), 3)
    state: RegionStatusName
    if record.disabled:
        state, reason = "disabled", "disabled by an operator"
    elif live is not None:
        state, reason, age = live.state, live.reason, live.last_heartbeat_age_s
    elif not live_known:
        state, reason = "unknown", "the live view is unavailable"
    else:
        state = "drained"
        reason = "no heartbeat yet" if record.last_heartbeat_at is None else "no recent heartbeat"
    return RegionStatus(
        name=record.name, state=state, reason=reason, secret_generation=record.secret_generation,
        operator_drained=record.operator_drained, disabled_at=record.disabled_at, created_at=record.created_at,
        last_heartbeat_at=record.last_heartbeat_at, last_heartbeat_age_s=age,
        gateway_url=live.gateway_url if live else record.last_gateway_url,
        models=list(live.models) if live else [], replicas=list(live.replicas) if live else [],
        cards=list(live.cards) if live else [],
        versions=live.versions if live else record.last_versions,
        agent_id=live.agent_id if live else record.last_agent_id,
    )


def regions_router(deps: AdminDeps, regions: RegionsAdmin) -> APIRouter:
    router = APIRouter(prefix="/regions", tags=["regions"])
    Reader = Annotated[AdminCall, Depends(require_scope(deps, AdminScope.READ))]
    Writer = Annotated[AdminCall, Depends(require_scope(deps, AdminScope.WRITE))]
    Name = Annotated[str, Path(pattern=REGION_NAME_PATTERN, description="the region's name")]

    async def live_views() -> tuple[dict[str, RegionView], bool]:
        if regions.live_view is None:
            return {}, False
        try:
            raw = await regions.live_view()
            return {name: RegionView.model_validate(view) for name, view in raw.items()}, True
        except Exception as exc:  # the router actor restarting: show the registry
            log.warning("region live view unavailable: %r", exc)
            return {}, False

    async def status_of(record: RegionRecord) -> RegionStatus:
        views, known = await live_views()
        return region_status(record, views.get(record.name), known)

    def secret_for(record: RegionRecord) -> str:
        assert regions.master_secret is not None
        return encode_secret(derive_region_secret(regions.master_secret, record.name, record.secret_generation))

    def require_master() -> None:
        if regions.master_secret is None:
            raise ConflictError(
                f"regions need a master secret: set {MASTER_SECRET_ENV} (hex, 32+ bytes, e.g. "
                "`openssl rand -hex 32`) on the control plane and restart it",
                code="region_master_secret_missing",
            )

    async def push(what: str, call: Awaitable[None] | None) -> None:
        # The registry is the truth and every heartbeat carries it to the live view: a failed push
        # only delays the change by one heartbeat interval.
        if call is None:
            return
        try:
            await call
        except Exception as exc:
            log.warning("could not push %s to the live region view: %r", what, exc)

    @router.post(
        "", status_code=status.HTTP_201_CREATED, responses=error_responses(409),
        summary="Register a region; the response holds its secret, which is never shown again",
    )
    async def create_region(call: Writer, body: RegionCreate) -> RegionSecret:
        async with audited(
            deps.pool, call.audit, action="region.create", target_type="region", target_id=body.name
        ) as change:
            change.after = {"request": body.model_dump()}
            require_master()
            record = await registry.create_region(change.conn, body.name)
            change.after = record  # never the secret
        return RegionSecret(region=await status_of(record), secret=secret_for(record))

    @router.get("", summary="List regions: the registry merged with their live state")
    async def list_regions(_: Reader) -> RegionList:
        records = await registry.list_regions(deps.pool)
        views, known = await live_views()
        return RegionList(data=[region_status(r, views.get(r.name), known) for r in records])

    @router.get("/{name}", summary="Get one region with its live state")
    async def get_region(_: Reader, name: Name) -> RegionStatus:
        return await status_of(await registry.get_region(deps.pool, name))

    async def set_drained(call: AdminCall, name: str, drained: bool) -> RegionStatus:
        action = "region.drain" if drained else "region.undrain"
        async with audited(deps.pool, call.audit, action=action, target_type="region", target_id=name) as change:
            change.before = await registry.get_region(change.conn, name, for_update=True)
            change.after = await registry.set_drained(change.conn, name, drained)
        await push(action, regions.set_drained(name, drained) if regions.set_drained else None)
        return await status_of(change.after)

    @router.post("/{name}/drain", responses=error_responses(409),
                 summary="Drain a region: no new requests go there (outlives heartbeats and restarts)")
    async def drain_region(call: Writer, name: Name) -> RegionStatus:
        return await set_drained(call, name, True)

    @router.post("/{name}/undrain", responses=error_responses(409), summary="Undo an operator's drain")
    async def undrain_region(call: Writer, name: Name) -> RegionStatus:
        return await set_drained(call, name, False)

    @router.post(
        "/{name}/rotate-secret", responses=error_responses(409),
        summary="New secret for a region (shown once); the old one stops working at once",
    )
    async def rotate_secret(call: Writer, name: Name) -> RegionSecret:
        async with audited(
            deps.pool, call.audit, action="region.rotate_secret", target_type="region", target_id=name
        ) as change:
            require_master()
            change.before = await registry.get_region(change.conn, name, for_update=True)
            change.after = await registry.rotate_generation(change.conn, name)
        return RegionSecret(region=await status_of(change.after), secret=secret_for(change.after))

    @router.delete("/{name}", summary="Disable a region: its heartbeats are refused, no request goes there")
    async def delete_region(call: Writer, name: Name) -> RegionStatus:
        async with audited(
            deps.pool, call.audit, action="region.disable", target_type="region", target_id=name
        ) as change:
            change.before = await registry.get_region(change.conn, name, for_update=True)
            change.after = await registry.disable_region(change.conn, name)
        await push("region.disable", regions.forget(name) if regions.forget else None)
        return await status_of(change.after)

    return router
