"""Sinks against real receivers: the webhook's JSON and signature, PagerDuty Events v2 trigger/resolve."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from crosslogic.alerts.config import PAGERDUTY_ROUTING_KEY_ENV, AlertsConfig
from crosslogic.alerts.dispatcher import AlertDispatcher
from crosslogic.alerts.lifecycle import build_sinks
from crosslogic.alerts.model import Alert
from crosslogic.alerts.sinks import SIGNATURE_HEADER, AlertRefused, PagerDutySink, SinkUnavailable, WebhookSink
from crosslogic.errors import ConfigError
from tests.alert_receivers import ROUTING_KEY, WebhookReceiver, eventually
from tests.pagerduty_server import PagerDutyServer

SECRET = b"whsec-test-0123456789abcdef"


def _verify(header: str, body: bytes, secret: bytes) -> int:
    """What a receiver does: parse t= and v1=, recompute, compare in constant time; returns t."""
    parts = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret, f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(expected, parts["v1"])
    return int(parts["t"])


async def test_webhook_receives_the_alert_as_signed_json(webhook: tuple[WebhookReceiver, str]) -> None:
    receiver, url = webhook
    sink = WebhookSink(url, secret=SECRET)
    alert = Alert(name="loop_crashing", key="usage-flush", severity="error", summary="loop usage-flush failed 5 times",
                  source="eu-west/host-1", component="ingress", details={"failures": 5})
    await sink.send(alert)
    await sink.aclose()
    headers, raw = receiver.received[0]
    body = json.loads(raw)
    assert body["name"] == "loop_crashing" and body["key"] == "usage-flush" and body["state"] == "trigger"
    assert body["severity"] == "error" and body["summary"] == "loop usage-flush failed 5 times"
    assert body["source"] == "eu-west/host-1" and body["component"] == "ingress"
    assert body["details"] == {"failures": 5} and body["dedup_key"] == "crosslogic/loop_crashing/usage-flush"
    assert body["id"] == headers["x-crosslogic-alert-id"] and body["at"]
    assert headers["content-type"] == "application/json"
    assert abs(_verify(headers[SIGNATURE_HEADER.lower()], raw, SECRET) - time.time()) < 60
    with pytest.raises(AssertionError):  # a receiver with another secret refuses it
        _verify(headers[SIGNATURE_HEADER.lower()], raw, b"another-secret")


async def test_webhook_without_secret_is_unsigned_and_classifies_failures(webhook: tuple[WebhookReceiver, str]) -> None:
    receiver, url = webhook
    sink = WebhookSink(url)
    await sink.send(Alert(name="a"))
    assert SIGNATURE_HEADER.lower() not in receiver.received[0][0]
    receiver.fail_next(1, 503)
    with pytest.raises(SinkUnavailable):
        await sink.send(Alert(name="a"))
    receiver.fail_next(1, 404)
    with pytest.raises(AlertRefused):
        await sink.send(Alert(name="a"))
    await sink.aclose()
    dead = WebhookSink(url.replace("/hooks/alerts", "").rsplit(":", 1)[0] + ":9/hooks", timeout_s=1)
    with pytest.raises(SinkUnavailable):  # nothing listens on the discard port
        await dead.send(Alert(name="a"))
    await dead.aclose()


async def test_pagerduty_trigger_then_resolve_share_one_dedup_key(pagerduty: tuple[PagerDutyServer, str]) -> None:
    server, base = pagerduty
    dispatcher = AlertDispatcher([PagerDutySink(ROUTING_KEY, events_url=base)], component="ingress", source="local/h")
    dispatcher.start()
    long_summary = "x" * 5000  # PagerDuty refuses more than 1024 characters: the sink cuts it
    dispatcher.submit(Alert(name="model_unavailable", key="smol", severity="critical", summary=long_summary,
                            details={"replicas": 0}))
    dispatcher.submit(Alert(name="model_unavailable", key="smol", state="resolve"))
    await eventually(lambda: len(server.events) == 2)
    await dispatcher.close()
    trigger, resolve = server.events
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] == "crosslogic/model_unavailable/smol"
    payload = trigger["payload"]
    assert len(payload["summary"]) == 1024 and payload["severity"] == "critical"
    assert payload["source"] == "local/h" and payload["component"] == "ingress"
    assert payload["custom_details"]["replicas"] == 0
    assert server.incidents == {"crosslogic/model_unavailable/smol": "resolved"}
    assert server.answers == [202, 202] and server.refused == []


async def test_pagerduty_retries_through_500s_and_429s(pagerduty: tuple[PagerDutyServer, str]) -> None:
    server, base = pagerduty
    server.fail_next(2, 500)
    server.fail_next(1, 429)
    dispatcher = AlertDispatcher([PagerDutySink(ROUTING_KEY, events_url=base)], source="s",
                                 backoff_base_s=0.01, backoff_max_s=0.05)
    dispatcher.start()
    dispatcher.submit(Alert(name="billing_export_lag", summary="usage 2 h old"))
    await eventually(lambda: len(server.events) == 1)
    await dispatcher.close()
    assert server.answers == [500, 500, 429, 202]
    assert dispatcher.metrics.get("pagerduty_retries_total") == 3
    assert dispatcher.metrics.get("pagerduty_sent_total") == 1


async def test_pagerduty_400_is_poison_not_retried(pagerduty: tuple[PagerDutyServer, str]) -> None:
    server, base = pagerduty
    # A routing key of the wrong length: PagerDuty answers 400, and sending it again cannot help.
    dispatcher = AlertDispatcher([PagerDutySink("too-short", events_url=base)], source="s",
                                 backoff_base_s=0.01, backoff_max_s=0.05)
    dispatcher.start()
    dispatcher.submit(Alert(name="a", summary="s"))
    await eventually(lambda: dispatcher.metrics.get("pagerduty_refused_total") == 1)
    await dispatcher.close()
    assert server.answers == [400] and server.events == []
    assert "routing_key" in server.refused[0][0]


def test_config_builds_sinks_and_refuses_pagerduty_without_its_key() -> None:
    assert build_sinks(AlertsConfig()) == []
    config = AlertsConfig.model_validate({"webhook": {"url": "https://hooks.example/alerts"}, "pagerduty": {}})
    assert config.pagerduty is not None and config.pagerduty.events_url == "https://events.pagerduty.com"
    with pytest.raises(ConfigError, match=PAGERDUTY_ROUTING_KEY_ENV):
        build_sinks(config, env={})
    with pytest.raises(ConfigError, match="32"):
        build_sinks(config, env={PAGERDUTY_ROUTING_KEY_ENV: "short"})
    sinks = build_sinks(config, env={PAGERDUTY_ROUTING_KEY_ENV: ROUTING_KEY})
    assert [s.name for s in sinks] == ["webhook", "pagerduty"]


def test_dedup_key_fits_pagerduty_whatever_the_key() -> None:
    long = Alert(name="model_unavailable", key="m" * 400)
    assert len(long.dedup_key) <= 255 and long.dedup_key == Alert(name="model_unavailable", key="m" * 400).dedup_key
    assert long.dedup_key != Alert(name="model_unavailable", key="m" * 401).dedup_key
