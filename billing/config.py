"""Billing configuration. `BILLING_ENABLED=false` (the default) needs nothing from Stripe."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, ValidationError

from crosslogic.errors import ConfigError
from crosslogic.settings import Settings

# Environment variables read here in addition to `crosslogic.settings.Settings`.
ENV_INPUT_METER = "STRIPE_METER_INPUT_TOKENS"
ENV_OUTPUT_METER = "STRIPE_METER_OUTPUT_TOKENS"
ENV_API_BASE = "STRIPE_API_BASE"
ENV_ALERT_AGE = "BILLING_ALERT_UNEXPORTED_AGE_S"
ENV_EXPORT_FROM = "BILLING_EXPORT_FROM"


class BillingConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    enabled: bool = False
    stripe_api_key: SecretStr | None = None
    # None -> Stripe's cloud; tests point this at the local Stripe-protocol server.
    stripe_api_base: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_tolerance_s: int = 300
    input_meter_event: str | None = Field(default=None, max_length=100)
    output_meter_event: str | None = Field(default=None, max_length=100)
    # Export loop.
    interval_s: float = Field(default=30.0, gt=0)
    aggregate_limit: int = Field(default=50_000, gt=0)
    claim_batch: int = Field(default=200, gt=0)
    send_concurrency: int = Field(default=8, gt=0)
    lease_s: float = Field(default=120.0, gt=0)
    request_timeout_s: float = Field(default=20.0, gt=0)
    retry_base_s: float = Field(default=2.0, gt=0)
    retry_max_s: float = Field(default=600.0, gt=0)
    missing_customer_retry_s: float = Field(default=300.0, gt=0)
    # Stripe refuses events older than 35 days; stop a day early so a slow retry still lands.
    max_event_age_days: int = Field(default=34, gt=0, le=35)
    alert_unexported_age_s: float = Field(default=3600.0, gt=0)
    # Usage recorded before this instant is never exported: turning billing on for a deployment
    # that metered for months must not bill that history. None = export everything in the ledger.
    export_from: AwareDatetime | None = None
    # Webhook processing.
    webhook_poll_s: float = Field(default=1.0, gt=0)
    webhook_max_attempts: int = Field(default=8, gt=0)

    def require_export(self) -> None:
        """Refuse to start an export or webhook route with incomplete configuration (one line)."""
        if not self.enabled:
            return
        missing = [
            name
            for name, value in (
                ("STRIPE_API_KEY", self.stripe_api_key),
                ("STRIPE_WEBHOOK_SECRET", self.webhook_secret),
                (ENV_INPUT_METER, self.input_meter_event),
                (ENV_OUTPUT_METER, self.output_meter_event),
            )
            if not value
        ]
        if missing:
            raise ConfigError(
                "BILLING_ENABLED=true but " + ", ".join(missing) + " is not set "
                "(set them, or BILLING_ENABLED=false to keep metering without Stripe export)"
            )

    def meter_event(self, meter: str) -> str:
        name = self.input_meter_event if meter == "input_tokens" else self.output_meter_event
        if name is None:
            raise ConfigError(f"no Stripe meter event name configured for {meter}")
        return name

    @classmethod
    def from_env(
        cls, settings: Settings | None = None, env: Mapping[str, str] | None = None
    ) -> BillingConfig:
        """Read and validate; raises ConfigError when enabled without credentials or meters."""
        env = os.environ if env is None else env
        settings = settings or Settings.from_env()
        try:
            # Text from the environment: pydantic parses the number and the timestamp (or refuses them).
            config = cls.model_validate({
                "enabled": settings.billing_enabled,
                "stripe_api_key": settings.stripe_api_key,
                "stripe_api_base": env.get(ENV_API_BASE) or None,
                "webhook_secret": settings.stripe_webhook_secret,
                "input_meter_event": env.get(ENV_INPUT_METER) or None,
                "output_meter_event": env.get(ENV_OUTPUT_METER) or None,
                "alert_unexported_age_s": env.get(ENV_ALERT_AGE) or 3600,
                "export_from": env.get(ENV_EXPORT_FROM) or None,
            })
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"billing configuration: {field}: {first['msg']}") from None
        config.require_export()
        return config
