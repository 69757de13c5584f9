"""The `regions` entry of `/ready`: each live region and its state, in one line an operator reads.

Always ok: a drained or silent region is routed around, it never makes the control plane unready.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from crosslogic.api.gateway import DependencyStatus
from crosslogic.regions.state import RegionView

log = logging.getLogger("crosslogic.regions.readiness")


def describe_regions(views: dict[str, RegionView]) -> str:
    """E.g. "2 regions: eu-west active, us-east drained (no heartbeat for 7.5s (3 intervals of 2.5s))"."""
    if not views:
        return "no region reporting"
    parts = [
        f"{name} {view.state}" + (f" ({view.reason})" if view.reason else "")
        for name, view in sorted(views.items())
    ]
    return f"{len(views)} region{'s' if len(views) != 1 else ''}: {', '.join(parts)}"


async def regions_readiness(fetch: Callable[[], Awaitable[dict[str, dict[str, Any]]]]) -> DependencyStatus:
    """`fetch`: the router actor's live view (RouterActor.regions)."""
    try:
        raw = await fetch()
        views = {name: RegionView.model_validate(view) for name, view in raw.items()}
    except Exception as exc:  # the router's own entry reports it unreachable; regions are unknown
        log.info("region view unavailable for /ready: %r", exc)
        return DependencyStatus(ok=True, detail=f"region view unavailable: {type(exc).__name__}")
    return DependencyStatus(
        ok=True, detail=describe_regions(views),
        data={name: view.model_dump(mode="json") for name, view in views.items()},
    )
