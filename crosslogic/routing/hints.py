"""Per-request routing hints passed from the ingress to the request router.

The ingress passes a `RoutingHints` with each engine call; the request router (which runs in the
ingress process, on the same object) reads `exclude` and records the replica it picked in `chosen`,
so a request that failed before its first token can be retried on a different replica. A request
served by another region has `chosen = "region:<name>"` (crosslogic/regions/selector.py), so its
retry goes to another placement too.

The hints also travel to the engine replica (they are an argument of its `generate`): that is how
`trace_context` reaches it. `on_chosen` stays in the ingress process (dropped when pickled).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RoutingHints:
    exclude: set[str] = field(default_factory=set)
    chosen: str | None = None
    # The session id the client sent in the session header (x-session-id), if any; the affinity
    # keys below are derived in the ingress by crosslogic/routing/local_router.py, only for a policy
    # that uses them, and only as hashes (crosslogic/routing/affinity_keys.py: routing_prefix).
    session_key: str | None = None
    prefix_hashes: tuple[int, ...] | None = None
    session_hash: int | None = None
    # The region the caller prefers (header, else key, else tenant); spills over when it is too deep.
    region_preference: str | None = None
    # Where the request was sent: this cluster's own region name or a remote region's (usage rows).
    region: str | None = None
    # W3C traceparent/tracestate of the ingress span the engine's span belongs under (crosslogic/tracing);
    # None: the request is not traced.
    trace_context: dict[str, str] | None = None
    # Told the placement once it is chosen (the tracing's `routing` span ends there); may run on
    # Serve's router thread.
    on_chosen: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    def routed(self, chosen: str) -> None:
        """The request router (or the regional gateway) placed the request on `chosen`."""
        self.chosen = chosen
        if self.on_chosen is not None:
            self.on_chosen(chosen)

    def __getstate__(self) -> dict[str, Any]:
        # The callback belongs to this process (it holds the ingress's spans): never sent along.
        state = dict(self.__dict__)
        state["on_chosen"] = None
        return state
