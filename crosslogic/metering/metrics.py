"""Plain counters and gauges owned by one component instance.

Core code has no Ray import, so components count into one of these; the deployment that hosts the
component exports `snapshot()` to Ray's metrics (and `/ready` can read it). One instance per component:
no module-level state.
"""

from __future__ import annotations

import logging

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
