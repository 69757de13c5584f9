"""Real HTTP receivers for the alert sinks: a webhook receiver and the strict PagerDuty server,
each run with uvicorn on a free loopback port inside the test's event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from crosslogic.alerts.registry import install_dispatcher
from tests.alert_receivers import WebhookReceiver
from tests.pagerduty_server import PagerDutyServer, serving


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[WebhookReceiver, str]]:
    receiver = WebhookReceiver()
    async with serving(receiver.app()) as base:
        yield receiver, f"{base}/hooks/alerts"


@pytest.fixture
async def pagerduty() -> AsyncIterator[tuple[PagerDutyServer, str]]:
    server = PagerDutyServer()
    async with serving(server.app()) as base:
        yield server, base


@pytest.fixture(autouse=True)
def no_installed_dispatcher() -> Iterator[None]:
    """Each test starts and ends with alerts going to the log only."""
    install_dispatcher(None)
    yield
    install_dispatcher(None)
