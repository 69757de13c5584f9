"""Send one meter event with the official Stripe SDK and classify the outcome.

The sender makes exactly one HTTP attempt (the SDK's own retries are off): retry scheduling lives in
the outbox rows in PostgreSQL, so it survives restarts and is shared by every exporter.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import stripe

from billing.config import BillingConfig
from crosslogic.backoff import parse_retry_after

# Stripe answers a replayed identifier with 400 "An event already exists with identifier <id>."
DUPLICATE_MARKER = "already exists with identifier"


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"  # Stripe already holds this identifier: delivered by an earlier attempt
    RETRY = "retry"  # transient: 429, 409, 5xx, timeout, connection error, stripe-should-retry: true
    AUTH = "auth"  # our API key is refused: retried (not this row's fault) and alerted
    POISON = "poison"  # any other 4xx: retrying cannot help; dead-letter it


@dataclass(frozen=True, slots=True)
class MeterEvent:
    event_name: str
    customer_id: str
    value: int
    identifier: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class SendResult:
    outcome: Outcome
    detail: str = ""
    status: int | None = None
    # Stripe's Retry-After on a 429/503, when it sent one: the row is not retried sooner.
    retry_after_s: float | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome in (Outcome.DELIVERED, Outcome.DUPLICATE)


def classify(exc: stripe.StripeError) -> SendResult:
    status = exc.http_status
    message = exc.user_message or str(exc)
    detail = f"{type(exc).__name__} {status}: {message}"
    if isinstance(exc, stripe.APIConnectionError):
        return SendResult(Outcome.RETRY, detail, status)
    if status == 400 and DUPLICATE_MARKER in message:
        return SendResult(Outcome.DUPLICATE, detail, status)
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    retry_after_s = parse_retry_after(headers.get("retry-after"))
    should_retry = headers.get("stripe-should-retry")
    if should_retry == "true":
        return SendResult(Outcome.RETRY, detail, status, retry_after_s)
    if status in (401, 403):
        return SendResult(Outcome.AUTH, detail, status)
    if should_retry == "false":
        return SendResult(Outcome.POISON, detail, status)
    if status is None or status in (409, 429) or status >= 500:
        return SendResult(Outcome.RETRY, detail, status, retry_after_s)
    return SendResult(Outcome.POISON, detail, status)


class _HTTPXContentClient(stripe.HTTPXClient):
    """The SDK's httpx client, passing the encoded form as `content=`.

    The SDK hands httpx an already-encoded body through `data=`, which current httpx deprecates
    (a DeprecationWarning per request; an error under our test settings).
    """

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> list[Any]:
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        data = kwargs.pop("data", None)
        if data:
            kwargs["content"] = data
        return [args, kwargs]


class StripeMeterSender:
    def __init__(self, config: BillingConfig) -> None:
        if config.stripe_api_key is None:
            raise ValueError("StripeMeterSender needs stripe_api_key")
        self._http = _HTTPXContentClient(timeout=config.request_timeout_s)
        base = {"api": config.stripe_api_base} if config.stripe_api_base else None
        self._client = stripe.StripeClient(
            config.stripe_api_key.get_secret_value(),
            base_addresses=base,  # type: ignore[arg-type]
            http_client=self._http,
            max_network_retries=0,
        )

    async def send(self, event: MeterEvent) -> SendResult:
        try:
            await self._client.v1.billing.meter_events.create_async(
                params={
                    "event_name": event.event_name,
                    "identifier": event.identifier,
                    "timestamp": event.timestamp,
                    "payload": {"stripe_customer_id": event.customer_id, "value": str(event.value)},
                }
            )
        except stripe.StripeError as exc:
            return classify(exc)
        return SendResult(Outcome.DELIVERED)

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]  # stripe leaves it unannotated
