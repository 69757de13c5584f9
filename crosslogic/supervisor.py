"""Run a background loop forever: log its traceback, count, restart with backoff, never die silently.

A loop body that raises is restarted after an exponential backoff (reset once it has run healthily for
`healthy_after_s`); cancellation is the only way to stop it, so a supervised loop can never take the
hosting process down and never disappears without a log line and a counter increment.

Every background loop of CrossLogic runs under `supervise`: its own per-iteration `try/except` (where it
has one) handles the failures it expects; whatever escapes is the supervisor's. Each restart is counted
per loop name on a `LoopRestarts` (deployments export it as `crosslogic_loop_restarts_total{loop=...}`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from crosslogic.backoff import Backoff

if TYPE_CHECKING:
    from crosslogic.metering.metrics import Metrics

log = logging.getLogger(__name__)

LOOP_RESTARTS_METRIC = "crosslogic_loop_restarts"  # Prometheus adds `_total` to a counter


class LoopRestarts(Protocol):
    """Where restarts are counted, by loop name (core cannot import Ray: deployments back it)."""

    def restarted(self, loop: str) -> None: ...


class RestartCounts:
    """Restart counts kept in memory (tests, status pages); `also` forwards each one (e.g. to Ray)."""

    def __init__(self, also: LoopRestarts | None = None) -> None:
        self.counts: dict[str, int] = {}
        self._also = also

    def restarted(self, loop: str) -> None:
        self.counts[loop] = self.counts.get(loop, 0) + 1
        if self._also is not None:
            self._also.restarted(loop)

    def get(self, loop: str) -> int:
        return self.counts.get(loop, 0)


async def supervise(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    metrics: Metrics | None = None,
    restarts: LoopRestarts | None = None,
    backoff_base_s: float = 1.0,
    backoff_max_s: float = 60.0,
    healthy_after_s: float = 300.0,
    alert_after_failures: int = 5,
    finished_on_return: bool = False,
) -> None:
    """`metrics`: the component's own counters (`<name>_crashes_total`); `restarts`: the per-loop
    restart counter. `finished_on_return`: a body that returns has done its work (a loop that ends
    when idle or after its last flush), so supervision ends too instead of restarting it."""
    # Half jitter: a crashing loop always waits at least half its step, never restarts at once.
    backoff = Backoff(backoff_base_s, backoff_max_s, jitter=0.5)
    failures = 0
    crashing = False  # loop_crashing raised and not yet resolved

    def recovered() -> None:
        nonlocal crashing
        if crashing:
            crashing = False
            from crosslogic.metering.metrics import resolve_alert  # lazily: metering's loops run under us

            resolve_alert("loop_crashing", name, "background loop %s healthy again for %.0fs", name, healthy_after_s)

    while True:
        started = time.monotonic()
        # A healthy loop never returns: a timer resolves loop_crashing once this run has lasted.
        recovery = asyncio.get_running_loop().call_later(healthy_after_s, recovered) if crashing else None
        try:
            await body()
            if finished_on_return:
                return
            log.warning("supervised loop %s returned; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("supervised loop %s crashed", name)
            if metrics is not None:
                metrics.inc(f"{name}_crashes_total")
        finally:
            if recovery is not None:
                recovery.cancel()
        if restarts is not None:
            restarts.restarted(name)
        if time.monotonic() - started >= healthy_after_s:
            failures = 0
            recovered()
        failures += 1
        if failures == alert_after_failures:
            # Imported here: crosslogic.metering's own loops run under this supervisor.
            from crosslogic.metering.metrics import alert

            alert("loop_crashing", "background loop %s failed %d times in a row", name, failures, key=name)
            crashing = True
        await asyncio.sleep(backoff.delay(failures))
