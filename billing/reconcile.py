"""Reconciliation: ledger totals against what was delivered to Stripe, per customer/meter/hour.

A difference is not necessarily an error: recent usage is still in flight. `pending` and `dead` say
where the missing tokens are; anything with `unexplained != 0` is a real discrepancy.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel

from crosslogic.storage.executor import Executor

_RECONCILE = """
WITH ledger AS (
    SELECT tenant_id, date_trunc('hour', created_at, 'UTC') AS hour,
           sum(prompt_tokens)::bigint AS input_tokens, sum(completion_tokens)::bigint AS output_tokens
    FROM usage_ledger
    WHERE ($1::timestamptz IS NULL OR created_at >= $1) AND ($2::timestamptz IS NULL OR created_at < $2)
    GROUP BY 1, 2
), ledger_by_meter AS (
    SELECT tenant_id, hour, m.meter, m.value
    FROM ledger CROSS JOIN LATERAL (VALUES ('input_tokens', input_tokens),
                                           ('output_tokens', output_tokens)) AS m (meter, value)
), outbox AS (
    SELECT tenant_id, hour, meter,
           coalesce(sum(value) FILTER (WHERE status = 'delivered'), 0)::bigint AS delivered,
           coalesce(sum(value) FILTER (WHERE status = 'pending'), 0)::bigint AS pending,
           coalesce(sum(value) FILTER (WHERE status = 'dead'), 0)::bigint AS dead
    FROM billing_outbox
    WHERE ($1::timestamptz IS NULL OR hour >= date_trunc('hour', $1, 'UTC'))
      AND ($2::timestamptz IS NULL OR hour < $2)
    GROUP BY 1, 2, 3
)
SELECT coalesce(l.tenant_id, o.tenant_id) AS tenant_id, t.stripe_customer_id AS customer_id,
       coalesce(l.meter, o.meter) AS meter, coalesce(l.hour, o.hour) AS hour,
       coalesce(l.value, 0) AS ledger, coalesce(o.delivered, 0) AS delivered,
       coalesce(o.pending, 0) AS pending, coalesce(o.dead, 0) AS dead
FROM ledger_by_meter l
FULL JOIN outbox o ON o.tenant_id = l.tenant_id AND o.hour = l.hour AND o.meter = l.meter
LEFT JOIN tenants t ON t.id = coalesce(l.tenant_id, o.tenant_id)
ORDER BY hour, tenant_id, meter
"""


class ReconcileRow(BaseModel):
    tenant_id: uuid.UUID
    customer_id: str | None
    meter: str
    hour: datetime
    ledger: int
    delivered: int
    pending: int
    dead: int
    # Ledger tokens not yet aggregated into the outbox are part of this until the next export cycle.
    unexplained: int


async def reconcile(
    db: Executor,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    only_differences: bool = True,
) -> list[ReconcileRow]:
    out: list[ReconcileRow] = []
    for r in await db.fetch(_RECONCILE, start, end):
        ledger, delivered, pending, dead = r["ledger"], r["delivered"], r["pending"], r["dead"]
        if only_differences and ledger == delivered:
            continue
        out.append(
            ReconcileRow(
                tenant_id=r["tenant_id"], customer_id=r["customer_id"], meter=r["meter"],
                hour=r["hour"], ledger=ledger, delivered=delivered, pending=pending, dead=dead,
                unexplained=ledger - delivered - pending - dead,
            )
        )
    return out
