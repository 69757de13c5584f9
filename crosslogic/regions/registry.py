"""The region registry in PostgreSQL (migration 0015): which regions may heartbeat, their secret
generation, an operator's drain, and what their newest accepted heartbeat said. Plus the nonce store
every ingress replica shares, so a heartbeat replayed to another replica is refused too.

Every function takes a connection (to join a caller's transaction, e.g. an audited admin change) or
the pool. No secret is stored: a region's secret is derive_region_secret(master, name, generation).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from crosslogic.errors import ConflictError, NotFoundError
from crosslogic.regions.protocol import VersionSet
from crosslogic.regions.signing import DEFAULT_SKEW_S, REGION_NAME_PATTERN
from crosslogic.storage.db_errors import translate_db_errors
from crosslogic.storage.executor import Executor

log = logging.getLogger("crosslogic.regions.registry")

_COLUMNS = (
    "name, secret_generation, operator_drained, disabled_at, created_at, last_heartbeat_at, "
    "last_gateway_url, last_versions::text AS last_versions, last_agent_id"
)


class RegionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=REGION_NAME_PATTERN, description="lower-case letters, digits and '-', e.g. eu-west")


class RegionRecord(BaseModel):
    name: str
    secret_generation: int
    operator_drained: bool
    disabled_at: datetime | None = None
    created_at: datetime
    last_heartbeat_at: datetime | None = None
    last_gateway_url: str | None = None
    last_versions: VersionSet | None = None
    last_agent_id: str | None = None

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


def _record(row: asyncpg.Record) -> RegionRecord:
    data: dict[str, Any] = dict(row)
    # Read as text so the result does not depend on a jsonb codec being installed on the pool.
    data["last_versions"] = None if data["last_versions"] is None else json.loads(data["last_versions"])
    return RegionRecord.model_validate(data)


def _not_found(name: str) -> NotFoundError:
    return NotFoundError(f"region {name!r} not found", param="name")


async def create_region(db: Executor, name: str) -> RegionRecord:
    """A new region, or a disabled one enabled again with the next secret generation (its old
    secret stays dead). An enabled region of that name is a 409."""
    with translate_db_errors(param="name"):
        row = await db.fetchrow(
            f"""
            INSERT INTO regions AS r (name) VALUES ($1)
            ON CONFLICT (name) DO UPDATE
                SET disabled_at = NULL, operator_drained = false, secret_generation = r.secret_generation + 1
                WHERE r.disabled_at IS NOT NULL
            RETURNING {_COLUMNS}
            """,
            name,
        )
    if row is None:
        raise ConflictError(
            f"region {name!r} already exists; rotate its secret with POST /admin/v1/regions/{name}/rotate-secret",
            param="name",
        )
    return _record(row)


async def find_region(db: Executor, name: str) -> RegionRecord | None:
    with translate_db_errors():
        row = await db.fetchrow(f"SELECT {_COLUMNS} FROM regions WHERE name = $1", name)
    return None if row is None else _record(row)


async def get_region(db: Executor, name: str, *, for_update: bool = False) -> RegionRecord:
    lock = " FOR UPDATE" if for_update else ""
    with translate_db_errors():
        row = await db.fetchrow(f"SELECT {_COLUMNS} FROM regions WHERE name = $1{lock}", name)
    if row is None:
        raise _not_found(name)
    return _record(row)


async def list_regions(db: Executor, *, include_disabled: bool = True) -> list[RegionRecord]:
    # A handful of regions per control plane: no pagination.
    where = "" if include_disabled else " WHERE disabled_at IS NULL"
    with translate_db_errors():
        rows = await db.fetch(f"SELECT {_COLUMNS} FROM regions{where} ORDER BY name")
    return [_record(row) for row in rows]


async def _update_enabled(db: Executor, name: str, assignments: str, *args: Any) -> RegionRecord:
    with translate_db_errors():
        row = await db.fetchrow(
            f"UPDATE regions SET {assignments} WHERE name = $1 AND disabled_at IS NULL RETURNING {_COLUMNS}",
            name,
            *args,
        )
    if row is None:
        region = await get_region(db, name)  # 404 when missing
        raise ConflictError(
            f"region {region.name!r} is disabled; create it again with POST /admin/v1/regions", param="name"
        )
    return _record(row)


async def set_drained(db: Executor, name: str, drained: bool) -> RegionRecord:
    return await _update_enabled(db, name, "operator_drained = $2", drained)


async def rotate_generation(db: Executor, name: str) -> RegionRecord:
    return await _update_enabled(db, name, "secret_generation = secret_generation + 1")


async def disable_region(db: Executor, name: str) -> RegionRecord:
    """Idempotent: a disabled region keeps its first disabled_at."""
    with translate_db_errors():
        row = await db.fetchrow(
            f"UPDATE regions SET disabled_at = COALESCE(disabled_at, now()) WHERE name = $1 RETURNING {_COLUMNS}",
            name,
        )
    if row is None:
        raise _not_found(name)
    return _record(row)


async def record_heartbeat(
    db: Executor, name: str, *, gateway_url: str, versions: VersionSet, agent_id: str
) -> None:
    with translate_db_errors():
        await db.execute(
            "UPDATE regions SET last_heartbeat_at = now(), last_gateway_url = $2, "
            "last_versions = $3::text::jsonb, last_agent_id = $4 WHERE name = $1",
            name,
            gateway_url,
            versions.model_dump_json(),
            agent_id,
        )


class PgNonceStore:
    """signing.NonceStore in PostgreSQL: one row per (region, nonce), shared by every ingress
    replica. Rows older than twice the skew window are pruned now and then (a request that old is
    refused by its timestamp before it may claim a nonce)."""

    def __init__(self, db: Executor, skew_s: float = DEFAULT_SKEW_S) -> None:
        self._db = db
        self._keep_s = 2 * skew_s
        self._pruned_at = time.monotonic()

    async def claim(self, region: str, nonce: str, timestamp: int) -> bool:
        with translate_db_errors():
            claimed = await self._db.fetchval(
                "INSERT INTO region_nonces (region, nonce) VALUES ($1, $2) "
                "ON CONFLICT (region, nonce) DO NOTHING RETURNING true",
                region,
                nonce,
            )
        if time.monotonic() - self._pruned_at >= self._keep_s / 2:
            await self.prune()
        return bool(claimed)

    async def prune(self) -> int:
        self._pruned_at = time.monotonic()
        try:
            status = await self._db.execute(
                "DELETE FROM region_nonces WHERE seen_at < now() - make_interval(secs => $1)", self._keep_s
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            # Pruning is housekeeping: a failure must not refuse the heartbeat that triggered it.
            log.warning("pruning region nonces failed: %r", exc)
            return 0
        return int(status.split()[-1])
