"""Where alerts go: a generic signed JSON webhook and PagerDuty's Events API v2, behind one protocol.

A sink sends one alert once; retrying is the dispatcher's job. It tells the two failures apart:
`SinkUnavailable` (timeout, connection refused, 429, 5xx: try again later) and `AlertRefused` (the
receiver understood and rejected this alert, e.g. PagerDuty's 400: sending it again cannot help).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any, Protocol

import httpx

from crosslogic.alerts.model import Alert
from crosslogic.backoff import parse_retry_after

SIGNATURE_HEADER = "X-CrossLogic-Signature"
ALERT_ID_HEADER = "X-CrossLogic-Alert-Id"
USER_AGENT = "crosslogic-alerts/1"
# PagerDuty truncates nothing for us: a longer summary is a 400.
PAGERDUTY_SUMMARY_MAX = 1024


class SinkUnavailable(Exception):
    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class AlertRefused(Exception):
    """The receiver rejected this alert for good (poison): logged, not retried."""


class AlertSink(Protocol):
    name: str

    async def send(self, alert: Alert) -> None:
        """Deliver once; raise SinkUnavailable (retry) or AlertRefused (drop)."""
        ...

    async def aclose(self) -> None: ...


def sign_body(secret: bytes, body: bytes, timestamp: int) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>." + body>`: the timestamp is signed too, so a receiver can
    refuse an old capture replayed (the same scheme Stripe's webhooks use)."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def _classify(response: httpx.Response, sink: str) -> None:
    """Raise for anything but success: 408/429/5xx are worth retrying, other 4xx are not."""
    status = response.status_code
    if 200 <= status < 300:
        return
    text = response.text[:500]
    if status in (408, 429) or status >= 500:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        raise SinkUnavailable(f"{sink} answered {status}: {text}", retry_after)
    raise AlertRefused(f"{sink} refused the alert with {status}: {text}")


async def _post(client: httpx.AsyncClient, sink: str, url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    try:
        return await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:  # timeouts, refused or reset connections
        raise SinkUnavailable(f"{sink} unreachable: {type(exc).__name__}: {exc}") from None


class WebhookSink:
    """POST the alert as JSON to one URL. The body is the `Alert` plus its `dedup_key`."""

    def __init__(self, url: str, *, secret: bytes | None = None, timeout_s: float = 5.0, name: str = "webhook") -> None:
        self.name = name
        self._url = url
        self._secret = secret
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    @staticmethod
    def body(alert: Alert) -> dict[str, Any]:
        return {**alert.model_dump(mode="json"), "dedup_key": alert.dedup_key}

    async def send(self, alert: Alert) -> None:
        body = json.dumps(self.body(alert), separators=(",", ":")).encode()
        headers = {"content-type": "application/json", "user-agent": USER_AGENT, ALERT_ID_HEADER: alert.id}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign_body(self._secret, body, int(time.time()))
        _classify(await _post(self._client, self.name, self._url, body, headers), self.name)

    async def aclose(self) -> None:
        await self._client.aclose()


class PagerDutySink:
    """PagerDuty Events API v2: trigger and resolve events sharing the alert's dedup_key; 202 = accepted."""

    def __init__(self, routing_key: str, *, events_url: str = "https://events.pagerduty.com",
                 timeout_s: float = 10.0, name: str = "pagerduty") -> None:
        self.name = name
        self._routing_key = routing_key
        self._url = events_url.rstrip("/") + "/v2/enqueue"
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    def event(self, alert: Alert) -> dict[str, Any]:
        event: dict[str, Any] = {
            "routing_key": self._routing_key,
            "event_action": alert.state,
            "dedup_key": alert.dedup_key,
        }
        if alert.state == "trigger":
            event["client"] = "CrossLogic"
            event["payload"] = {
                "summary": (alert.summary or alert.name)[:PAGERDUTY_SUMMARY_MAX],
                "source": alert.source or "crosslogic",
                "severity": alert.severity,
                "timestamp": alert.at.isoformat(),
                "component": alert.component or "crosslogic",
                "class": alert.name,
                "custom_details": {**alert.details, "alert": alert.name, "key": alert.key},
            }
        return event

    async def send(self, alert: Alert) -> None:
        body = json.dumps(self.event(alert), separators=(",", ":"), default=str).encode()
        headers = {"content-type": "application/json", "user-agent": USER_AGENT}
        response = await _post(self._client, self.name, self._url, body, headers)
        if response.status_code == 400:
            # Invalid event (PagerDuty says which field): poison, never retried.
            raise AlertRefused(f"{self.name} refused the event (400): {response.text[:500]}")
        _classify(response, self.name)

    async def aclose(self) -> None:
        await self._client.aclose()
