"""Room on the engines for a batch line, beside this replica's own interactive count
(`InteractiveLoad`): the router's view of each engine replica's queue (crosslogic/routing/load_table.py),
as the ingress holds it. A line for a model waits while any of the model's engines (fresh in the view)
has a request waiting (it is full: a line now would queue beside interactive requests and raise their
TTFT) or runs more than `engine_busy_fraction` of its batch capacity (vLLM's max_num_seqs).

Ray-free: the view comes through `EngineLoads`, a callable the ingress backs with its router-fed
gateway. No view (none fetched yet, the router actor away, a model only other regions serve): the
local count alone decides, so batches never stall on a missing view.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from crosslogic.config import ModelDeploymentConfig
from crosslogic.engine.simulator_config import SimulatorConfig
from crosslogic.routing.load_table import ReplicaLoad

# model -> its engine replicas as last reported; None: no view to go by.
EngineLoads = Callable[[str], Sequence[ReplicaLoad] | None]


def batch_capacity(model: ModelDeploymentConfig, default: int) -> int:
    """Sequences one engine of `model` runs at once: max_num_seqs (the simulator's max_batch), else `default`."""
    engine = model.engine
    if engine.kind == "simulator":
        return (engine.simulator or SimulatorConfig()).max_batch
    value = engine.engine_kwargs.get("max_num_seqs")
    return value if isinstance(value, int) and value > 0 else default


class EngineRoom:
    def __init__(
        self, loads: EngineLoads, capacities: Mapping[str, int], *, busy_fraction: float, default_capacity: int,
    ) -> None:
        self._loads = loads
        self._capacities = dict(capacities)
        self._busy_fraction = busy_fraction
        self._default_capacity = default_capacity

    def has_room(self, model: str) -> bool:
        replicas = self._loads(model)
        if not replicas:
            return True
        limit = self._busy_fraction * self._capacities.get(model, self._default_capacity)
        return all(r.waiting == 0 and r.running <= limit for r in replicas if r.fresh)
