"""Plain counters and gauges owned by one component instance.

Core code has no Ray import, so components count into one of these; the deployment that hosts the
component exports `snapshot()` to Ray's metrics (and `/ready` can read it). One instance per component:
no module-level state.
"""

from __future__ import annotations

import logging
import time

ALERT_LOGGER = "crosslogic.alerts"


class Metrics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._values: dict[str, float] = {}

    def inc(self, name: str, amount: float = 1) -> None:
        key = f"{self.prefix}_{name}"
        self._values[key] = self._values.get(key, 0) + amount

    def set(self, name: str, value: float) -> None:
        self._values[f"{self.prefix}_{name}"] = value

    def get(self, name: str) -> float:
        return self._values.get(f"{self.prefix}_{name}", 0)

    def snapshot(self) -> dict[str, float]:
        return dict(self._values)


def alert(name: str, message: str, *args: object) -> None:
    """Log an operator alert: one ERROR line on the `crosslogic.alerts` logger, tagged with its name.

    Alerting rules match on the logger and the `alert` field; the paired metric is what dashboards use.
    """
    logging.getLogger(ALERT_LOGGER).error("ALERT %s: " + message, name, *args, extra={"alert": name})


class AlertThrottle:
    """Emit a given alert (by name and key) at most once per `interval_s`: a loop that finds the same
    problem every few seconds should page once, not flood the log. The metric still counts each one."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self._interval_s = interval_s
        self._last: dict[str, float] = {}

    def fire(self, name: str, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        slot = f"{name}:{key}"
        last = self._last.get(slot)
        if last is not None and now - last < self._interval_s:
            return
        self._last[slot] = now
        alert(name, message, *args)
