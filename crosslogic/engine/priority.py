"""A tenant's tier as the engine's request priority (vLLM's `priority` field, honoured by engines
started with `--scheduling-policy priority`: lower runs first and may preempt higher).

The ingress sets it on every request from the tenant's fair-share weight (tenants.weight): weight 1
(the default) is priority 0, each doubling one step earlier (2 -> -1, 4 -> -2), each halving one
later (0.5 -> 1). A client's own `priority` is refused with a 400, as its own cache_salt is: taken
as sent it would let any tenant jump the engine's queue. An engine not configured for priority
scheduling drops the field (vLLM refuses a non-zero priority under fcfs); the simulator ignores it.
Batch lines get `BATCH_PRIORITY`, after every tier.
"""

from __future__ import annotations

import math
from typing import Any

from crosslogic.errors import InvalidRequestError

PRIORITY_FIELD = "priority"


def tier_priority(weight: float | None) -> int:
    return 0 if weight is None else -round(math.log2(weight))


def _with_server_priority(body: dict[str, Any], priority: int, source: str, what: str) -> dict[str, Any]:
    if PRIORITY_FIELD in body:
        raise InvalidRequestError(
            f"priority is set by the server ({source}); remove it from the {what}",
            param=PRIORITY_FIELD, code="invalid_parameter",
        )
    return {**body, PRIORITY_FIELD: priority}


def prioritized_body(body: dict[str, Any], weight: float | None) -> dict[str, Any]:
    return _with_server_priority(body, tier_priority(weight), "from your organization's tier", "request")


# Batch lines run after every interactive tier (a tier's priority is -log2 of its weight: within ±20
# for any weight a tenant can hold), so under priority scheduling an interactive request is never queued
# behind a batch line and, when the engine runs out of KV cache, batch lines are the ones preempted.
BATCH_PRIORITY = 100


def batch_line_body(body: dict[str, Any]) -> dict[str, Any]:
    """A batch line's body as the engine gets it: the server's batch priority; the line's own refused
    (the line fails with this 400 in the error file), as an interactive request's is."""
    return _with_server_priority(body, BATCH_PRIORITY, "batch lines run after interactive requests", "line")


def uses_priority_scheduling(engine_kwargs: dict[str, Any]) -> bool:
    return engine_kwargs.get("scheduling_policy") == "priority"


def engine_body(body: dict[str, Any], priority_scheduling: bool) -> dict[str, Any]:
    """The body as this engine takes it: the server's priority kept only under priority scheduling."""
    if priority_scheduling or PRIORITY_FIELD not in body:
        return body
    return {k: v for k, v in body.items() if k != PRIORITY_FIELD}
