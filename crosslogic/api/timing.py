"""Where one request's time to first token went, as a `Server-Timing` header.

Every generation response carries it, so an operator (or the benchmark) can split a slow first token
into our stages without a profiler:

- ``auth``: key lookup and scope check (cached after the first request of a key)
- ``body``: reading and validating the JSON body
- ``admit``: waiting for the rate-limit admission (one round trip to Redis or the in-cluster actor);
  when it ran alongside the engine call (the key had room, see crosslogic/api/headroom.py), only
  what the first event still waited for it, and ``admit_overlapped`` is the round trip itself
- ``engine``: inside the engine replica, from the request's arrival to its first chunk: vLLM's
  request preprocessing (chat template, tokenisation), queueing, prefill and the first decode step
- ``transit``: dispatch to the first event minus ``engine``: routing, the handle call to the replica
  and the first chunk's way back (Ray Serve's hops)
- ``upstream``: instead of those two when the engine did not split its time (a non-streamed answer,
  which arrives whole, or an error)
- ``total``: from the handler's start to the first event; what the client sees on top of it is the
  HTTP server and the ingress proxy

Durations are measured within one process each (the engine replica's by its own clock), so they hold
across machines. Costs a handful of clock reads per request.
"""

from __future__ import annotations

import time
from typing import Any

from crosslogic.engine.base import ENGINE_FIRST_MS


class StageTimer:
    __slots__ = ("_dispatched", "_last", "_stages", "_started")

    def __init__(self) -> None:
        self._started = self._last = time.perf_counter()
        self._stages: dict[str, float] = {}
        self._dispatched: float | None = None

    def mark(self, stage: str) -> None:
        """Close `stage`: the time since the previous mark is added to it (after the first event too:
        `total` then grows with it, it is the time to the answer's start)."""
        now = time.perf_counter()
        self._stages[stage] = self._stages.get(stage, 0.0) + (now - self._last) * 1000
        self._last = now
        if "total" in self._stages:
            self._stages["total"] = (now - self._started) * 1000

    def note(self, stage: str, ms: float | None) -> None:
        """Record a duration that ran alongside the stages (not part of `total`)."""
        if ms is not None:
            self._stages[stage] = ms

    def dispatched(self) -> None:
        """The request leaves for an engine (after a retry: the last dispatch counts)."""
        self._dispatched = self._last = time.perf_counter()

    def first_event(self, engine_timing: dict[str, Any] | None) -> None:
        """The engine's first event arrived; `engine_timing` is what the replica measured."""
        now = time.perf_counter()
        if self._dispatched is not None:
            waited = (now - self._dispatched) * 1000
            if engine_timing and ENGINE_FIRST_MS in engine_timing:
                engine = min(max(float(engine_timing[ENGINE_FIRST_MS]), 0.0), waited)
                self._stages["engine"] = engine
                self._stages["transit"] = waited - engine
            else:  # a whole non-streamed answer, or an error: no split
                self._stages["upstream"] = waited
        self._stages["total"] = (now - self._started) * 1000
        self._last = now

    @property
    def stages(self) -> dict[str, float]:
        return dict(self._stages)

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.2f}" for name, ms in self._stages.items())


def parse_server_timing(value: str) -> dict[str, float]:
    """The inverse of `StageTimer.header` (for benchmarks and tests)."""
    stages: dict[str, float] = {}
    for part in value.split(","):
        name, _, rest = part.strip().partition(";")
        for param in rest.split(";"):
            key, _, val = param.strip().partition("=")
            if key == "dur" and name:
                stages[name] = float(val)
    return stages
