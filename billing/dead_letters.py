"""Dead letters: billing work a retry cannot fix, listed for an operator and replayed on request."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from crosslogic.errors import ConflictError, NotFoundError
from crosslogic.storage.executor import Connection, Executor


class DeadLetter(BaseModel):
    id: int
    kind: Literal["meter_event", "webhook"]
    ref: str
    reason: str
    detail: dict[str, Any] | None
    created_at: datetime
    replayed_at: datetime | None
    replayed_by: str | None


def _letter(row: Any) -> DeadLetter:
    data = dict(row)
    data["detail"] = json.loads(data["detail"]) if data["detail"] else None
    return DeadLetter.model_validate(data)


async def list_dead_letters(
    db: Executor, *, include_replayed: bool = False, limit: int = 100
) -> list[DeadLetter]:
    rows = await db.fetch(
        "SELECT id, kind, ref, reason, detail::text AS detail, created_at, replayed_at, replayed_by "
        "FROM billing_dead_letters WHERE $1 OR replayed_at IS NULL ORDER BY id DESC LIMIT $2",
        include_replayed,
        limit,
    )
    return [_letter(r) for r in rows]


_REQUEUE = {
    # Same identifier as before: if Stripe did record it after all, the replay is deduplicated.
    "meter_event": "UPDATE billing_outbox SET status = 'pending', attempts = 0, last_error = NULL, "
    "next_attempt_at = now(), lease_until = '-infinity', lease_owner = NULL "
    "WHERE id = $1 AND status = 'dead'",
    "webhook": "UPDATE stripe_webhook_events SET status = 'pending', attempts = 0, "
    "last_error = NULL, next_attempt_at = now(), lease_until = '-infinity' "
    "WHERE event_id = $1 AND status = 'dead'",
}


async def replay_dead_letter(conn: Connection, letter_id: int, actor: str) -> DeadLetter:
    """Put the work back in its queue; run inside the caller's transaction (with its audit row)."""
    row = await conn.fetchrow(
        "SELECT id, kind, ref, reason, detail::text AS detail, created_at, replayed_at, replayed_by "
        "FROM billing_dead_letters WHERE id = $1 FOR UPDATE",
        letter_id,
    )
    if row is None:
        raise NotFoundError(f"no dead letter {letter_id}", param="id")
    if row["replayed_at"] is not None:
        raise ConflictError(f"dead letter {letter_id} was already replayed", param="id")
    ref: int | str = int(row["ref"]) if row["kind"] == "meter_event" else row["ref"]
    status = await conn.execute(_REQUEUE[row["kind"]], ref)
    if status.endswith(" 0"):
        raise ConflictError(f"the {row['kind']} of dead letter {letter_id} is no longer dead")
    updated = await conn.fetchrow(
        "UPDATE billing_dead_letters SET replayed_at = now(), replayed_by = $2 WHERE id = $1 "
        "RETURNING id, kind, ref, reason, detail::text AS detail, created_at, replayed_at, "
        "replayed_by",
        letter_id,
        actor,
    )
    return _letter(updated)
