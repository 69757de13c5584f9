"""The local Stripe server is strict, and the sender classifies Stripe's answers correctly."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import stripe
from billing_checks import API_KEY, INPUT_METER
from pydantic import SecretStr

from billing.config import BillingConfig
from billing.stripe_sender import MeterEvent, Outcome, StripeMeterSender, classify
from tests.stripe_server import StripeTestServer


def event(**changes: object) -> MeterEvent:
    fields: dict[str, object] = dict(event_name=INPUT_METER, customer_id="cus_known", value=5,
                                     identifier=f"id_{uuid.uuid4().hex}", timestamp=int(time.time()))
    fields.update(changes)
    return MeterEvent(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def sender(billing_config: BillingConfig, stripe_server: StripeTestServer):
    stripe_server.customers.add("cus_known")
    s = StripeMeterSender(billing_config)
    yield s
    await s.aclose()


async def test_accepts_then_refuses_a_replayed_identifier(
    sender: StripeMeterSender, stripe_server: StripeTestServer
) -> None:
    e = event()
    assert (await sender.send(e)).outcome is Outcome.DELIVERED
    replay = await sender.send(e)
    assert replay.outcome is Outcome.DUPLICATE and replay.delivered
    assert f"An event already exists with identifier {e.identifier}" in replay.detail
    assert sum(stripe_server.totals.values()) == 5


@pytest.mark.parametrize("changes, outcome", [
    ({"timestamp": int(time.time()) - 36 * 86400}, Outcome.POISON),
    ({"identifier": "x" * 101}, Outcome.POISON),
    ({"customer_id": "cus_unknown"}, Outcome.POISON),
    ({"event_name": "no_such_meter"}, Outcome.POISON),
])
async def test_invalid_events_are_poison(
    sender: StripeMeterSender, changes: dict, outcome: Outcome
) -> None:
    assert (await sender.send(event(**changes))).outcome is outcome


async def test_wrong_api_key_is_an_auth_problem_not_poison(
    billing_config: BillingConfig, stripe_server: StripeTestServer
) -> None:
    bad = StripeMeterSender(billing_config.model_copy(update={"stripe_api_key": SecretStr("sk_test_wrong")}))
    stripe_server.customers.add("cus_known")
    assert (await bad.send(event())).outcome is Outcome.AUTH
    await bad.aclose()


@pytest.mark.parametrize("fault", ["rate_429", "rate_500", "rate_drop_before", "rate_drop_after",
                                   "rate_timeout_before", "rate_timeout_after"])
async def test_transient_faults_are_retried(
    sender: StripeMeterSender, stripe_server: StripeTestServer, fault: str
) -> None:
    setattr(stripe_server.faults, fault, 1.0)
    stripe_server.faults.slow_s = 1.0
    assert (await sender.send(event())).outcome is Outcome.RETRY


async def test_server_refuses_unknown_and_missing_parameters(stripe_server: StripeTestServer) -> None:
    stripe_server.customers.add("cus_known")
    base = {"event_name": INPUT_METER, "payload[stripe_customer_id]": "cus_known",
            "payload[value]": "1", "identifier": "abc", "timestamp": str(int(time.time()))}
    async with httpx.AsyncClient(base_url=stripe_server.base_url,
                                 headers={"authorization": f"Bearer {API_KEY}"}) as client:
        extra = await client.post("/v1/billing/meter_events", data={**base, "bogus": "1"})
        missing = await client.post("/v1/billing/meter_events",
                                    data={k: v for k, v in base.items() if k != "event_name"})
        noauth = await client.post("/v1/billing/meter_events", data=base,
                                   headers={"authorization": ""})
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "bogus"
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "parameter_missing"
    assert noauth.status_code == 401 and noauth.json()["error"]["type"] == "invalid_request_error"


def test_should_retry_header_wins_over_status() -> None:
    forced = stripe.InvalidRequestError("lock timeout", None, http_status=400,
                                        headers={"Stripe-Should-Retry": "true"})
    refused = stripe.APIError("do not", http_status=500, headers={"stripe-should-retry": "false"})
    conflict = stripe.IdempotencyError("conflict", http_status=409)
    assert classify(forced).outcome is Outcome.RETRY
    assert classify(refused).outcome is Outcome.POISON
    assert classify(conflict).outcome is Outcome.RETRY
