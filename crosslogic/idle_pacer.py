"""The wait between a background loop's rounds: short while there is traffic, longer while there is none.

An idle stack should cost close to nothing (issue 14: the idle stack within 0.05 cores of bare vLLM),
yet a loop that feeds the request path (the router view, engine queue reports) must be fresh the
moment traffic comes back. `IdlePacer.wait(busy)` sleeps `busy_s` or `idle_s`; `wake()` — called on
the request path, a few hundred nanoseconds — ends an idle wait at once, so the first request after a
quiet spell starts a fresh round instead of waiting out the idle interval.
"""

from __future__ import annotations

import asyncio
import time


class IdlePacer:
    def __init__(self, busy_s: float, idle_s: float, *, linger_s: float = 2.0) -> None:
        if idle_s < busy_s:
            raise ValueError(f"idle_s ({idle_s}) must be at least busy_s ({busy_s})")
        self.busy_s = busy_s
        self.idle_s = idle_s
        # A loop stays busy this long after the last wake: requests rarely come alone.
        self._linger_s = linger_s
        self._woken_at = float("-inf")
        self._event: asyncio.Event | None = None

    def wake(self) -> None:
        """Traffic: the next wait is short, and a wait in progress ends now (same event loop only)."""
        self._woken_at = time.monotonic()
        if self._event is not None:
            self._event.set()

    def recently_woken(self) -> bool:
        return time.monotonic() - self._woken_at < self._linger_s

    async def wait(self, busy: bool = False) -> None:
        """One interval: `busy_s` when `busy` or woken within `linger_s`, else up to `idle_s`."""
        if busy or self.recently_woken() or self.idle_s == self.busy_s:
            await asyncio.sleep(self.busy_s)
            return
        if self._event is None:
            self._event = asyncio.Event()
        self._event.clear()
        try:
            await asyncio.wait_for(self._event.wait(), self.idle_s)
        except TimeoutError:
            pass
