"""The router's source of truth for load: what each engine replica reports and what each ingress
replica has in flight.

Nothing here is persisted: engines report every `engine_report_interval_s` and ingress replicas every
`view_refresh_interval_s`, so a restarted router has its full picture back within one interval.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from crosslogic.engine.base import EngineStats


class ReplicaLoad(BaseModel):
    """One engine replica as an ingress replica sees it when routing."""

    replica_id: str
    model: str
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0
    # Requests in flight to this replica from OTHER ingress replicas (the asker's own are local).
    remote_in_flight: int = 0
    # False when the engine has not reported for `stale_after_s`: its numbers are not trusted.
    fresh: bool = True


class RouterView(BaseModel):
    version: int
    replicas: dict[str, ReplicaLoad] = Field(default_factory=dict)


class _EngineEntry(BaseModel):
    model: str
    stats: EngineStats
    reported_at: float


class _IngressEntry(BaseModel):
    in_flight: dict[str, int]
    reported_at: float


class LoadTable:
    def __init__(self, stale_after_s: float = 5.0, forget_after_s: float = 30.0) -> None:
        self._stale_after_s = stale_after_s
        # A replica silent this long is gone (scaled down or dead): drop it.
        self._forget_after_s = forget_after_s
        self._engines: dict[str, _EngineEntry] = {}
        self._ingresses: dict[str, _IngressEntry] = {}
        self._version = 0

    def report_engine(self, replica_id: str, model: str, stats: EngineStats, now: float) -> None:
        self._engines[replica_id] = _EngineEntry(model=model, stats=stats, reported_at=now)
        self._version += 1

    def report_ingress(self, ingress_id: str, in_flight: dict[str, int], now: float) -> None:
        self._ingresses[ingress_id] = _IngressEntry(in_flight=dict(in_flight), reported_at=now)
        self._version += 1

    def remove_replica(self, replica_id: str) -> None:
        if self._engines.pop(replica_id, None) is not None:
            self._version += 1

    def _expire(self, now: float) -> None:
        for rid in [r for r, e in self._engines.items() if now - e.reported_at > self._forget_after_s]:
            del self._engines[rid]
        for iid in [i for i, e in self._ingresses.items() if now - e.reported_at > self._forget_after_s]:
            del self._ingresses[iid]

    def view(self, now: float, for_ingress: str | None = None) -> RouterView:
        self._expire(now)
        remote: dict[str, int] = {}
        for ingress_id, entry in self._ingresses.items():
            if ingress_id == for_ingress:
                continue
            for rid, count in entry.in_flight.items():
                remote[rid] = remote.get(rid, 0) + count
        replicas = {
            rid: ReplicaLoad(
                replica_id=rid,
                model=e.model,
                running=e.stats.running,
                waiting=e.stats.waiting,
                kv_cache_usage=e.stats.kv_cache_usage,
                remote_in_flight=remote.get(rid, 0),
                fresh=now - e.reported_at <= self._stale_after_s,
            )
            for rid, e in self._engines.items()
        }
        return RouterView(version=self._version, replicas=replicas)

    def engines(self, now: float) -> dict[str, tuple[str, EngineStats, bool]]:
        """replica id -> (model, last stats, fresh) for readiness and the operator view."""
        self._expire(now)
        return {
            rid: (e.model, e.stats, now - e.reported_at <= self._stale_after_s)
            for rid, e in self._engines.items()
        }
