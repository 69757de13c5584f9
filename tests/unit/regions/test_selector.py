"""The placement choice across the local cluster and regions (crosslogic/regions/selector.py)."""

from __future__ import annotations

from typing import Any

import pytest

from crosslogic.errors import ServiceUnavailableError
from crosslogic.regions.protocol import RemoteReplica
from crosslogic.regions.selector import LOCAL_KEY, LocalCluster, Placement, choose_placement, region_key
from crosslogic.regions.state import RegionView
from crosslogic.routing.load_table import ReplicaLoad

MODEL = "smol"
SPILL = 4.0


def region(name: str, *loads: tuple[int, int], model: str = MODEL, state: str = "active",
           age_s: float = 0.5, interval_s: float = 2.0, kv: float = 0.0) -> RegionView:
    """A live region whose replicas have these (running, waiting) loads."""
    return RegionView(
        name=name, state=state, gateway_url=f"http://{name}.test:1", models=[model],
        replicas=[RemoteReplica(replica_id=f"{name}-{i}", model=model, running=r, waiting=w, kv_cache_usage=kv)
                  for i, (r, w) in enumerate(loads)],
        interval_s=interval_s, last_heartbeat_age_s=age_s,
    )


def local(*loads: tuple[int, int], fresh: bool = True, name: str = "home") -> LocalCluster:
    return LocalCluster(name=name, replicas=[
        ReplicaLoad(replica_id=f"r{i}", model=MODEL, running=r, waiting=w, fresh=fresh) for i, (r, w) in enumerate(loads)
    ])


def choose(**kwargs: Any) -> Placement:
    options: dict[str, Any] = dict(local=None, regions={}, in_flight={}, preference=None, exclude=set(),
                                   spill_over_queue_depth=SPILL)
    options.update(kwargs)
    return choose_placement(MODEL, **options)


def test_local_only_when_no_regions() -> None:
    chosen = choose(local=local((3, 0)))
    assert chosen == Placement("home", remote=False, score=3.0) and chosen.key == LOCAL_KEY


def test_local_deployment_without_reports_is_still_tried_when_nothing_else_serves() -> None:
    # Starting engines or an unreachable router actor: the local request router decides, as before.
    assert choose(local=local()).region == "home"
    assert choose(local=local((0, 0), fresh=False)).remote is False


def test_nothing_serves_the_model() -> None:
    with pytest.raises(ServiceUnavailableError, match="no healthy engine for model 'smol'") as info:
        choose(regions={"eu": region("eu", (0, 0), model="other")})
    assert info.value.retryable


def test_least_loaded_wins_without_preference() -> None:
    regions = {"eu": region("eu", (5, 1)), "us": region("us", (2, 0), (9, 9))}
    chosen = choose(local=local((4, 0)), regions=regions)
    assert chosen.region == "us" and chosen.remote and chosen.key == "region:us"
    assert chosen.score == 2.0  # the best replica of the region, not its sum


def test_ties_go_to_the_local_cluster_then_by_name() -> None:
    regions = {"us": region("us", (1, 0)), "eu": region("eu", (1, 0))}
    assert choose(local=local((1, 0)), regions=regions).region == "home"
    assert choose(regions=regions).region == "eu"


def test_kv_cache_use_breaks_ties() -> None:
    regions = {"eu": region("eu", (1, 0), kv=0.9), "us": region("us", (1, 0), kv=0.1)}
    assert choose(regions=regions).region == "us"


def test_preference_is_honoured_within_the_threshold() -> None:
    regions = {"eu": region("eu", (4, 0)), "us": region("us", (0, 0))}
    # eu is deeper by exactly the threshold: still eu.
    assert choose(regions=regions, preference="eu").region == "eu"
    assert choose(local=local((0, 0)), regions=regions, preference="eu").region == "eu"


def test_spill_over_beyond_the_threshold() -> None:
    regions = {"eu": region("eu", (4, 1)), "us": region("us", (0, 0))}
    assert choose(regions=regions, preference="eu").region == "us"
    # A larger threshold keeps it home.
    assert choose(regions=regions, preference="eu", spill_over_queue_depth=10).region == "eu"


def test_the_local_cluster_is_a_region_like_any_other_for_preference() -> None:
    regions = {"eu": region("eu", (0, 0))}
    assert choose(local=local((3, 0)), regions=regions, preference="home").region == "home"
    assert choose(local=local((6, 0)), regions=regions, preference="home").region == "eu"
    assert choose(local=local((0, 0)), regions=regions, preference="eu").region == "eu"


def test_unknown_or_unusable_preference_is_least_loaded() -> None:
    regions = {"eu": region("eu", (3, 0)), "us": region("us", (1, 0)), "ap": region("ap", (0, 0), state="drained")}
    for preference in ("nowhere", "ap"):
        assert choose(regions=regions, preference=preference).region == "us"


def test_drained_and_stale_regions_are_never_chosen() -> None:
    drained = region("eu", (0, 0), state="drained")
    silent = region("us", (0, 0), age_s=6.5, interval_s=2.0)  # 3 intervals of 2 s have passed
    for regions in ({"eu": drained}, {"us": silent}):
        assert choose(local=local((50, 50)), regions=regions, preference=next(iter(regions))).region == "home"
        with pytest.raises(ServiceUnavailableError):
            choose(regions=regions)
    # Our copy of the view ages too: a router actor we cannot reach does not keep a region alive.
    fresh_then = region("us", (0, 0), age_s=1.0, interval_s=2.0)
    assert choose(regions={"us": fresh_then}).region == "us"
    with pytest.raises(ServiceUnavailableError):
        choose(regions={"us": fresh_then}, view_age_s=5.5)
    assert choose(regions={"us": silent}, missed_heartbeats=4).region == "us"


def test_a_region_without_a_replica_of_the_model_is_not_a_candidate() -> None:
    listed_only = RegionView(name="eu", state="active", gateway_url="http://eu.test:1", models=[MODEL],
                             replicas=[], interval_s=2.0, last_heartbeat_age_s=0.0)
    with pytest.raises(ServiceUnavailableError):
        choose(regions={"eu": listed_only})


def test_exclusions_move_the_retry_elsewhere() -> None:
    regions = {"eu": region("eu", (0, 0)), "us": region("us", (3, 0))}
    assert choose(local=local((5, 0)), regions=regions, exclude={region_key("eu")}).region == "us"
    assert choose(local=local((5, 0)), regions=regions, exclude={region_key("eu"), region_key("us")}).region == "home"
    # Every local replica failed this request: a region takes the retry...
    assert choose(local=local((0, 0)), regions=regions, exclude={"r0"}).region == "eu"
    # ...and the local cluster is the last resort when nothing else is left (Serve picks a replica).
    chosen = choose(local=local((0, 0)), regions=regions, exclude={"r0", region_key("eu"), region_key("us")})
    assert chosen.region == "home" and not chosen.remote
    # One local replica failed, another is left: the local cluster stays a candidate on its score.
    assert choose(local=local((0, 0), (1, 0)), regions={"us": region("us", (3, 0))}, exclude={"r0"}).score == 1.0
    with pytest.raises(ServiceUnavailableError):
        choose(regions={"eu": region("eu", (0, 0))}, exclude={region_key("eu")})


def test_in_flight_counting_spreads_a_burst() -> None:
    """A burst routed between two heartbeats: our own in-flight requests raise a region's score."""
    regions = {"eu": region("eu", (0, 0), (0, 0)), "us": region("us", (0, 0))}
    in_flight = {region_key("eu"): 0, region_key("us"): 0, LOCAL_KEY: 0}
    sent: list[str] = []
    for _ in range(30):
        chosen = choose(local=local((0, 0)), regions=regions, in_flight=in_flight)
        in_flight[chosen.key] += 1
        sent.append(chosen.region)
    # eu has two replicas, so about twice the share of the others (ties go home first, then by name).
    assert (sent.count("eu"), sent.count("home"), sent.count("us")) == (15, 8, 7)
    assert sent[:4] == ["home", "eu", "us", "eu"]


def test_in_flight_spreads_a_preferred_burst_once_past_the_threshold() -> None:
    regions = {"eu": region("eu", (0, 0)), "us": region("us", (0, 0))}
    in_flight = {region_key("eu"): 0, region_key("us"): 0}
    sent: list[str] = []
    for _ in range(12):
        chosen = choose(regions=regions, in_flight=in_flight, preference="eu")
        in_flight[chosen.key] += 1
        sent.append(chosen.region)
    # eu takes requests until it is more than 4 deeper than us, then they alternate.
    assert sent[:5] == ["eu"] * 5 and sent[5] == "us"
    assert sent.count("eu") == 8 and sent.count("us") == 4


def test_reported_load_already_counts_our_requests() -> None:
    """Steady state: the region's report includes our streams; they are not counted twice."""
    regions = {"eu": region("eu", (6, 0)), "us": region("us", (2, 0))}
    chosen = choose(regions=regions, in_flight={region_key("eu"): 6}, preference="eu")
    assert chosen.region == "eu" and chosen.score == 6.0


def test_a_region_named_like_this_cluster_is_this_cluster() -> None:
    regions = {"home": region("home", (0, 0))}
    assert choose(local=local((9, 0)), regions=regions) == Placement("home", remote=False, score=9.0)
