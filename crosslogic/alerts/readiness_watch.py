"""Alerts from readiness: a model with no healthy replica (`model_unavailable`, keyed by model), a
dependency down or degraded (`dependency_down`, keyed by its /ready name: postgres, redis, billing,
ratelimit, router) and the ingress not ready (`readiness_lost`), triggered and resolved as readiness
changes. The watcher is given what /ready reports (`crosslogic.api.readiness_probes.service_readiness`),
so PostgreSQL being away pages although the ingress stays ready on its cached keys.

Nobody polls /ready for us: the ingress runs this watcher (under `crosslogic.supervisor.supervise`)
so an operator is told when the service degrades, not only when a load balancer notices. A condition
pages only after holding for `alert_after_s` (a replica restarting is not an incident), never within
`startup_grace_s` of the start (engines still loading); it resolves on the first good evaluation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from crosslogic.alerts.config import ReadinessWatchConfig
from crosslogic.alerts.model import Severity
from crosslogic.api.gateway import DependencyStatus, Readiness
from crosslogic.metering.metrics import alert, resolve_alert
from crosslogic.regions.regional_gateway import ENGINE_DEPENDENCY
from crosslogic.supervisor import supervise

log = logging.getLogger("crosslogic.alerts.readiness_watch")

MODEL_UNAVAILABLE = "model_unavailable"
DEPENDENCY_DOWN = "dependency_down"
READINESS_LOST = "readiness_lost"
# Entries that are not dependencies: the engines have their own alert; "readiness" is the watcher's
# own stand-in for a readiness that could not be evaluated (readiness_lost says so).
_NOT_DEPENDENCIES = ("readiness",)


@dataclass(frozen=True, slots=True)
class _Condition:
    bad: bool
    summary: str
    details: dict[str, Any]
    severity: Severity = "critical"


class ReadinessWatch:
    def __init__(
        self,
        readiness: Callable[[], Awaitable[Readiness]],
        config: ReadinessWatchConfig,
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._readiness = readiness
        self._config = config
        self._timeout_s = timeout_s
        self._clock = clock
        self._started = clock()
        # (alert name, key) -> since when the condition has been bad; and those we alerted on.
        self._bad_since: dict[tuple[str, str], float] = {}
        self.alerted: set[tuple[str, str]] = set()

    async def run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._config.interval_s)

    async def check_once(self) -> None:
        try:
            result = await asyncio.wait_for(self._readiness(), self._timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a readiness that cannot be evaluated is not ready
            result = Readiness(ready=False, dependencies={
                "readiness": DependencyStatus(ok=False, detail=f"readiness check failed: {type(exc).__name__}: {exc}"),
            })
        now = self._clock()
        for slot, condition in self._conditions(result).items():
            self._evaluate(slot, condition, now)

    def _conditions(self, result: Readiness) -> dict[tuple[str, str], _Condition]:
        conditions: dict[tuple[str, str], _Condition] = {}
        for name, dep in result.dependencies.items():
            if name.startswith(ENGINE_DEPENDENCY):
                model = name[len(ENGINE_DEPENDENCY):]
                conditions[(MODEL_UNAVAILABLE, model)] = _Condition(
                    not dep.ok, f"model {model} has no healthy replica ({dep.detail})",
                    {"model": model, "detail": dep.detail},
                )
            elif name not in _NOT_DEPENDENCIES:
                # Down (not ok: the ingress is unready) or degraded while still ok (PostgreSQL away,
                # cached keys served; Redis away, limits failing open): either way an operator acts.
                degraded = dep.data.get("degraded") is True
                conditions[(DEPENDENCY_DOWN, name)] = _Condition(
                    not dep.ok or degraded, f"{name} {'degraded' if dep.ok else 'down'}: {dep.detail}",
                    {"dependency": name, "detail": dep.detail, "ok": dep.ok, "degraded": degraded},
                    severity="critical" if not dep.ok else "error",
                )
        failing = {name: dep.detail for name, dep in result.dependencies.items() if not dep.ok}
        # Dependencies missing (the check itself failed) leave each model's state as it was: only a
        # readiness that names the model can say whether it is served.
        conditions[(READINESS_LOST, "")] = _Condition(
            not result.ready,
            "not ready: " + ("; ".join(f"{n}: {d}" for n, d in sorted(failing.items())) or "no detail"),
            {"failing": failing},
        )
        return conditions

    def _evaluate(self, slot: tuple[str, str], condition: _Condition, now: float) -> None:
        name, key = slot
        if not condition.bad:
            self._bad_since.pop(slot, None)
            if slot in self.alerted:
                self.alerted.discard(slot)
                resolve_alert(name, key, "%s", _recovered(name, key))
            return
        since = self._bad_since.setdefault(slot, now)
        if slot in self.alerted:
            return
        if now - since < self._config.alert_after_s or now - self._started < self._config.startup_grace_s:
            return
        self.alerted.add(slot)
        alert(name, "%s", condition.summary, key=key, severity=condition.severity,
              details={**condition.details, "bad_for_s": round(now - since, 1)})


def _recovered(name: str, key: str) -> str:
    if name == MODEL_UNAVAILABLE:
        return f"model {key} served again"
    if name == DEPENDENCY_DOWN:
        return f"{key} healthy again"
    return "ready again"


def start_readiness_watch(readiness: Callable[[], Awaitable[Readiness]], config: ReadinessWatchConfig,
                          **supervision: Any) -> asyncio.Task[None]:
    """Run a watcher over `readiness` under the supervisor (on the running loop); cancel the task to stop.
    `supervision`: extra `supervise` options (e.g. the replica's restart counter)."""
    watch = ReadinessWatch(readiness, config)
    return asyncio.get_running_loop().create_task(supervise("readiness_watch", watch.run, **supervision),
                                                  name="readiness-watch")
