"""The BILLING_ENABLED toggle: off needs no Stripe at all; on without credentials fails in one line."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from billing_checks import usage

from billing.config import BillingConfig
from billing.webhook_routes import webhook_router_if_enabled
from crosslogic.errors import ConfigError
from crosslogic.metering import UsageRecorder
from crosslogic.settings import Settings


def test_disabled_needs_no_stripe_credentials() -> None:
    config = BillingConfig.from_env(Settings(billing_enabled=False), env={})
    assert config.enabled is False and config.stripe_api_key is None


def test_enabled_without_credentials_is_one_clear_line() -> None:
    with pytest.raises(ConfigError) as info:
        BillingConfig.from_env(Settings(billing_enabled=True), env={})
    message = str(info.value)
    assert "\n" not in message
    for name in ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_METER_INPUT_TOKENS",
                 "STRIPE_METER_OUTPUT_TOKENS"):
        assert name in message


def test_enabled_with_meters_only_missing_names_the_rest() -> None:
    env = {"STRIPE_METER_INPUT_TOKENS": "in", "STRIPE_METER_OUTPUT_TOKENS": "out"}
    settings = Settings(billing_enabled=True, stripe_api_key="sk_test_x", stripe_webhook_secret=None)
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET is not set"):
        BillingConfig.from_env(settings, env=env)
    settings = Settings(billing_enabled=True, stripe_api_key="sk_test_x", stripe_webhook_secret="w")
    config = BillingConfig.from_env(settings, env=env)
    assert config.meter_event("input_tokens") == "in" and config.meter_event("output_tokens") == "out"


async def test_disabled_keeps_metering_and_has_no_webhook_route(
    pool: asyncpg.Pool, admin_conn: asyncpg.Connection
) -> None:
    config = BillingConfig.from_env(Settings(billing_enabled=False), env={})
    assert webhook_router_if_enabled(pool, config) is None
    recorder = UsageRecorder(pool)
    recorder.start()
    recorder.record(usage(uuid.uuid4()))
    await recorder.close()
    assert await admin_conn.fetchval("SELECT count(*) FROM usage_ledger") == 1


def test_bad_values_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="export_from"):
        BillingConfig.from_env(Settings(), env={"BILLING_EXPORT_FROM": "last tuesday"})
    with pytest.raises(ConfigError, match="alert_unexported_age_s"):
        BillingConfig.from_env(Settings(), env={"BILLING_ALERT_UNEXPORTED_AGE_S": "-5"})
