"""The strict local Stripe server (tests/stripe_server) on its own thread and event loop.

The serve tests are mostly synchronous; a server on the test session's loop would stall whenever a
test blocks. On its own thread it answers the billing actor (another process) at any time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tests.stripe_server.server import StripeTestServer

T = TypeVar("T")


class StripeServerThread:
    def __init__(self, api_key: str, meters: set[str]) -> None:
        self.server = StripeTestServer(api_key, meters=meters)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stripe-test-server", daemon=True)

    def start(self) -> str:
        self._thread.start()
        return self.call(self.server.start)

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def run() -> T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def snapshot(self) -> dict[tuple[str, str, int], Any]:
        """Totals per (customer, meter, hour), read on the server's own thread."""

        async def read() -> dict[tuple[str, str, int], Any]:
            return self.server.hourly_totals()

        return self.call(read)

    def add_customer(self, customer: str) -> None:
        async def add() -> None:
            self.server.customers.add(customer)

        self.call(add)

    def stop(self) -> None:
        self.call(self.server.stop)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
