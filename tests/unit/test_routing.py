"""Routing core: the router's load table and the policies ingress replicas route with (no Ray)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from crosslogic.engine.base import EngineStats
from crosslogic.errors import ConfigError
from crosslogic.routing.load_table import LoadTable, ReplicaLoad
from crosslogic.routing.policies import get_policy, least_loaded, least_loaded_p2c, load_score


def test_view_merges_engine_reports_and_other_ingresses_in_flight() -> None:
    table = LoadTable(stale_after_s=5)
    table.report_engine("a", "m", EngineStats(running=3, waiting=1, kv_cache_usage=0.5), now=100)
    table.report_engine("b", "m", EngineStats(running=0), now=100)
    table.report_ingress("ing-1", {"a": 2, "b": 1}, now=100)
    table.report_ingress("ing-2", {"a": 1}, now=100)
    view = table.view(now=101, for_ingress="ing-1").replicas
    # ing-1's own requests are excluded: it knows them exactly and locally.
    assert view["a"].remote_in_flight == 1 and view["b"].remote_in_flight == 0
    assert view["a"].running == 3 and view["a"].waiting == 1 and view["a"].fresh


def test_stale_and_forgotten_replicas() -> None:
    table = LoadTable(stale_after_s=5, forget_after_s=30)
    table.report_engine("a", "m", EngineStats(running=1), now=0)
    assert table.view(now=6).replicas["a"].fresh is False
    assert "a" not in table.view(now=31).replicas


def test_version_moves_on_every_report() -> None:
    table = LoadTable()
    v0 = table.view(now=0).version
    table.report_engine("a", "m", EngineStats(), now=0)
    table.report_ingress("i", {}, now=0)
    assert table.view(now=0).version == v0 + 2


def test_load_score_counts_waiting_on_top_of_in_flight() -> None:
    view = {"a": ReplicaLoad(replica_id="a", model="m", running=2, waiting=3, remote_in_flight=1)}
    assert load_score("a", view, {"a": 2}) == pytest.approx(3 + 3)
    # No fresh report: only what this ingress knows it sent.
    stale = {"a": ReplicaLoad(replica_id="a", model="m", running=9, fresh=False)}
    assert load_score("a", stale, {"a": 1}) == 1


def test_least_loaded_prefers_idle_replica() -> None:
    view = {
        "busy": ReplicaLoad(replica_id="busy", model="m", running=8, waiting=4),
        "idle": ReplicaLoad(replica_id="idle", model="m"),
    }
    rng = random.Random(0)
    for _ in range(20):
        assert least_loaded(["busy", "idle"], view, {}, rng)[0] == "idle"
        assert least_loaded_p2c(["busy", "idle"], view, {}, rng)[0] == "idle"


def test_p2c_spreads_a_burst_when_counts_are_updated_per_decision() -> None:
    """The request router reserves a slot at decision time; a burst then splits evenly."""
    rng = random.Random(1)
    local: Counter[str] = Counter()
    replicas = ["r1", "r2", "r3", "r4"]
    for _ in range(400):
        chosen = least_loaded_p2c(replicas, {}, local, rng)[0]
        local[chosen] += 1
    assert max(local.values()) - min(local.values()) <= 2


def test_p2c_ranks_every_candidate_once() -> None:
    ranked = least_loaded_p2c(["a", "b", "c", "d"], {}, {}, random.Random(3))
    assert sorted(ranked) == ["a", "b", "c", "d"]
    assert least_loaded_p2c(["only"], {}, {}, random.Random(3)) == ["only"]


def test_unknown_policy_is_a_config_error() -> None:
    assert callable(get_policy("least_loaded_p2c"))
    with pytest.raises(ConfigError, match="unknown routing policy"):
        get_policy("round_robin_forever")
