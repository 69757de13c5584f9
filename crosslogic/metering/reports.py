"""Usage reports from the ledger: request counts, token sums and cost, grouped one way.

Cost uses the model registry's current prices per million tokens (`models.price_*_per_mtok`); a
ledger row whose model is no longer registered costs 0 and is still counted.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, Field, model_validator

from crosslogic.errors import InvalidRequestError
from crosslogic.storage.executor import Executor


class GroupBy(StrEnum):
    TENANT = "tenant"
    KEY = "key"
    MODEL = "model"
    HOUR = "hour"
    DAY = "day"


# Whitelisted SQL for each grouping: the value is never built from user input.
_GROUP_SQL: dict[GroupBy, str] = {
    GroupBy.TENANT: "l.tenant_id::text",
    GroupBy.KEY: "coalesce(l.key_id::text, '')",
    GroupBy.MODEL: "l.model",
    GroupBy.HOUR: "to_char(date_trunc('hour', l.created_at, 'UTC') AT TIME ZONE 'UTC', "
    "'YYYY-MM-DD\"T\"HH24:00:00\"Z\"')",
    GroupBy.DAY: "to_char(date_trunc('day', l.created_at, 'UTC') AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}

MAX_ROWS = 10_000


class UsageQuery(BaseModel):
    tenant_id: uuid.UUID | None = None
    key_id: uuid.UUID | None = None
    model: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    group_by: GroupBy = GroupBy.TENANT

    @model_validator(mode="after")
    def _check_range(self) -> UsageQuery:
        if self.model is not None and ("\x00" in self.model or len(self.model) > 256):
            # PostgreSQL text cannot hold NUL (asyncpg raised: a 500 for a typo'd query string).
            raise InvalidRequestError("'model' must be a model name (at most 256 characters, no NUL)", param="model")
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise InvalidRequestError(
                    f"'{name}' needs a timezone (e.g. 2026-01-01T00:00:00Z)", param=name
                )
            if value is not None:
                try:  # 0001-01-01T00:00+14:00 is before year 1 in UTC: PostgreSQL refused it (a 500)
                    setattr(self, name, value.astimezone(UTC))
                except OverflowError:
                    raise InvalidRequestError(f"'{name}' is out of range", param=name) from None
        if self.start and self.end and self.end <= self.start:
            raise InvalidRequestError("'end' must be after 'start'", param="end")
        return self


class UsageRow(BaseModel):
    group: str = Field(description="tenant id, key id, model, hour (ISO) or day (YYYY-MM-DD)")
    requests: int
    finished: int
    failed: int
    cancelled: int
    prompt_tokens: int
    completion_tokens: int
    # Decimal serialises as a string: exact money, no float rounding.
    cost: Decimal


async def usage_report(db: Executor, query: UsageQuery) -> list[UsageRow]:
    conditions: list[str] = []
    args: list[object] = []
    for column, value in (
        ("l.tenant_id", query.tenant_id),
        ("l.key_id", query.key_id),
        ("l.model", query.model),
    ):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    if query.start is not None:
        args.append(query.start)
        conditions.append(f"l.created_at >= ${len(args)}")
    if query.end is not None:
        args.append(query.end)
        conditions.append(f"l.created_at < ${len(args)}")
    where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
    sql = f"""
        SELECT {_GROUP_SQL[query.group_by]} AS grp,
               count(*) AS requests,
               count(*) FILTER (WHERE l.status = 'finished') AS finished,
               count(*) FILTER (WHERE l.status = 'failed') AS failed,
               count(*) FILTER (WHERE l.status = 'cancelled') AS cancelled,
               coalesce(sum(l.prompt_tokens), 0)::bigint AS prompt_tokens,
               coalesce(sum(l.completion_tokens), 0)::bigint AS completion_tokens,
               coalesce(sum(l.prompt_tokens * m.price_input_per_mtok
                            + l.completion_tokens * m.price_output_per_mtok), 0) / 1000000 AS cost
        FROM usage_ledger l
        LEFT JOIN models m ON m.served_name = l.model
        {where}
        GROUP BY 1 ORDER BY 1
        LIMIT {MAX_ROWS}
    """
    rows = await db.fetch(sql, *args)
    return [
        UsageRow(
            group=r["grp"],
            requests=r["requests"],
            finished=r["finished"],
            failed=r["failed"],
            cancelled=r["cancelled"],
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            cost=Decimal(r["cost"]).quantize(Decimal("0.000001")),
        )
        for r in rows
    ]
