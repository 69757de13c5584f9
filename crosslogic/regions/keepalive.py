"""Keep-alive lines on a regional stream, so a silent region is told from a slow engine.

A region can vanish without closing its connections (a lost node, a cut link: no FIN, no RST). With
no read timeout the control plane's stream would then wait forever, and a fixed read timeout would
cut a long prefill. So the gateway writes an empty NDJSON line whenever the engine has said nothing
for KEEPALIVE_S (the client skips empty lines), and the control plane gives up on a stream silent for
`regions.stream_idle_timeout_s`: before the first event the request is retried in another region,
after it the stream ends with an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")

# Both sides run the same CrossLogic version (registration refuses any other), so this is protocol.
KEEPALIVE_S = 5.0


async def with_keepalives(source: AsyncIterator[T], every_s: float, keepalive: T) -> AsyncIterator[T]:
    """`source`'s items, with `keepalive` yielded each time `every_s` passes without one.

    The next item is awaited in a task so a keep-alive can go out meanwhile; closing this iterator
    cancels that task (the source sees the cancellation where it waits, as it would a hang-up)."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            pending = asyncio.ensure_future(anext(source))
            while not (await asyncio.wait({pending}, timeout=every_s))[0]:
                yield keepalive
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
