"""The `alerts:` section of the app config, and the secrets the sinks read from the environment.

No sink configured (the default) means alerts are only logged, as before. Secrets never live in
serve_config.yaml: the webhook's signing secret and PagerDuty's routing key come from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from crosslogic.errors import ConfigError

WEBHOOK_SECRET_ENV = "CROSSLOGIC_ALERT_WEBHOOK_SECRET"
PAGERDUTY_ROUTING_KEY_ENV = "CROSSLOGIC_PAGERDUTY_ROUTING_KEY"
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com"


class WebhookSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Receives one JSON POST per alert (trigger or resolve), signed when the secret env var is set.
    url: str = Field(pattern=r"^https?://")
    timeout_s: float = Field(default=5.0, gt=0, le=120)


class PagerDutySinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Events API v2 base; events go to {events_url}/v2/enqueue (EU accounts: https://events.eu.pagerduty.com).
    events_url: str = Field(default=PAGERDUTY_EVENTS_URL, pattern=r"^https?://")
    timeout_s: float = Field(default=10.0, gt=0, le=120)


class ReadinessWatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(default=15.0, gt=0)
    # A condition must hold this long before it pages (a replica restarting is not an incident) ...
    alert_after_s: float = Field(default=60.0, ge=0)
    # ... and nothing pages this soon after the ingress started (engines load their weights).
    startup_grace_s: float = Field(default=600.0, ge=0)


class AlertsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook: WebhookSinkConfig | None = None
    pagerduty: PagerDutySinkConfig | None = None
    # The same alert (name + key) triggered again within this window sends nothing new.
    dedup_window_s: float = Field(default=300.0, ge=0)
    # Alerts waiting per sink; past it new ones are dropped (counted, logged once) rather than
    # growing memory while a sink is down.
    queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    # Delivery attempts per alert and sink, with capped exponential backoff between them.
    max_attempts: int = Field(default=8, ge=1, le=100)
    backoff_base_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    readiness: ReadinessWatchConfig = Field(default_factory=ReadinessWatchConfig)

    @property
    def has_sinks(self) -> bool:
        return self.webhook is not None or self.pagerduty is not None


def webhook_secret(env: Mapping[str, str] | None = None) -> bytes | None:
    value = (os.environ if env is None else env).get(WEBHOOK_SECRET_ENV, "")
    return value.encode() if value else None


def pagerduty_routing_key(env: Mapping[str, str] | None = None) -> str:
    """The integration's routing key; a configured PagerDuty sink without one refuses to start."""
    value = (os.environ if env is None else env).get(PAGERDUTY_ROUTING_KEY_ENV, "").strip()
    if len(value) != 32:
        raise ConfigError(
            f"alerts.pagerduty is configured but {PAGERDUTY_ROUTING_KEY_ENV} is "
            + ("not set" if not value else f"{len(value)} characters (an Events v2 routing key has 32)")
        )
    return value
