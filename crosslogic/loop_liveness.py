"""Whether background loops are actually running: each finished an iteration within N intervals.

A task that is "not done" proves nothing: a loop stuck on a frozen connection, or crashing on every
iteration and being restarted by its supervisor, is alive as a task and does no work. Each loop calls
`beat(name)` when an iteration finishes; `/ready` reads `view()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel

DEFAULT_MISSED_INTERVALS = 3


class LoopState(BaseModel):
    interval_s: float
    last_iteration_age_s: float
    iterations: int
    # An iteration finished within `missed_intervals` intervals (start-up counts as one).
    running: bool


class LoopLiveness:
    def __init__(
        self,
        intervals: dict[str, float],
        *,
        missed_intervals: int = DEFAULT_MISSED_INTERVALS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._intervals = dict(intervals)
        self._missed = missed_intervals
        self._clock = clock
        started = clock()
        # Start-up counts as a beat: a loop gets N intervals to finish its first iteration.
        self._last = dict.fromkeys(self._intervals, started)
        self._iterations = dict.fromkeys(self._intervals, 0)

    def beat(self, name: str) -> None:
        self._last[name] = self._clock()
        self._iterations[name] = self._iterations.get(name, 0) + 1

    def beater(self, name: str) -> Callable[[], None]:
        return lambda: self.beat(name)

    def view(self) -> dict[str, LoopState]:
        now = self._clock()
        states = {}
        for name, interval in self._intervals.items():
            age = now - self._last[name]
            states[name] = LoopState(
                interval_s=interval, last_iteration_age_s=round(age, 3), iterations=self._iterations[name],
                running=age <= self._missed * interval,
            )
        return states


def describe_loops(states: dict[str, LoopState]) -> tuple[bool, str]:
    """(all running, one line), e.g. "billing_export stalled (last iteration 95.0s ago, interval 30s)"."""
    stalled = [
        f"{name} stalled (last iteration {s.last_iteration_age_s:.1f}s ago, interval {s.interval_s:g}s)"
        for name, s in sorted(states.items()) if not s.running
    ]
    if stalled:
        return False, "; ".join(stalled)
    return True, "loops running: " + ", ".join(
        f"{name} ({s.last_iteration_age_s:.1f}s ago)" for name, s in sorted(states.items())
    )
