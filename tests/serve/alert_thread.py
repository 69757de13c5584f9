"""The alert receivers of the serve session: the webhook receiver (tests/alert_receivers.py) and the
strict PagerDuty server (tests/pagerduty_server.py), on their own thread and event loop.

The serve stack's `alerts:` config points at them, so every alert any replica or the billing actor
raises during the session arrives here. Like the Stripe server (tests/serve/stripe_thread.py) they
run on a thread of their own: the serve tests are synchronous and would stall a server on their loop.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from tests.alert_receivers import WebhookReceiver
from tests.pagerduty_server import PagerDutyServer, serving

WEBHOOK_PATH = "/hooks/alerts"


@dataclass(frozen=True)
class AlertsSeen:
    """A copy of what the receivers got, taken on their own thread."""

    webhook: list[dict[str, Any]]  # webhook bodies (the Alert plus its dedup_key), in arrival order
    pagerduty: list[dict[str, Any]]  # accepted PagerDuty events, in order
    outcomes: list[tuple[str, str]]  # (dedup_key, what PagerDuty made of each event)


class AlertReceiversThread:
    def __init__(self) -> None:
        self.webhook = WebhookReceiver()
        self.pagerduty = PagerDutyServer()
        self.webhook_url = ""
        self.pagerduty_url = ""
        self._stack = AsyncExitStack()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="alert-receivers", daemon=True)

    def start(self) -> None:
        async def start() -> None:
            webhook_base = await self._stack.enter_async_context(serving(self.webhook.app()))
            self.webhook_url = f"{webhook_base}{WEBHOOK_PATH}"
            self.pagerduty_url = await self._stack.enter_async_context(serving(self.pagerduty.app()))

        self._thread.start()
        asyncio.run_coroutine_threadsafe(start(), self._loop).result(timeout=30)

    def seen(self) -> AlertsSeen:
        async def copy() -> AlertsSeen:
            return AlertsSeen(list(self.webhook.bodies), [dict(e) for e in self.pagerduty.events],
                              list(self.pagerduty.outcomes))

        return asyncio.run_coroutine_threadsafe(copy(), self._loop).result(timeout=30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stack.aclose(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
