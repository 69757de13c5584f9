"""The control plane's live view of its regions, rebuilt from heartbeats (held by the router actor).

Nothing here is persisted: the registry (PostgreSQL) keeps which regions exist and whether an
operator drained one; a restarted router actor knows every live region again one heartbeat later.

A region is `active` while it beats. After `missed_heartbeats` silent intervals it is `drained`:
no new requests go there (requests without a first token move elsewhere; streams in progress end
when their connection does). An operator's drain has the same effect and outlives heartbeats.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from crosslogic.engine.base import ModelCard
from crosslogic.regions.protocol import Heartbeat, RemoteReplica, VersionSet

RegionState = Literal["active", "drained"]


class RegionView(BaseModel):
    """One region as the ingress routes to it and as /ready and the admin API show it."""

    name: str
    state: RegionState
    # Why it is drained ("" while active): "no heartbeat for 7.5s (3 intervals of 2.5s)", "drained by an operator".
    reason: str = ""
    gateway_url: str
    models: list[str] = Field(default_factory=list)
    replicas: list[RemoteReplica] = Field(default_factory=list)
    versions: VersionSet | None = None
    interval_s: float
    last_heartbeat_age_s: float
    agent_id: str = ""
    # The served models' cards: the ingress lists (and checks requests against) a model only a region serves.
    cards: list[ModelCard] = Field(default_factory=list)
    # Which generation of the region's secret signs calls to its gateway (the registry's, passed in by
    # whoever reports the heartbeat): the ingress signs without a database read per request.
    secret_generation: int = 1


class _Entry(BaseModel):
    heartbeat: Heartbeat
    received_at: float
    operator_drained: bool = False
    secret_generation: int = 1
    # The control plane's `regions.missed_heartbeats`, carried by each report: the router actor is
    # created without the app config, and an updated config takes effect with the next heartbeat.
    missed_heartbeats: int | None = None


class RegionTable:
    def __init__(self, missed_heartbeats: int = 3, forget_after_s: float = 24 * 3600.0) -> None:
        self._missed = missed_heartbeats
        # A region silent this long leaves the live view (the registry still lists it).
        self._forget_after_s = forget_after_s
        self._entries: dict[str, _Entry] = {}

    def report(
        self, heartbeat: Heartbeat, now: float, *, operator_drained: bool = False, secret_generation: int = 1,
        missed_heartbeats: int | None = None,
    ) -> None:
        self._entries[heartbeat.region] = _Entry(
            heartbeat=heartbeat, received_at=now, operator_drained=operator_drained,
            secret_generation=secret_generation, missed_heartbeats=missed_heartbeats,
        )

    def set_operator_drained(self, region: str, drained: bool) -> None:
        entry = self._entries.get(region)
        if entry is not None:
            entry.operator_drained = drained

    def forget(self, region: str) -> None:
        self._entries.pop(region, None)

    def view(self, now: float) -> dict[str, RegionView]:
        for name in [n for n, e in self._entries.items() if now - e.received_at > self._forget_after_s]:
            del self._entries[name]
        return {name: self._view_of(entry, now) for name, entry in self._entries.items()}

    def _view_of(self, entry: _Entry, now: float) -> RegionView:
        hb = entry.heartbeat
        age = max(0.0, now - entry.received_at)
        missed = entry.missed_heartbeats or self._missed
        state: RegionState = "active"
        reason = ""
        if entry.operator_drained:
            state, reason = "drained", "drained by an operator"
        elif age > missed * hb.interval_s:
            state = "drained"
            reason = f"no heartbeat for {age:.1f}s ({missed} intervals of {hb.interval_s:g}s)"
        return RegionView(
            name=hb.region, state=state, reason=reason, gateway_url=hb.gateway_url, models=list(hb.models),
            replicas=list(hb.replicas), versions=hb.versions, interval_s=hb.interval_s,
            last_heartbeat_age_s=round(age, 3), agent_id=hb.agent_id, cards=list(hb.cards),
            secret_generation=entry.secret_generation,
        )
