"""Run a background loop forever: log its traceback, count, restart with backoff, never die silently.

A loop body that raises is restarted after an exponential backoff (reset once it has run healthily for
`healthy_after_s`); cancellation is the only way to stop it, so a supervised loop can never take the
hosting process down and never disappears without a log line and a counter increment.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from crosslogic.metering.metrics import Metrics, alert

log = logging.getLogger(__name__)


async def supervise(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    metrics: Metrics | None = None,
    backoff_base_s: float = 1.0,
    backoff_max_s: float = 60.0,
    healthy_after_s: float = 300.0,
    alert_after_failures: int = 5,
) -> None:
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await body()
            log.warning("supervised loop %s returned; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("supervised loop %s crashed", name)
            if metrics is not None:
                metrics.inc(f"{name}_crashes_total")
        if time.monotonic() - started >= healthy_after_s:
            failures = 0
        failures += 1
        if failures == alert_after_failures:
            alert("loop_crashing", "background loop %s failed %d times in a row", name, failures)
        delay = min(backoff_max_s, backoff_base_s * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
        await asyncio.sleep(delay)
