"""StripeTestServer: `POST /v1/billing/meter_events` as Stripe implements it, plus fault injection.

Strict where Stripe is strict: API key (Bearer or Basic), form-encoded parameters (unknown or missing
ones refused with Stripe's error shape), identifier <= 100 chars and unique ("An event already exists
with identifier ..." 400, `stripe-should-retry: false`), timestamp within the past 35 days or 5
minutes ahead, known customers and meters. Keeps totals per (customer, event name, UTC hour).

Faults are configured at runtime on `server.faults`: 429s, 500s, slow answers that outlast the
client's timeout (before or after the event was stored: the second is the case that would double-bill
a naive client) and connections dropped before or after storing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

WINDOW_PAST_S = 35 * 24 * 3600
WINDOW_FUTURE_S = 5 * 60
_ALLOWED = {"event_name", "identifier", "timestamp", "payload[stripe_customer_id]", "payload[value]"}


@dataclass
class Faults:
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout_before: float = 0.0  # slow, and the event is NOT stored
    rate_timeout_after: float = 0.0  # slow, but the event IS stored
    rate_drop_before: float = 0.0
    rate_drop_after: float = 0.0
    outage: bool = False  # every call answers 500
    slow_s: float = 2.0
    seed: int = 1234
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def draw(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate


def stripe_error(
    status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
    param: str | None = None, should_retry: bool | None = None,
) -> web.Response:
    error: dict[str, Any] = {"message": message, "type": type_}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    headers = {"request-id": "req_" + secrets.token_hex(7)}
    if should_retry is not None:
        headers["stripe-should-retry"] = "true" if should_retry else "false"
    return web.json_response({"error": error}, status=status, headers=headers)


def sign_webhook(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """A `Stripe-Signature` header value, computed as Stripe does: t=<ts>,v1=HMAC-SHA256(secret)."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


class StripeTestServer:
    def __init__(
        self, api_key: str, *, meters: set[str], customers: set[str] | None = None
    ) -> None:
        self.api_key = api_key
        self.meters = set(meters)
        self.customers = set(customers or ())
        self.faults = Faults()
        self.events: dict[str, dict[str, Any]] = {}
        self.totals: defaultdict[tuple[str, str, int], Decimal] = defaultdict(Decimal)
        self.calls: defaultdict[str, int] = defaultdict(int)
        self.request_started = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/billing/meter_events", self._meter_event)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def hourly_totals(self) -> dict[tuple[str, str, int], Decimal]:
        return {k: v for k, v in self.totals.items() if v}

    # --- the endpoint ---------------------------------------------------------------------------
    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return hmac.compare_digest(header[7:], self.api_key)
        if header.startswith("Basic "):
            user = base64.b64decode(header[6:]).decode(errors="replace").split(":", 1)[0]
            return hmac.compare_digest(user, self.api_key)
        return False

    async def _meter_event(self, request: web.Request) -> web.StreamResponse:
        self.calls["total"] += 1
        self.request_started.set()
        if not self._authorised(request):
            self.calls["401"] += 1
            return stripe_error(401, "Invalid API Key provided: " + _mask(request))
        f = self.faults
        if f.outage or f.draw(f.rate_500):
            self.calls["500"] += 1
            return stripe_error(500, "An unknown error occurred", type_="api_error")
        if f.draw(f.rate_429):
            self.calls["429"] += 1
            return stripe_error(429, "Request rate limit exceeded.", code="rate_limit")
        if f.draw(f.rate_drop_before):
            self.calls["drop_before"] += 1
            return await _drop(request)
        if f.draw(f.rate_timeout_before):
            self.calls["timeout_before"] += 1
            await asyncio.sleep(f.slow_s)
            return stripe_error(500, "timed out", type_="api_error")
        if request.content_type != "application/x-www-form-urlencoded":
            return stripe_error(400, "Invalid request: expected form-encoded parameters.")
        form = await request.post()
        problem = self._validate(form)
        if problem is not None:
            self.calls["400"] += 1
            return problem
        identifier = str(form["identifier"])
        if identifier in self.events:
            self.calls["duplicate"] += 1
            return stripe_error(
                400, f"An event already exists with identifier {identifier}.", should_retry=False
            )
        event = self._store(form, identifier)
        if f.draw(f.rate_timeout_after):
            self.calls["timeout_after"] += 1
            await asyncio.sleep(f.slow_s)
        elif f.draw(f.rate_drop_after):
            self.calls["drop_after"] += 1
            return await _drop(request)
        self.calls["200"] += 1
        return web.json_response(event)

    def _validate(self, form: Any) -> web.Response | None:
        for key in form:
            if key not in _ALLOWED:
                return stripe_error(400, f"Received unknown parameter: {key}", param=key,
                                    code="parameter_unknown")
        for key in ("event_name", "payload[stripe_customer_id]", "payload[value]", "identifier",
                    "timestamp"):
            # identifier and timestamp are optional at Stripe; we insist because exactly-once needs them.
            if not form.get(key):
                return stripe_error(400, f"Missing required param: {key}.", param=key,
                                    code="parameter_missing")
        if len(str(form["identifier"])) > 100:
            return stripe_error(400, "identifier must be at most 100 characters.",
                                param="identifier", code="string_length_exceeds_maximum")
        try:
            ts = int(str(form["timestamp"]))
            value = Decimal(str(form["payload[value]"]))
        except (ValueError, InvalidOperation):
            return stripe_error(400, "Invalid integer or value.", param="timestamp")
        now = time.time()
        if ts < now - WINDOW_PAST_S or ts > now + WINDOW_FUTURE_S:
            return stripe_error(
                400, "Timestamp must be within the past 35 calendar days or up to 5 minutes in "
                "the future.", param="timestamp", code="timestamp_outside_window")
        if not value.is_finite():
            return stripe_error(400, "payload[value] must be a number.", param="payload[value]")
        if str(form["event_name"]) not in self.meters:
            return stripe_error(400, f"No active meter found for event_name "
                                f"'{form['event_name']}'.", param="event_name")
        customer = str(form["payload[stripe_customer_id]"])
        if customer not in self.customers:
            return stripe_error(404, f"No such customer: '{customer}'",
                                code="resource_missing", param="payload[stripe_customer_id]")
        return None

    def _store(self, form: Any, identifier: str) -> dict[str, Any]:
        ts = int(str(form["timestamp"]))
        customer = str(form["payload[stripe_customer_id]"])
        name = str(form["event_name"])
        value = str(form["payload[value]"])
        event = {
            "object": "billing.meter_event", "created": int(time.time()), "event_name": name,
            "identifier": identifier, "livemode": False, "timestamp": ts,
            "payload": {"stripe_customer_id": customer, "value": value},
        }
        self.events[identifier] = event
        self.totals[(customer, name, ts - ts % 3600)] += Decimal(value)
        return event


async def _drop(request: web.Request) -> web.StreamResponse:
    # Close the socket without an HTTP answer: the client sees a connection error.
    if request.transport is not None:
        request.transport.abort()
    await asyncio.sleep(0)
    raise ConnectionResetError("dropped by fault injection")


def _mask(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return "sk_****" + header[-4:] if header else "(none)"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
