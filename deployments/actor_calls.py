"""Waiting on a Ray actor call with a deadline, without cancelling the call.

`asyncio.wait_for(actor.method.remote(), timeout)` cancels the call when the deadline passes, and
Ray 2.60 turns that into an actor-task cancellation. Cancelling a task of an actor that is still
being created wedged every later call from the same process to that actor: seen in CI, one ingress
replica timed out on its first readiness call while the router actor was PENDING_CREATION, and from
then on each of its router calls (region heartbeats, region view, /ready) timed out, for good, while
the other replica's worked. Here the deadline only stops the waiting; the call itself runs to its end
and its answer is dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def call_with_timeout(call: Any, timeout_s: float) -> Any:
    """The result of `call` (an ObjectRef from `actor.method.remote(...)`), or TimeoutError."""
    return await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(call)), timeout=timeout_s)
