"""A deadline on the silence of an engine's stream once it has started.

An engine replica streams tokens steadily: vLLM emits every running request's next token each step,
and a step takes milliseconds to a second even on a loaded CPU. A started stream that says nothing
for many seconds is therefore a stuck transport or replica, not a slow engine: a client stream was
seen waiting 180 s after its first chunk (session 10's note) with its lease held and its usage not
yet written. Bounding that silence ends the stream with an error the client can see (and settles
the request) instead of leaving it open forever.

Before the first event there is no such bound here: a request may wait in the engine's queue for
as long as the queue is deep, and it is retried elsewhere on failure (crosslogic/api/relay.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


class StreamStalled(Exception):
    """The stream said nothing for the allowed time after its first event."""

    def __init__(self, silent_s: float) -> None:
        super().__init__(f"no event for {silent_s:.0f}s after the stream started")
        self.silent_s = silent_s


async def with_idle_deadline(source: AsyncIterator[T], idle_s: float | None) -> AsyncIterator[T]:
    """`source`'s items; after the first, raise StreamStalled when `idle_s` passes without one.

    `None` turns the deadline off. On a stall the pending read is cancelled (the source sees the
    cancellation where it waits, as it would a hang-up); the caller then cancels the engine's
    request. A timer per read, not a task: this runs for every token of every stream."""
    try:
        first = await anext(source)
    except StopAsyncIteration:
        return
    yield first
    while True:
        deadline = asyncio.timeout(idle_s)
        try:
            async with deadline:
                item = await anext(source)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if not deadline.expired() or idle_s is None:
                raise  # the source's own (with no deadline, every timeout is the source's)
            raise StreamStalled(idle_s) from None
        yield item
