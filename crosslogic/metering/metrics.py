"""Plain counters and gauges owned by one component instance.

Core code has no Ray import, so components count into one of these; the deployment that hosts the
component exports `snapshot()` to Ray's metrics (and `/ready` can read it). One instance per component:
no module-level state.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from crosslogic.alerts.model import Alert, Severity
from crosslogic.alerts.registry import current_dispatcher

ALERT_LOGGER = "crosslogic.alerts"
# Values kept per histogram between two exports (deployments/ray_metrics.py): the newest win.
_MAX_OBSERVED = 10_000


class Metrics:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._values: dict[str, float] = {}
        self._observed: dict[str, deque[float]] = {}

    def inc(self, name: str, amount: float = 1) -> None:
        key = f"{self.prefix}_{name}"
        self._values[key] = self._values.get(key, 0) + amount

    def set(self, name: str, value: float) -> None:
        self._values[f"{self.prefix}_{name}"] = value

    def get(self, name: str) -> float:
        return self._values.get(f"{self.prefix}_{name}", 0)

    def snapshot(self) -> dict[str, float]:
        return dict(self._values)

    def observe(self, name: str, value: float) -> None:
        """One value for a histogram (e.g. a flush's duration), kept until the exporter drains it;
        bounded, so nothing grows where no exporter runs (unit tests, tools)."""
        key = f"{self.prefix}_{name}"
        pending = self._observed.get(key)
        if pending is None:
            pending = self._observed[key] = deque(maxlen=_MAX_OBSERVED)
        pending.append(value)

    def drain(self) -> dict[str, list[float]]:
        """The values observed since the last drain, by name."""
        drained = {name: list(values) for name, values in self._observed.items() if values}
        for values in self._observed.values():
            values.clear()
        return drained


def alert(name: str, message: str, *args: object, key: str = "", severity: Severity = "error",
          details: dict[str, Any] | None = None) -> None:
    """Log an operator alert: one ERROR line on the `crosslogic.alerts` logger, tagged with its name,
    and hand it to the process's alert dispatcher (webhook, PagerDuty) when one is installed.

    `key` tells instances of one alert apart (a model, a loop): de-duplication and PagerDuty's incident
    are per name and key. Alerting rules match on the logger and the `alert` field; the paired metric is
    what dashboards use.
    """
    logging.getLogger(ALERT_LOGGER).error("ALERT %s: " + message, name, *args, extra={"alert": name})
    _dispatch(name, key, "trigger", severity, message, args, details)


def resolve_alert(name: str, key: str = "", message: str = "", *args: object) -> None:
    """The condition behind alert `name` (and `key`) has cleared: one INFO line, and a resolve to the
    sinks (sent only if this process's dispatcher triggered it)."""
    logging.getLogger(ALERT_LOGGER).info("RESOLVED %s%s: " + (message or "cleared"), name,
                                         f"[{key}]" if key else "", *args, extra={"alert": name})
    _dispatch(name, key, "resolve", "info", message or "cleared", args, None)


def _dispatch(name: str, key: str, state: str, severity: Severity, message: str, args: tuple[object, ...],
              details: dict[str, Any] | None) -> None:
    dispatcher = current_dispatcher()
    if dispatcher is None:
        return
    try:
        summary = message % args if args else message
    except (TypeError, ValueError):
        summary = f"{message} {args!r}"
    try:
        dispatcher.submit(Alert(name=name, key=key, state=state, severity=severity,  # type: ignore[arg-type]
                                summary=f"{name}: {summary}", details=details or {}))
    except Exception:  # never let delivery break the caller; the log line above is already out
        logging.getLogger(ALERT_LOGGER).exception("alert %s not handed to the dispatcher", name)


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
        alert(name, message, *args, key=key)
