"""The dispatcher: de-duplication, fan-out that survives a dead sink, a bounded queue, never blocking."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from crosslogic.alerts.dispatcher import AlertDispatcher
from crosslogic.alerts.model import Alert
from crosslogic.alerts.sinks import PagerDutySink, WebhookSink
from tests.alert_receivers import ROUTING_KEY, WebhookReceiver, eventually
from tests.pagerduty_server import PagerDutyServer


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_same_alert_within_the_window_sends_nothing_new(webhook: tuple[WebhookReceiver, str]) -> None:
    receiver, url = webhook
    clock = _Clock()
    dispatcher = AlertDispatcher([WebhookSink(url)], dedup_window_s=60, clock=clock)
    dispatcher.start()
    for _ in range(5):  # a loop that finds the same problem every few seconds
        dispatcher.submit(Alert(name="billing_export_lag", key="cus_1"))
        clock.now += 5
    dispatcher.submit(Alert(name="billing_export_lag", key="cus_2"))  # another key is another alert
    clock.now += 60
    dispatcher.submit(Alert(name="billing_export_lag", key="cus_1"))  # still on after the window: reminded
    dispatcher.submit(Alert(name="billing_export_lag", key="cus_1", state="resolve"))
    dispatcher.submit(Alert(name="billing_export_lag", key="cus_1", state="resolve"))  # once only
    dispatcher.submit(Alert(name="never_triggered", state="resolve"))  # nothing to resolve
    dispatcher.submit(Alert(name="billing_export_lag", key="cus_1"))  # cleared, so a new trigger goes out
    await dispatcher.close()
    sent = [(b["key"], b["state"]) for b in receiver.bodies]
    assert sent == [("cus_1", "trigger"), ("cus_2", "trigger"), ("cus_1", "trigger"), ("cus_1", "resolve"),
                    ("cus_1", "trigger")]
    assert dispatcher.metrics.get("deduplicated_total") == 6


async def test_a_dead_sink_does_not_delay_the_other(
    webhook: tuple[WebhookReceiver, str], pagerduty: tuple[PagerDutyServer, str]
) -> None:
    receiver, url = webhook
    receiver.hang = True  # accepts the connection, never answers: every attempt waits for its timeout
    server, base = pagerduty
    dispatcher = AlertDispatcher([WebhookSink(url, timeout_s=2), PagerDutySink(ROUTING_KEY, events_url=base)],
                                 source="s", backoff_base_s=0.01)
    dispatcher.start()
    started = time.monotonic()
    for i in range(3):
        dispatcher.submit(Alert(name="a", key=str(i), summary="s"))
    await eventually(lambda: len(server.events) == 3, timeout_s=1.5)
    assert time.monotonic() - started < 1.5
    assert receiver.received == []
    await dispatcher.close(timeout_s=0.1)


async def test_full_queue_drops_without_blocking_and_logs_once(
    webhook: tuple[WebhookReceiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    receiver, url = webhook
    receiver.hang = True
    dispatcher = AlertDispatcher([WebhookSink(url, timeout_s=5)], queue_size=3, dedup_window_s=0)
    dispatcher.start()
    dispatcher.submit(Alert(name="first"))
    await asyncio.sleep(0.2)  # the drain task holds "first" (waiting on the receiver); 3 more fit
    started = time.perf_counter()
    with caplog.at_level(logging.ERROR, logger="crosslogic.alerts.dispatcher"):
        for i in range(100):
            dispatcher.submit(Alert(name="flood", key=str(i)))
    assert time.perf_counter() - started < 0.5  # 100 submits, no waiting on the stuck sink
    assert dispatcher.metrics.get("webhook_dropped_total") == 97
    assert len([r for r in caplog.records if "is full" in r.getMessage()]) == 1
    await dispatcher.close(timeout_s=0.1)


async def test_submit_from_another_thread_is_delivered(webhook: tuple[WebhookReceiver, str]) -> None:
    receiver, url = webhook
    dispatcher = AlertDispatcher([WebhookSink(url)])
    dispatcher.start()
    thread = threading.Thread(target=dispatcher.submit, args=(Alert(name="from_thread"),))
    thread.start()
    thread.join()
    await eventually(lambda: len(receiver.received) == 1)
    await dispatcher.close()
    assert receiver.bodies[0]["name"] == "from_thread"


async def test_gives_up_after_max_attempts(webhook: tuple[WebhookReceiver, str]) -> None:
    receiver, url = webhook
    receiver.fail_next(3, 502)
    dispatcher = AlertDispatcher([WebhookSink(url)], max_attempts=3, backoff_base_s=0.01)
    dispatcher.start()
    dispatcher.submit(Alert(name="a"))
    dispatcher.submit(Alert(name="b"))  # queued behind a, goes out once a is given up
    await eventually(lambda: len(receiver.received) == 1)
    await dispatcher.close()
    assert [b["name"] for b in receiver.bodies] == ["b"]
    assert dispatcher.metrics.get("webhook_failed_total") == 1
    assert dispatcher.metrics.get("webhook_retries_total") == 2
