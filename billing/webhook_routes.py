"""`POST /webhooks/stripe`: verify, store once, acknowledge. Processing happens elsewhere, later.

Mounted only when billing is enabled (the route then does not exist: 404). The signature is checked
on the raw body with the SDK's helper; the event id is the primary key of `stripe_webhook_events`, so
a redelivered event is acknowledged and never processed twice. The handler does nothing slow: Stripe
needs a 2xx quickly or it retries.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import stripe
from fastapi import APIRouter, Request
from pydantic import BaseModel

from billing.config import BillingConfig
from crosslogic.errors import InvalidRequestError, PayloadTooLargeError

MAX_BODY_BYTES = 1 << 20

_STORE = """
INSERT INTO stripe_webhook_events (event_id, type, created, payload)
VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (event_id) DO NOTHING
"""


class WebhookAck(BaseModel):
    received: bool = True
    duplicate: bool


def verify_event(body: bytes, signature: str | None, config: BillingConfig) -> dict[str, Any]:
    if config.webhook_secret is None:
        raise InvalidRequestError("webhooks are not configured")
    if not signature:
        raise InvalidRequestError("missing Stripe-Signature header", code="invalid_signature")
    try:
        stripe.WebhookSignature.verify_header(
            body.decode("utf-8"),
            signature,
            config.webhook_secret.get_secret_value(),
            config.webhook_tolerance_s,
        )
        event = json.loads(body)
    except stripe.SignatureVerificationError as exc:
        raise InvalidRequestError(
            f"invalid Stripe-Signature: {exc.user_message}", code="invalid_signature"
        ) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError("webhook body is not JSON") from exc
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise InvalidRequestError("webhook body is not a Stripe event (no id)")
    if not isinstance(event.get("type"), str) or not isinstance(event.get("created"), int):
        raise InvalidRequestError("webhook body is not a Stripe event (type/created)")
    return event


def build_stripe_webhook_router(
    pool: asyncpg.Pool, config: BillingConfig, on_stored: Callable[[], None] | None = None
) -> APIRouter:
    """`on_stored` may wake a local processor; without it the processor finds the row by polling."""
    router = APIRouter(tags=["webhooks"])

    @router.post("/webhooks/stripe", summary="Stripe webhook endpoint")
    async def stripe_webhook(request: Request) -> WebhookAck:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise PayloadTooLargeError("webhook body too large")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLargeError("webhook body too large")
        event = verify_event(body, request.headers.get("stripe-signature"), config)
        created = datetime.fromtimestamp(event["created"], UTC)
        async with pool.acquire() as conn:
            status = await conn.execute(
                _STORE, event["id"], event["type"], created, body.decode("utf-8")
            )
        duplicate = status.endswith(" 0")
        if not duplicate and on_stored is not None:
            on_stored()
        return WebhookAck(duplicate=duplicate)

    return router


def webhook_router_if_enabled(
    pool: asyncpg.Pool, config: BillingConfig, on_stored: Callable[[], None] | None = None
) -> APIRouter | None:
    """The webhook router when billing is enabled, else None (the route is absent: 404)."""
    if not config.enabled:
        return None
    config.require_export()
    return build_stripe_webhook_router(pool, config, on_stored)
