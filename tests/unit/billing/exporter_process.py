"""Run a BillingService in its own process (for the SIGKILL test): argv = database url, stripe url."""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from billing.config import BillingConfig
from billing.service import BillingService


async def main(database_url: str, stripe_url: str, api_key: str, secret: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    config = BillingConfig(
        enabled=True, stripe_api_key=api_key, stripe_api_base=stripe_url, webhook_secret=secret,
        input_meter_event="crosslogic_input_tokens", output_meter_event="crosslogic_output_tokens",
        interval_s=0.05, lease_s=1.0, request_timeout_s=5.0, retry_base_s=0.02, retry_max_s=0.2,
    )
    service = BillingService(pool, config)
    service.start()
    print("started", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
