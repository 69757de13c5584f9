"""The one backoff helper (crosslogic/backoff.py): its schedule, jitter bounds, cap and Retry-After,
and the callers that take a server's Retry-After from the wire (Stripe's 429, an alert sink's 503)."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import stripe
from fastapi import FastAPI
from fastapi.responses import Response

from billing.stripe_sender import Outcome, classify
from crosslogic.alerts.dispatcher import AlertDispatcher
from crosslogic.alerts.model import Alert
from crosslogic.alerts.sinks import SinkUnavailable, WebhookSink
from crosslogic.backoff import Backoff, parse_retry_after
from tests.alert_receivers import eventually
from tests.pagerduty_server import serving


def test_steps_double_from_base_to_the_cap() -> None:
    backoff = Backoff(0.5, 5.0)
    assert [backoff.step(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.step(0) == backoff.step(-3) == 0.5  # "no failure yet" counts as the first retry
    assert backoff.step(10**9) == 5.0  # no overflow however long the outage


@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
def test_jitter_draws_that_fraction_of_each_step(jitter: float) -> None:
    backoff = Backoff(1.0, 8.0, jitter=jitter)
    assert backoff.delay(3, rand=lambda: 0.0) == 4.0  # the whole step
    assert backoff.delay(3, rand=lambda: 0.999999) == pytest.approx(4.0 * (1 - jitter), abs=1e-4)
    rng = random.Random(7)
    delays = [backoff.delay(3, rand=rng.random) for _ in range(2000)]
    assert all(4.0 * (1 - jitter) <= d <= 4.0 for d in delays)
    if jitter == 1.0:  # full jitter spreads over the whole step, not only its top
        assert min(delays) < 0.1 and max(delays) > 3.9


def test_retry_after_is_a_floor_within_the_cap() -> None:
    backoff = Backoff(0.5, 30.0)
    assert backoff.delay(1, retry_after_s=7.0, rand=lambda: 0.5) == 7.0
    assert backoff.delay(1, retry_after_s=0.01, rand=lambda: 0.0) == 0.5  # sooner than ours: ours
    assert backoff.delay(1, retry_after_s=86_400.0) == 30.0  # a day would park the retries


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="base_s"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(1.0, 2.0, jitter=1.5)
    assert Backoff(10.0, 2.0).step(1) == 2.0  # a cap below the base is still a cap


def test_retry_after_header_values() -> None:
    now = time.time()
    later = datetime.fromtimestamp(now, UTC) + timedelta(seconds=120)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(format_datetime(later, usegmt=True), now=now) == pytest.approx(120, abs=1)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past
    for value in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(value) is None


def test_stripe_retry_after_reaches_the_send_result() -> None:
    limited = stripe.RateLimitError("slow down", http_status=429, headers={"Retry-After": "12"})
    result = classify(limited)
    assert result.outcome is Outcome.RETRY and result.retry_after_s == 12.0
    assert classify(stripe.APIError("boom", http_status=500)).retry_after_s is None


async def test_alert_delivery_waits_for_the_receivers_retry_after() -> None:
    """A webhook receiver answering 503 with Retry-After: 1 gets the retry no sooner than 1 s later,
    although the dispatcher's own first step is 10 ms."""
    arrivals: list[float] = []
    app = FastAPI()

    @app.post("/hooks/alerts")
    async def receive() -> Response:
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            return Response(status_code=503, headers={"retry-after": "1"})
        return Response(status_code=204)

    async with serving(app) as base:
        dispatcher = AlertDispatcher([WebhookSink(f"{base}/hooks/alerts")], source="s",
                                     backoff_base_s=0.01, backoff_max_s=5.0)
        dispatcher.start()
        dispatcher.submit(Alert(name="retry_after_probe", summary="s"))
        await eventually(lambda: len(arrivals) == 2, timeout_s=10)
        await dispatcher.close()
    assert arrivals[1] - arrivals[0] >= 1.0
    assert dispatcher.metrics.get("webhook_retries_total") == 1


async def test_a_sink_reports_the_retry_after_it_was_given() -> None:
    app = FastAPI()

    @app.post("/hooks/alerts")
    async def receive() -> Response:
        return Response(status_code=429, headers={"retry-after": "4"})

    async with serving(app) as base:
        sink = WebhookSink(f"{base}/hooks/alerts")
        with pytest.raises(SinkUnavailable) as raised:
            await sink.send(Alert(name="a", summary="s"))
        await sink.aclose()
    assert raised.value.retry_after_s == 4.0
