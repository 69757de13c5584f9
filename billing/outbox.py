"""The billing outbox in PostgreSQL: aggregate the ledger into meter events, claim, settle.

All export state lives here, none in memory:
- `aggregate_ledger` marks not-yet-aggregated ledger rows with a new batch id and inserts one outbox
  row per (tenant, meter, UTC hour) of that batch, in one statement. Usage arriving late for an hour
  that was already exported simply lands in a later batch: a separate event (a delta) with its own
  identifier, so nothing already sent is ever changed or re-sent with a different value.
- `claim` takes due rows with `FOR UPDATE SKIP LOCKED` and stamps a lease; another exporter skips
  leased rows until the lease expires (crash recovery). Every settle is conditional on still holding
  the lease, and a row re-sent after a lost lease reuses its identifier, so Stripe deduplicates it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

_AGGREGATE = """
WITH picked AS (
    SELECT request_id FROM usage_ledger
    WHERE outbox_batch IS NULL AND ($3::timestamptz IS NULL OR created_at >= $3)
    ORDER BY created_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), marked AS (
    UPDATE usage_ledger l SET outbox_batch = $2
    FROM picked WHERE l.request_id = picked.request_id
    RETURNING l.tenant_id, l.created_at, l.prompt_tokens, l.completion_tokens, l.price_multiplier
), per_hour AS (
    SELECT tenant_id, date_trunc('hour', created_at, 'UTC') AS hour, min(created_at) AS oldest,
           -- Batch lines count at their price multiplier (1 for interactive rows: unchanged sums).
           round(sum(prompt_tokens * price_multiplier))::bigint AS input_tokens,
           round(sum(completion_tokens * price_multiplier))::bigint AS output_tokens
    FROM marked GROUP BY 1, 2
), inserted AS (
    INSERT INTO billing_outbox (batch_id, tenant_id, meter, hour, value, identifier, oldest_usage_at)
    SELECT $2, p.tenant_id, m.meter, p.hour, m.value,
           'cl_' || replace(p.tenant_id::text, '-', '') || '_' || m.short || '_'
               || to_char(p.hour AT TIME ZONE 'UTC', 'YYYYMMDDHH24') || '_' || $2::text,
           p.oldest
    FROM per_hour p
    CROSS JOIN LATERAL (VALUES ('input_tokens', 'in', p.input_tokens),
                               ('output_tokens', 'out', p.output_tokens)) AS m (meter, short, value)
    WHERE m.value > 0
    RETURNING 1
)
SELECT (SELECT count(*) FROM marked) AS ledger_rows, (SELECT count(*) FROM inserted) AS events
"""

_CLAIM = """
WITH due AS (
    SELECT id FROM billing_outbox
    WHERE status = 'pending' AND next_attempt_at <= now() AND lease_until < now()
    ORDER BY next_attempt_at, id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE billing_outbox o
SET lease_owner = $2, lease_until = now() + make_interval(secs => $3), attempts = o.attempts + 1
FROM due WHERE o.id = due.id
RETURNING o.id, o.tenant_id, o.meter, o.hour, o.value, o.identifier, o.attempts,
          (SELECT t.stripe_customer_id FROM tenants t WHERE t.id = o.tenant_id) AS customer_id
"""

_DELIVERED = """
UPDATE billing_outbox
SET status = 'delivered', delivered_at = now(), lease_owner = NULL, last_error = NULL
WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND status = 'pending'
"""

_RESCHEDULE = """
UPDATE billing_outbox o
SET next_attempt_at = now() + make_interval(secs => r.delay), last_error = r.error,
    lease_owner = NULL, lease_until = '-infinity'
FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS r (id, delay, error)
WHERE o.id = r.id AND o.lease_owner = $4 AND o.status = 'pending'
"""

_KILL = """
UPDATE billing_outbox SET status = 'dead', last_error = $2, lease_owner = NULL
WHERE id = $1 AND lease_owner = $3 AND status = 'pending'
RETURNING id, tenant_id, meter, hour, value, identifier, attempts
"""

# Dead rows count as unexported on purpose: that usage is not billed until an operator replays it.
_OLDEST_UNEXPORTED = """
SELECT least((SELECT min(created_at) FROM usage_ledger
              WHERE outbox_batch IS NULL AND ($1::timestamptz IS NULL OR created_at >= $1)),
             (SELECT min(oldest_usage_at) FROM billing_outbox WHERE status <> 'delivered'))
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    tenant_id: uuid.UUID
    meter: str
    hour: datetime
    value: int
    identifier: str
    attempts: int
    customer_id: str | None


@dataclass(frozen=True, slots=True)
class AggregateResult:
    batch_id: int
    ledger_rows: int
    events: int


async def aggregate_ledger(
    pool: asyncpg.Pool, limit: int, export_from: datetime | None = None
) -> AggregateResult:
    """`export_from`: ledger rows older than this are never exported (usage from before billing)."""
    async with pool.acquire() as conn, conn.transaction():
        batch_id = await conn.fetchval("SELECT nextval('billing_batch_seq')")
        row = await conn.fetchrow(_AGGREGATE, limit, batch_id, export_from)
    assert row is not None  # an aggregate without GROUP BY always returns its one row
    return AggregateResult(batch_id, row["ledger_rows"], row["events"])


async def claim(pool: asyncpg.Pool, owner: str, limit: int, lease_s: float) -> list[OutboxRow]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(_CLAIM, limit, owner, lease_s)
    return [OutboxRow(**dict(r)) for r in rows]


async def mark_delivered(pool: asyncpg.Pool, owner: str, ids: list[int]) -> None:
    if ids:
        async with pool.acquire() as conn:
            await conn.execute(_DELIVERED, ids, owner)


async def reschedule(
    pool: asyncpg.Pool, owner: str, retries: list[tuple[int, float, str]]
) -> None:
    if retries:
        ids, delays, errors = (list(col) for col in zip(*retries, strict=True))
        async with pool.acquire() as conn:
            await conn.execute(_RESCHEDULE, ids, delays, errors, owner)


async def dead_letter(pool: asyncpg.Pool, owner: str, row_id: int, reason: str) -> bool:
    """Move one row to the dead letters (row and letter in one transaction); False if lease lost."""
    async with pool.acquire() as conn, conn.transaction():
        dead = await conn.fetchrow(_KILL, row_id, reason, owner)
        if dead is None:
            return False
        detail = {k: str(v) for k, v in dict(dead).items()}
        await conn.execute(
            "INSERT INTO billing_dead_letters (kind, ref, reason, detail) "
            "VALUES ('meter_event', $1, $2, $3::jsonb)",
            str(row_id),
            reason,
            json.dumps(detail),
        )
    return True


async def oldest_unexported(
    pool: asyncpg.Pool, export_from: datetime | None = None
) -> datetime | None:
    async with pool.acquire() as conn:
        value: datetime | None = await conn.fetchval(_OLDEST_UNEXPORTED, export_from)
    return value
