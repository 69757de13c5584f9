"""The supervisor's restart counter exported through Ray's metrics: `crosslogic_loop_restarts_total{loop}`.

One per hosting process (each deployment replica or actor makes its own; Ray aggregates the series by
their tags). Core components take it as a `crosslogic.supervisor.LoopRestarts`.
"""

from __future__ import annotations

from ray.util import metrics as ray_metrics

from crosslogic.supervisor import LOOP_RESTARTS_METRIC


class RayLoopRestarts:
    def __init__(self) -> None:
        self._counter = ray_metrics.Counter(
            LOOP_RESTARTS_METRIC,
            description="Restarts of a supervised background loop (crashed or returned), by loop name.",
            tag_keys=("loop",),
        )

    def restarted(self, loop: str) -> None:
        self._counter.inc(tags={"loop": loop})
