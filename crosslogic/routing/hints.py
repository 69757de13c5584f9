"""Per-request routing hints passed from the ingress to the request router.

The ingress passes a `RoutingHints` with each engine call; the request router (which runs in the
ingress process, on the same object) reads `exclude` and records the replica it picked in `chosen`,
so a request that failed before its first token can be retried on a different replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RoutingHints:
    exclude: set[str] = field(default_factory=set)
    chosen: str | None = None
    # For session / prefix affinity policies later; unused by the load policies.
    session_key: str | None = None
