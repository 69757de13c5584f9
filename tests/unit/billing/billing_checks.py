"""Assertions shared by the billing tests: the ledger against the Stripe test server, to the token."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg

from crosslogic.metering import UsageRecord, UsageStatus

API_KEY = "sk_test_local_" + "x" * 24
WEBHOOK_SECRET = "whsec_test_local_secret_0123456789"
INPUT_METER = "crosslogic_input_tokens"
OUTPUT_METER = "crosslogic_output_tokens"

TenantFactory = Callable[..., Awaitable[uuid.UUID]]
BreakPool = Callable[[], Awaitable[int]]

_COUNTER = itertools.count()


def usage(
    tenant_id: uuid.UUID,
    prompt: int = 10,
    completion: int = 5,
    *,
    status: UsageStatus = UsageStatus.FINISHED,
    created_at: datetime | None = None,
    request_id: str | None = None,
) -> UsageRecord:
    return UsageRecord(
        request_id=request_id or f"req_{uuid.uuid4().hex}_{next(_COUNTER)}",
        tenant_id=tenant_id,
        key_id=uuid.uuid4(),
        model="smollm2-135m",
        region="local",
        prompt_tokens=prompt,
        completion_tokens=completion,
        status=status,
        queue_ms=1.0,
        ttft_ms=5.0,
        total_ms=20.0,
        created_at=created_at or datetime.now(UTC),
    )


async def ledger_totals(
    conn: asyncpg.Connection, meters: tuple[str, str]
) -> dict[tuple[str, str, int], Decimal]:
    """{(customer, meter event, hour epoch): tokens} from the ledger, as Stripe should hold them."""
    rows = await conn.fetch(
        """
        SELECT t.stripe_customer_id AS customer,
               extract(epoch FROM date_trunc('hour', l.created_at, 'UTC'))::bigint AS hour,
               sum(l.prompt_tokens) AS input, sum(l.completion_tokens) AS output
        FROM usage_ledger l JOIN tenants t ON t.id = l.tenant_id
        GROUP BY 1, 2
        """
    )
    totals: dict[tuple[str, str, int], Decimal] = {}
    for r in rows:
        for meter, value in ((meters[0], r["input"]), (meters[1], r["output"])):
            if value:
                totals[(r["customer"], meter, r["hour"])] = Decimal(value)
    return totals
