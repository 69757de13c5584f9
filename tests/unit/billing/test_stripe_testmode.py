"""Against Stripe's real test mode, only when STRIPE_API_KEY is a test key (skipped otherwise).

Needs a meter whose event name is STRIPE_TEST_METER_EVENT (default `crosslogic_input_tokens`) and a
customer STRIPE_TEST_CUSTOMER in that test account. Checks the parts our local server imitates:
an accepted event, and a replayed identifier refused with "already exists" (which we count as sent).
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from billing.config import BillingConfig
from billing.stripe_sender import MeterEvent, Outcome, StripeMeterSender

KEY = os.environ.get("STRIPE_API_KEY", "")
CUSTOMER = os.environ.get("STRIPE_TEST_CUSTOMER", "")
pytestmark = pytest.mark.skipif(
    not (KEY.startswith("sk_test_") and CUSTOMER),
    reason="needs STRIPE_API_KEY=sk_test_... and STRIPE_TEST_CUSTOMER",
)


async def test_meter_event_and_replay_against_stripe_test_mode() -> None:
    meter = os.environ.get("STRIPE_TEST_METER_EVENT", "crosslogic_input_tokens")
    config = BillingConfig(enabled=True, stripe_api_key=KEY, request_timeout_s=20)
    sender = StripeMeterSender(config)
    event = MeterEvent(event_name=meter, customer_id=CUSTOMER, value=1,
                       identifier=f"cl_test_{uuid.uuid4().hex}", timestamp=int(time.time()) - 60)
    try:
        first = await sender.send(event)
        again = await sender.send(event)
    finally:
        await sender.aclose()
    assert first.outcome is Outcome.DELIVERED, first.detail
    assert again.outcome is Outcome.DUPLICATE, again.detail
