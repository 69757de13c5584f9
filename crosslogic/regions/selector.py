"""Where one request goes: the local cluster's engines or a named region (pure; no I/O, no Ray).

The ingress decides from its own copy of the router actor's views (refreshed off the request path)
and its own in-flight counts, as the local request router does for replicas.

Load of a placement = the best (lowest) score among its replicas serving the model, where a replica's
score is what `crosslogic.routing.policies.load_score` measures: requests it is busy with, plus what
its engine could not schedule, plus KV-cache use as a tie-break. This ingress's own in-flight requests
to a placement, spread evenly over its replicas, stand in for `running` when they exceed it: reports
are seconds old for a region (one heartbeat), so a burst routed between two reports must raise the
score as it is routed, or it would all land on one region. Taking the larger of the two (not the sum)
keeps requests the report already counts from being counted twice under steady load, which would
halve the spill-over threshold in effect.

Scores are not divided by capacity: the spill-over threshold is a number of queued requests, and
a replica's `running` is already bounded by what its engine batches.

Preference (header, else key, else tenant): the preferred placement wins unless its score exceeds the
best other's by more than `spill_over_queue_depth`. A preference that names no live placement of the
model (unknown, drained, excluded, not serving it) is as if there were none: the least loaded wins.
Equal scores go to the local cluster first (no WAN hop), then by name.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from crosslogic.errors import ServiceUnavailableError
from crosslogic.regions.state import RegionView
from crosslogic.routing.load_table import ReplicaLoad

LOCAL_KEY = "local"
REGION_PREFIX = "region:"


def region_key(name: str) -> str:
    """A remote placement's name in `RoutingHints.exclude` / `chosen` (local replicas use their ids)."""
    return REGION_PREFIX + name


@dataclass(frozen=True)
class Placement:
    """Where a request is served: `region` is the serving region's name (the local cluster's own name
    when `remote` is False)."""

    region: str
    remote: bool
    score: float = 0.0

    @property
    def key(self) -> str:
        return region_key(self.region) if self.remote else LOCAL_KEY


@dataclass(frozen=True)
class LocalCluster:
    """The control plane's own engines for one model: `replicas` as the router actor last saw them."""

    name: str
    replicas: Sequence[ReplicaLoad] = ()


def replica_score(running: int, waiting: int, kv_cache_usage: float, mine: float) -> float:
    """One replica's expected queue depth for a new request (see the module docstring)."""
    return max(float(running), mine) + waiting + kv_cache_usage * 0.5


def _spread(in_flight: int, replicas: int) -> float:
    return in_flight / replicas if replicas else float(in_flight)


def _local_candidate(
    local: LocalCluster | None, model: str, in_flight: int, exclude: Collection[str]
) -> tuple[Placement | None, Placement | None]:
    """(candidate from fresh reports, last resort): a local deployment nobody has heard from yet
    (starting, router actor restarting) or whose every replica already failed this request is tried
    only when nothing else can serve, as the local request router does today."""
    if local is None:
        return None, None
    fresh = [r for r in local.replicas if r.fresh and r.model == model]
    usable = [r for r in fresh if r.replica_id not in exclude]
    last_resort = Placement(local.name, remote=False, score=float(in_flight))
    if not usable:
        return None, last_resort
    mine = _spread(in_flight, len(usable))
    score = min(replica_score(r.running, r.waiting, r.kv_cache_usage, mine) for r in usable)
    return Placement(local.name, remote=False, score=score), None


def live_region(view: RegionView, model: str, *, view_age_s: float = 0.0, missed_heartbeats: int = 3) -> bool:
    """Active, serving `model`, and not silent for `missed_heartbeats` intervals counting the age of
    our copy of the view (a router actor we cannot reach leaves our copy growing old)."""
    if view.state != "active" or model not in view.models:
        return False
    if view.last_heartbeat_age_s + view_age_s > missed_heartbeats * view.interval_s:
        return False
    return any(r.model == model for r in view.replicas)


def _region_candidate(view: RegionView, model: str, in_flight: int) -> Placement:
    replicas = [r for r in view.replicas if r.model == model]
    mine = _spread(in_flight, len(replicas))
    score = min(replica_score(r.running, r.waiting, r.kv_cache_usage, mine) for r in replicas)
    return Placement(view.name, remote=True, score=score)


def choose_placement(
    model: str,
    *,
    local: LocalCluster | None,
    regions: Mapping[str, RegionView],
    in_flight: Mapping[str, int],
    preference: str | None,
    exclude: Collection[str],
    spill_over_queue_depth: float,
    view_age_s: float = 0.0,
    missed_heartbeats: int = 3,
) -> Placement:
    """The placement for one request of `model`.

    `local`: None when this cluster has no deployment of the model. `in_flight`: this ingress's
    requests in progress by `Placement.key`. `exclude`: placements that already failed this request
    (`region:<name>` and local replica ids). Raises ServiceUnavailableError (retryable) when nothing
    serves the model.
    """
    local_name = local.name if local is not None else None
    candidate, last_resort = _local_candidate(local, model, in_flight.get(LOCAL_KEY, 0), exclude)
    candidates: list[Placement] = [candidate] if candidate is not None else []
    for name, view in regions.items():
        if name == local_name or region_key(name) in exclude:
            continue  # a region named like this cluster is this cluster (its engines are local)
        if live_region(view, model, view_age_s=view_age_s, missed_heartbeats=missed_heartbeats):
            candidates.append(_region_candidate(view, model, in_flight.get(region_key(name), 0)))
    if not candidates:
        if last_resort is not None:
            return last_resort
        raise ServiceUnavailableError(f"no healthy engine for model '{model}'")
    ranked = sorted(candidates, key=lambda p: (p.score, p.remote, p.region))
    best = ranked[0]
    preferred = next((p for p in ranked if p.region == preference), None)
    if preferred is None or preferred is best:
        return best
    best_other = best  # the preferred one is not first, so the first is the best other
    if preferred.score - best_other.score > spill_over_queue_depth:
        return best_other
    return preferred
