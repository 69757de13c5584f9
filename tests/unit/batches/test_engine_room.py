"""Whether a batch line may start, from the engines' queues as the router reports them
(crosslogic/batches/engine_room.py) and this replica's interactive count (InteractiveLoad)."""

from __future__ import annotations

from collections.abc import Sequence

from crosslogic.batches.engine_lines import InteractiveLoad
from crosslogic.batches.engine_room import EngineRoom, batch_capacity
from crosslogic.config import ModelDeploymentConfig
from crosslogic.routing.load_table import ReplicaLoad
from tests.unit.api.scripted_api import ScriptedGateway


def _room(view: dict[str, list[ReplicaLoad]] | None, **capacities: int) -> EngineRoom:
    def loads(model: str) -> Sequence[ReplicaLoad] | None:
        return None if view is None else view.get(model, [])

    return EngineRoom(loads, capacities, busy_fraction=0.5, default_capacity=8)


def _replica(rid: str, running: int = 0, waiting: int = 0, *, model: str = "m", fresh: bool = True) -> ReplicaLoad:
    return ReplicaLoad(replica_id=rid, model=model, running=running, waiting=waiting, fresh=fresh)


def test_a_line_waits_while_any_engine_of_its_model_has_a_request_waiting() -> None:
    assert _room({"m": [_replica("a"), _replica("b")]}, m=32).has_room("m")
    assert not _room({"m": [_replica("a"), _replica("b", waiting=1)]}, m=32).has_room("m")


def test_a_line_waits_while_any_engine_runs_above_the_fraction_of_its_capacity() -> None:
    # 0.5 of 32: 16 running still leaves room, 17 does not.
    assert _room({"m": [_replica("a", running=16), _replica("b", running=3)]}, m=32).has_room("m")
    assert not _room({"m": [_replica("a", running=17), _replica("b", running=3)]}, m=32).has_room("m")
    # A model without a configured capacity: the default (8 -> 4 running).
    assert _room({"x": [_replica("a", 4, model="x")]}).has_room("x")
    assert not _room({"x": [_replica("a", 5, model="x")]}).has_room("x")


def test_only_the_lines_model_and_fresh_engines_count() -> None:
    view = {"m": [_replica("a", waiting=3, fresh=False), _replica("b")], "other": [_replica("c", waiting=9)]}
    assert _room(view, m=32).has_room("m")  # a stale report is not trusted; another model's queue is not ours
    assert not _room(view, other=32).has_room("other")


def test_without_a_view_the_local_count_decides() -> None:
    assert _room(None, m=32).has_room("m")
    assert _room({}, m=32).has_room("m")  # the model's engines report nowhere here (another region's)


def test_batch_capacity_from_the_model_config() -> None:
    vllm = ModelDeploymentConfig.model_validate(
        {"served_name": "a", "source": "x", "engine": {"engine_kwargs": {"max_num_seqs": 32}}})
    simulator = ModelDeploymentConfig.model_validate(
        {"served_name": "b", "source": "x", "engine": {"kind": "simulator", "simulator": {"max_batch": 12}}})
    plain = ModelDeploymentConfig.model_validate({"served_name": "c", "source": "x"})
    assert [batch_capacity(m, 256) for m in (vllm, simulator, plain)] == [32, 12, 256]


def test_interactive_load_asks_the_engines_only_when_this_replica_has_room() -> None:
    asked: list[str] = []

    def engines(model: str) -> bool:
        asked.append(model)
        return model == "idle"

    load = InteractiveLoad(ScriptedGateway(["idle", "busy"]), busy_threshold=1, engines=engines)
    assert load.has_room() and asked == []  # no model: this replica's count alone
    assert load.has_room("idle") and not load.has_room("busy") and asked == ["idle", "busy"]
    load.in_flight = 1  # at the interactive threshold: no line, whatever the engines say
    assert not load.has_room("idle") and asked == ["idle", "busy"]
